"""Sequence parallelism for the DiT: the token sequence split across the ranks of one CFG branch.

The DiT pads its tokens to a multiple of the sequence degree, keeps this rank's chunk through the
blocks (rotary tables sliced to the chunk's global positions, per-token modulation sliced
likewise) and gathers the chunks before the unpatchify. Self-attention is the only op that needs
the whole sequence: :class:`SequenceParallelAttention` wraps the backend's attention with Ulysses
(all-to-all: sequence-split <-> head-split) and/or ring (K/V blocks passed around, partial results
merged through the log-sum-exp). Padded keys are masked (``kv_lens``), so the result equals the
unsplit run. Cross-attention and everything else stay local.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from .mesh import CommClock, Mesh


class SequencePlan:
    """How one DiT forward is split: chunking, padding and gathering along the token dim."""

    def __init__(self, mesh: Mesh, comm: Optional[CommClock] = None) -> None:
        self.mesh = mesh
        self.degree = mesh.sp_degree
        self.rank = mesh.sp_rank
        self.comm = comm or CommClock()

    def padded_len(self, n: int) -> int:
        return int(math.ceil(n / self.degree) * self.degree)

    def pad(self, x: torch.Tensor, total: int, dim: int = 1) -> torch.Tensor:
        """Pad ``dim`` to ``total`` by repeating the last entry (padded tokens are masked out of
        attention and cut after the gather, so their values only need to be finite)."""
        n = x.shape[dim]
        if n == total:
            return x
        edge = x.narrow(dim, n - 1, 1)
        reps = [1] * x.dim()
        reps[dim] = total - n
        return torch.cat([x, edge.repeat(*reps)], dim=dim)

    def local(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        chunk = x.shape[dim] // self.degree
        return x.narrow(dim, self.rank * chunk, chunk)

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.degree)]
        with self.comm:
            dist.all_gather(parts, x.contiguous(), group=self.mesh.sp_group)
        return torch.cat(parts, dim=dim)


def _seq_to_heads(x: torch.Tensor, u: int, group, comm: CommClock) -> torch.Tensor:
    """[B, S_l, N, D] (sequence chunk, all heads) -> [B, u*S_l, N/u, D] (all chunks, head group)."""
    b, s, n, d = x.shape
    send = x.reshape(b, s, u, n // u, d).permute(2, 0, 1, 3, 4).contiguous()  # [u, B, S_l, N/u, D]
    recv = torch.empty_like(send)
    with comm:
        dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, u * s, n // u, d)  # chunks in rank order


def _heads_to_seq(x: torch.Tensor, u: int, group, comm: CommClock) -> torch.Tensor:
    """Inverse of :func:`_seq_to_heads`: [B, u*S_l, N/u, D] -> [B, S_l, N, D]."""
    b, su, h, d = x.shape
    s = su // u
    send = x.reshape(b, u, s, h, d).permute(1, 0, 2, 3, 4).contiguous()  # [u, B, S_l, N/u, D]
    recv = torch.empty_like(send)
    with comm:
        dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, s, u * h, d)


def merge_partial(out: torch.Tensor, lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Combine two softmax-attention partials over disjoint key sets (float32):
    lse = logaddexp(lse_a, lse_b); out = out_a e^{lse_a - lse} + out_b e^{lse_b - lse}.
    out: [B, S, H, D]; lse: [B, H, S]."""
    new = torch.logaddexp(lse, lse_b)
    wa = torch.exp(lse - new).transpose(1, 2).unsqueeze(-1)
    wb = torch.exp(lse_b - new).transpose(1, 2).unsqueeze(-1)
    return out * wa + out_b.float() * wb, new


class SequenceParallelAttention:
    """The attention contract on this rank's sequence chunk: q, k, v [B, S_local, N, D].

    ``kv_lens`` are global (per sample, over the padded whole sequence). ``inner`` is the
    backend's attention; with ring > 1 it must return the log-sum-exp.
    """

    def __init__(self, inner: Callable, mesh: Mesh, comm: CommClock) -> None:
        self.inner = inner
        self.mesh = mesh
        self.comm = comm
        self.__name__ = "sequence_parallel(%s)" % getattr(inner, "__name__", "attention")

    def __call__(self, q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        if return_lse:
            raise ValueError("sequence-parallel attention returns no log-sum-exp to its caller")
        m = self.mesh
        u = m.ulysses
        if u > 1:
            if q.shape[2] % u:
                raise ValueError("%d heads are not divisible by ulysses %d" % (q.shape[2], u))
            q, k, v = (_seq_to_heads(t, u, m.ulysses_group, self.comm) for t in (q, k, v))
        if m.ring == 1:
            total = k.shape[1]
            lens = None if kv_lens is None or all(n >= total for n in kv_lens) else [min(n, total) for n in kv_lens]
            out = self.inner(q, k, v, scale=scale, kv_lens=lens)
        else:
            out = self._ring(q, k, v, scale, kv_lens)
        if u > 1:
            out = _heads_to_seq(out, u, m.ulysses_group, self.comm)
        return out

    def _ring(self, q, k, v, scale, kv_lens):
        m = self.mesh
        r, pos = m.ring, m.ring_index
        block = k.shape[1]
        nxt, prv = m.ring_ranks[(pos + 1) % r], m.ring_ranks[(pos - 1) % r]
        out = lse = None
        kv = torch.stack([k, v]).contiguous()
        for step in range(r):
            pending = None
            if step < r - 1:  # pass this block on while computing with it
                recv = torch.empty_like(kv)
                ops = [dist.P2POp(dist.isend, kv, nxt, group=m.ring_group),
                       dist.P2POp(dist.irecv, recv, prv, group=m.ring_group)]
                with self.comm:
                    pending = dist.batch_isend_irecv(ops)
            owner = (pos - step) % r  # ring slot whose keys these are
            start = owner * block
            if kv_lens is None:
                lens = None
            else:
                lens = [max(0, min(n - start, block)) for n in kv_lens]
            if lens is None or min(lens) > 0:
                o, l = self.inner(q, kv[0], kv[1], scale=scale, return_lse=True,
                                  kv_lens=None if lens is None or min(lens) == block else lens)
                if out is None:
                    out, lse = o.float(), l
                else:
                    out, lse = merge_partial(out, lse, o, l)
            elif max(lens) > 0:  # some samples have keys here, some none: per sample
                raise ValueError("ring attention: samples with different lengths per block are not supported")
            if pending is not None:
                with self.comm:
                    for req in pending:
                        req.wait()
                kv = recv
        return out.to(q.dtype)


def wrap_self_attention(table, mesh: Mesh, comm: CommClock):
    """The op table with its self-attention replaced by the sequence-parallel wrapper around it,
    and the sequence plan attached for the model."""
    import dataclasses

    from ..ops.table import ResolvedOp

    inner = table.self_attention
    wrapped = ResolvedOp(site=inner.site, kind=inner.kind,
                         impl="%s[ulysses=%d, ring=%d]" % (inner.impl, mesh.ulysses, mesh.ring),
                         fn=SequenceParallelAttention(inner.fn, mesh, comm), why=inner.why)
    return dataclasses.replace(table, self_attention=wrapped, sequence=SequencePlan(mesh, comm))
