"""Sequence parallelism for the DiT: the token sequence split across the ranks of one CFG branch.

The DiT pads its tokens to a multiple of the sequence degree, keeps this rank's chunk through the
blocks (rotary tables sliced to the chunk's global positions, per-token modulation sliced
likewise) and gathers the chunks before the unpatchify. Self-attention is the only op that needs
the whole sequence: :class:`SequenceParallelAttention` wraps the backend's attention with Ulysses
(all-to-all: sequence-split <-> head-split) and/or ring (K/V blocks passed around, partial results
merged through the log-sum-exp). Padded keys are masked (``kv_lens``), so the result equals the
unsplit run. Cross-attention and everything else stay local.

Overlap (``parallel.ulysses_overlap``, on by default): the self-attention calls
:meth:`SequenceParallelAttention.exchange_qk` as soon as q and k exist, so their all-to-all (one
collective for both, per head chunk) is in flight while v is projected; v's exchange follows, and
the attention runs per head chunk: chunk i is computed while chunk i+1's inputs and chunk i-1's
output travel. The collectives are issued with ``async_op=True`` and waited for just before use
(on a GPU the wait makes the compute stream wait for the collective's stream; the host goes on
issuing work). Attention is independent per head and the exchanges only move values, so the
result is bit-for-bit that of the plain path (``ulysses_overlap: false``), which stays as it was.
How the overlapped all-to-alls move is the exchange's business (``parallel.ulysses_exchange``,
``wanport.parallel.exchange``): the collective library's kernels, or a backend's copy engines.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from .exchange import CollectiveExchange
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
        self.comm.sent(x.numel() * x.element_size() * (self.degree - 1))
        with self.comm:
            dist.all_gather(parts, x.contiguous(), group=self.mesh.sp_group)
        return torch.cat(parts, dim=dim)


def _seq_to_heads(x: torch.Tensor, u: int, group, comm: CommClock) -> torch.Tensor:
    """[B, S_l, N, D] (sequence chunk, all heads) -> [B, u*S_l, N/u, D] (all chunks, head group)."""
    b, s, n, d = x.shape
    send = x.reshape(b, s, u, n // u, d).permute(2, 0, 1, 3, 4).contiguous()  # [u, B, S_l, N/u, D]
    recv = torch.empty_like(send)
    comm.sent(_nbytes(send, u))
    with comm:
        dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, u * s, n // u, d)  # chunks in rank order


def _heads_to_seq(x: torch.Tensor, u: int, group, comm: CommClock) -> torch.Tensor:
    """Inverse of :func:`_seq_to_heads`: [B, u*S_l, N/u, D] -> [B, S_l, N, D]."""
    b, su, h, d = x.shape
    s = su // u
    send = x.reshape(b, u, s, h, d).permute(1, 0, 2, 3, 4).contiguous()  # [u, B, S_l, N/u, D]
    recv = torch.empty_like(send)
    comm.sent(_nbytes(send, u))
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


def _move(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(src)`` for the exchanges' layout moves, done on 8-byte words where the layouts
    allow it (same dtype, last dim contiguous on both sides, every other stride and offset a whole
    number of words): the same bits, but a strided copy moves a fraction of the memory bandwidth
    when each element is 2 bytes."""
    size = dst.element_size()
    if dst.dtype == src.dtype and size < 8 and dst.stride(-1) == 1 and src.stride(-1) == 1:
        r = 8 // size
        aligned = all(v % r == 0 for t in (dst, src) for v in (t.stride()[:-1] + (t.storage_offset(), t.shape[-1])))
        if aligned:
            dst.view(torch.int64).copy_(src.view(torch.int64))
            return dst
    return dst.copy_(src)


def _nbytes(send: torch.Tensor, u: int) -> int:
    """Bytes this rank sends in an all-to-all of ``send`` (its own 1/u share stays here)."""
    return send.numel() * send.element_size() * (u - 1) // u


def head_chunks(heads_per_rank: int, ring: int = 1) -> int:
    """Head chunks of the overlapped Ulysses attention: the largest of 4, 3, 2 dividing the heads
    this rank attends to (1 with ring > 1, whose P2P rounds would be repeated per chunk)."""
    if ring > 1:
        return 1
    return next(c for c in (4, 3, 2, 1) if heads_per_rank % c == 0)


class _InFlight:
    """One all-to-all started by the exchange (asynchronous): the receive buffer, the work handle,
    and the send buffer (held until the wait, so its memory is not reused while it is read)."""

    __slots__ = ("recv", "work", "send")

    def __init__(self, send: torch.Tensor, group, comm: CommClock, u: int, exchange) -> None:
        self.send = send
        comm.issued(_nbytes(send, u))
        self.recv, self.work = exchange.start(send, group)

    def result(self, comm: CommClock) -> torch.Tensor:
        if self.work is not None:
            comm.wait(self.work)
            self.work = self.send = None
        return self.recv


class PendingQK:
    """q and k on their way to head-split layout: one all-to-all per head chunk, in flight."""

    def __init__(self, shape, chunks: int, exchanges) -> None:
        self.shape, self.chunks, self.exchanges = shape, chunks, exchanges


class SequenceParallelAttention:
    """The attention contract on this rank's sequence chunk: q, k, v [B, S_local, N, D].

    ``kv_lens`` are global (per sample, over the padded whole sequence). ``inner`` is the
    backend's attention; with ring > 1 it must return the log-sum-exp. ``overlap``: the Ulysses
    exchanges run asynchronously, overlapped with the v projection and with the attention of the
    other head chunks (see the module docstring); the caller may split the call in two
    (:meth:`exchange_qk` before v exists, then :meth:`attend`) when :attr:`overlaps` is true.
    """

    def __init__(self, inner: Callable, mesh: Mesh, comm: CommClock, overlap: bool = True, exchange=None) -> None:
        self.inner = inner
        self.mesh = mesh
        self.comm = comm
        self.overlaps = bool(overlap) and mesh.ulysses > 1
        self.exchange = exchange or CollectiveExchange()  # how the overlapped path's all-to-alls move
        self.__name__ = "sequence_parallel(%s)" % getattr(inner, "__name__", "attention")

    def __call__(self, q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        if return_lse:
            raise ValueError("sequence-parallel attention returns no log-sum-exp to its caller")
        if self.overlaps:
            return self.attend(self.exchange_qk(q, k), v, scale=scale, kv_lens=kv_lens)
        m = self.mesh
        u = m.ulysses
        if u > 1:
            self._check_heads(q.shape[2])
            q, k, v = (_seq_to_heads(t, u, m.ulysses_group, self.comm) for t in (q, k, v))
        out = self._local(q, k, v, scale, kv_lens)
        if u > 1:
            out = _heads_to_seq(out, u, m.ulysses_group, self.comm)
        return out

    def _check_heads(self, n: int) -> None:
        if n % self.mesh.ulysses:
            raise ValueError("%d heads are not divisible by ulysses %d" % (n, self.mesh.ulysses))

    def _local(self, q, k, v, scale, kv_lens):
        """The attention on head-split inputs (all tokens of the ring slot): plain or ring."""
        if self.mesh.ring == 1:
            total = k.shape[1]
            lens = None if kv_lens is None or all(n >= total for n in kv_lens) else [min(n, total) for n in kv_lens]
            return self.inner(q, k, v, scale=scale, kv_lens=lens)
        return self._ring(q, k, v, scale, kv_lens)

    # -- the overlapped Ulysses path ----------------------------------------------------------
    def exchange_qk(self, q: torch.Tensor, k: torch.Tensor) -> PendingQK:
        """Issue the all-to-all of q and k (side by side per token: one collective per head chunk)
        and return at once; v's projection runs while it is in flight. q, k: [B, S_local, N, D]."""
        m = self.mesh
        u = m.ulysses
        b, s, n, d = q.shape
        self._check_heads(n)
        c = head_chunks(n // u, m.ring)
        hc = n // (u * c)
        q6, k6 = q.reshape(b, s, u, c, hc, d), k.reshape(b, s, u, c, hc, d)
        exchanges = []
        ex = self.exchange
        for i in range(c):  # q and k side by side per token: what arrives is usable in place (below)
            send = ex.send_buffer((u, b, s, 2, hc, d), q.dtype, q.device)
            _move(send[:, :, :, 0], q6[:, :, :, i].permute(2, 0, 1, 3, 4))
            _move(send[:, :, :, 1], k6[:, :, :, i].permute(2, 0, 1, 3, 4))
            exchanges.append(_InFlight(send, m.ulysses_group, self.comm, u, ex))
        return PendingQK((b, s, n, d), c, exchanges)

    def attend(self, pending: PendingQK, v: torch.Tensor, *, scale: float,
               kv_lens: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Finish what :meth:`exchange_qk` started: v's exchange, then per head chunk wait, attend
        and send the output back while the next chunk is computed. Returns [B, S_local, N, D]."""
        m = self.mesh
        u, c = m.ulysses, pending.chunks
        b, s, n, d = pending.shape
        hc = n // (u * c)
        group, comm, ex = m.ulysses_group, self.comm, self.exchange
        v6 = v.reshape(b, s, u, c, hc, d)

        def staged(src: torch.Tensor) -> torch.Tensor:  # src laid out [u, ...] in the exchange's buffer
            if getattr(ex, "any_send", False) and src.is_contiguous():  # the output with one sample: no copy
                return src
            return _move(ex.send_buffer(src.shape, src.dtype, src.device), src)

        v_flight = [_InFlight(staged(v6[:, :, :, i].permute(2, 0, 1, 3, 4)), group, comm, u, ex) for i in range(c)]
        back = []
        for i in range(c):
            qk = pending.exchanges[i].result(comm)  # [u, B, S_l, 2, hc, D]
            # with one sample these are views (token stride 2*hc*D, chunks in rank order): no copy
            qi = qk[:, :, :, 0].permute(1, 0, 2, 3, 4).reshape(b, u * s, hc, d)
            ki = qk[:, :, :, 1].permute(1, 0, 2, 3, 4).reshape(b, u * s, hc, d)
            vi = v_flight[i].result(comm).permute(1, 0, 2, 3, 4).reshape(b, u * s, hc, d)
            del qk
            # the handles go now; the received buffers live while qi/ki/vi (views, or copies with
            # several samples) are in use, i.e. until this chunk's attention has read them
            pending.exchanges[i] = v_flight[i] = None
            o = self._local(qi, ki, vi, scale, kv_lens)  # [B, u*S_l, hc, D]
            back.append(_InFlight(staged(o.reshape(b, u, s, hc, d).permute(1, 0, 2, 3, 4)), group, comm, u, ex))
        out = None
        for i in range(c):
            got = back[i].result(comm)  # [u, B, S_l, hc, D]: this chunk of every rank's head group
            if out is None:
                out = torch.empty((b, s, u, c, hc, d), dtype=got.dtype, device=got.device)
            _move(out[:, :, :, i], got.permute(1, 2, 0, 3, 4))
            back[i] = None
        return out.reshape(b, s, n, d)

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
                self.comm.issued(kv.numel() * kv.element_size())
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
                for req in pending:
                    self.comm.wait(req)
                kv = recv
        return out.to(q.dtype)


def wrap_self_attention(table, mesh: Mesh, comm: CommClock, overlap: bool = True, exchange=None):
    """The op table with its self-attention replaced by the sequence-parallel wrapper around it,
    and the sequence plan attached for the model. ``overlap``: ``parallel.ulysses_overlap``;
    ``exchange``: how the overlapped all-to-alls move (``wanport.parallel.exchange``; default the
    collective)."""
    import dataclasses

    from ..ops.table import ResolvedOp

    inner = table.self_attention
    fn = SequenceParallelAttention(inner.fn, mesh, comm, overlap, exchange)
    how = ""
    if fn.overlaps:
        how = ", overlap" if fn.exchange.name == "collective" else ", overlap, %s" % fn.exchange.name
    wrapped = ResolvedOp(site=inner.site, kind=inner.kind,
                         impl="%s[ulysses=%d, ring=%d%s]" % (inner.impl, mesh.ulysses, mesh.ring, how),
                         fn=fn, why=inner.why)
    return dataclasses.replace(table, self_attention=wrapped, sequence=SequencePlan(mesh, comm))
