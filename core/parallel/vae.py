"""VAE parallelism: the decode (and encode) split along the frame height across all ranks.

Exact: every spatial conv gets real halo rows from the neighbouring ranks instead of zeros
(zeros only at the true image borders), the mid-block attention attends over the whole frame
(keys/values all-gathered), and everything else (per-position norms, nearest upsampling, the
temporal caches) is local. The pieces are gathered on rank 0 (decode) or on every rank (encode).

What a split call costs beyond its share of the compute (counted per call in :class:`VAEPhases`):

* ``halo``: one ``batch_isend_irecv`` (both neighbours, both directions) per spatial conv per
  chunk -- 33 per latent frame for the Wan2.1 and Wan2.2 decoders. Each conv's padded input is
  built once in the activation's memory format (:func:`assemble_padded`); only the halo rows
  travel, through small contiguous buffers.
* ``attention``: one all-gather of the mid-block's keys and values (one tensor) per chunk; the
  row counts of every rank follow from the split, so nothing else is exchanged.
* ``gather``: the decoded rows gathered on rank 0 only (``dist.gather`` into one buffer).

Nothing in the loop waits on the host: no ``.item()``, no synchronisation, unless the phases are
timed (``VAEPhases(runtime, timed=True)``, benchmarks), which synchronises the device through the
backend runtime around every phase and so costs the overlap it measures.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..models.vae.cache import FeatureCache
from ..models.vae.layers import VAEContext, assemble_padded
from .mesh import CommClock


def split_sizes(n: int, parts: int) -> List[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


class _Untimed:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_UNTIMED = _Untimed()


class _Timed:
    __slots__ = ("owner", "name", "t0")

    def __init__(self, owner: "VAEPhases", name: str) -> None:
        self.owner, self.name = owner, name

    def __enter__(self):
        self.owner.runtime.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.owner.runtime.synchronize()
        self.owner.seconds[self.name] += time.perf_counter() - self.t0
        return False


class VAEPhases:
    """Where a split VAE call's time goes, per rank: calls and bytes sent of each phase always
    (free: shapes only), seconds only when ``timed`` (the backend runtime synchronises the device
    around each phase). Phases: ``decode`` (this rank's whole local decode, halo and attention
    included), ``halo``, ``attention``, ``gather``, ``post`` (what the caller does with the video
    on rank 0 afterwards, if it times it); ``compute`` = decode - halo - attention."""

    PHASES = ("decode", "halo", "attention", "gather", "post")

    def __init__(self, runtime=None, timed: bool = False) -> None:
        if timed and runtime is None:
            raise ValueError("timed VAE phases need the backend runtime (it synchronises the device)")
        self.runtime, self.timed = runtime, bool(timed)
        self.seconds: Dict[str, float] = dict.fromkeys(self.PHASES, 0.0)
        self.calls: Dict[str, int] = dict.fromkeys(self.PHASES, 0)
        self.bytes: Dict[str, int] = dict.fromkeys(self.PHASES, 0)

    def phase(self, name: str, nbytes: int = 0):
        """A ``with`` block counted (and, when timed, timed) as ``name``."""
        self.calls[name] += 1
        self.bytes[name] += int(nbytes)
        return _Timed(self, name) if self.timed else _UNTIMED

    def report(self) -> Dict[str, object]:
        out: Dict[str, object] = {"timed": self.timed}
        for name in self.PHASES:
            row: Dict[str, object] = {"calls": self.calls[name], "bytes_sent": self.bytes[name]}
            if self.timed:
                row["s"] = round(self.seconds[name], 5)
            out[name] = row
        if self.timed:
            out["compute"] = {"s": round(self.seconds["decode"] - self.seconds["halo"] - self.seconds["attention"], 5)}
        return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class SplitVAEContext(VAEContext):
    """A VAEContext whose padding exchanges halo rows and whose attention sees the whole frame.

    ``sizes``: the latent rows of every rank (:func:`split_sizes`); with it the attention knows
    every rank's key count without asking. ``comm``: kept for callers of the first version; the
    exchanges are counted in ``phases`` instead (a synchronising clock around each of them would
    stall the device hundreds of times per decode)."""

    def __init__(self, rank: int, world: int, group=None, comm: CommClock = None,
                 phases: Optional[VAEPhases] = None, sizes: Optional[Sequence[int]] = None) -> None:
        super().__init__(FeatureCache())
        self.rank, self.world, self.group = rank, world, group
        self.comm = comm or CommClock()
        self.phases = phases or VAEPhases()
        self.sizes = list(sizes) if sizes is not None else None

    def _global(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    # -- halo rows ---------------------------------------------------------------------------
    def _fill_halo(self, out: torch.Tensor, top: int, bottom: int) -> None:
        """Overwrite the ``top``/``bottom`` border rows of the padded ``out`` (dim -2) with the
        neighbours' rows; the true image borders (first/last rank) stay the zeros they hold."""
        hdim = out.dim() - 2
        rows = out.shape[hdim] - top - bottom
        if rows < max(top, bottom):
            raise ValueError("a shard of %d rows is too small for a %d-row halo" % (rows, max(top, bottom)))
        up, down = self.rank - 1, self.rank + 1
        ops, recv_top, recv_bottom, sent = [], None, None, 0
        if up >= 0:
            if bottom:  # the rank above needs my first rows as its bottom halo
                buf = out.narrow(hdim, top, bottom).contiguous()
                sent += _nbytes(buf)
                ops.append(dist.P2POp(dist.isend, buf, self._global(up), group=self.group))
            if top:
                recv_top = torch.empty(out.narrow(hdim, 0, top).shape, dtype=out.dtype, device=out.device)
                ops.append(dist.P2POp(dist.irecv, recv_top, self._global(up), group=self.group))
        if down < self.world:
            if top:  # the rank below needs my last rows as its top halo
                buf = out.narrow(hdim, top + rows - top, top).contiguous()
                sent += _nbytes(buf)
                ops.append(dist.P2POp(dist.isend, buf, self._global(down), group=self.group))
            if bottom:
                recv_bottom = torch.empty(out.narrow(hdim, 0, bottom).shape, dtype=out.dtype, device=out.device)
                ops.append(dist.P2POp(dist.irecv, recv_bottom, self._global(down), group=self.group))
        if not ops:
            return
        with self.phases.phase("halo", sent):
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        if recv_top is not None:
            out.narrow(hdim, 0, top).copy_(recv_top)
        if recv_bottom is not None:
            out.narrow(hdim, top + rows, bottom).copy_(recv_bottom)

    def pad(self, x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
        if not any(pads):
            return x
        out = assemble_padded(x, pads)
        if pads[2] or pads[3]:
            self._fill_halo(out, pads[2], pads[3])
        return out

    def causal_input(self, x: torch.Tensor, context: Optional[torch.Tensor], pads: Sequence[int]) -> torch.Tensor:
        """The single-device input (one allocation in x's layout), its interior H borders then
        overwritten with the neighbours' rows (of the context frames too)."""
        if context is None and not any(pads):
            return x
        out = assemble_padded(x, pads, context)
        if pads[2] or pads[3]:
            self._fill_halo(out, pads[2], pads[3])
        return out

    # -- attention over the whole frame ------------------------------------------------------
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Local queries against the keys/values of the whole frame ([N, 1, L_local, C])."""
        c = k.shape[-1]
        kv = self._gather_rows(torch.cat([k, v], dim=-1))
        return F.scaled_dot_product_attention(q, kv[..., :c], kv[..., c:])

    def _row_counts(self, t: torch.Tensor) -> List[int]:
        """Every rank's length of dim 2: from the split when known (no exchange), else asked."""
        if self.sizes is not None and t.shape[2] % self.sizes[self.rank] == 0:
            per_row = t.shape[2] // self.sizes[self.rank]
            return [s * per_row for s in self.sizes]
        n = torch.tensor([t.shape[2]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n, group=self.group)
        return [int(s) for s in sizes]

    def _gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """All-gather along dim 2 with possibly different lengths per rank."""
        counts = self._row_counts(t)
        longest = max(counts)
        padded = F.pad(t, (0, 0, 0, longest - t.shape[2])) if t.shape[2] < longest else t.contiguous()
        buf = padded.new_empty((self.world,) + tuple(padded.shape))
        with self.phases.phase("attention", _nbytes(padded)):
            dist.all_gather(list(buf.unbind(0)), padded, group=self.group)
        if padded.shape[0] == 1 and all(n == longest for n in counts):  # [world, 1, 1, L, C]: a view
            return buf.reshape((1, 1, self.world * longest) + tuple(padded.shape[3:]))
        return torch.cat([p.narrow(2, 0, n) for p, n in zip(buf.unbind(0), counts)], dim=2)


def gather_rows(x: torch.Tensor, dim: int, sizes: Sequence[int], rank: int, group=None, to_all: bool = False,
                comm: CommClock = None, phases: Optional[VAEPhases] = None):
    """Concatenate every rank's rows along ``dim`` (uneven sizes): on rank 0 only (a gather into
    one buffer; None elsewhere), or on every rank with ``to_all`` (an all-gather)."""
    comm = comm or CommClock()
    phases = phases or VAEPhases()
    longest = max(sizes)
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, longest - x.shape[dim]]
    padded = F.pad(x, pad) if x.shape[dim] < longest else x.contiguous()
    world = len(sizes)
    keep = to_all or rank == 0
    buf = padded.new_empty((world,) + tuple(padded.shape)) if keep else None
    with phases.phase("gather", _nbytes(padded) if rank != 0 or to_all else 0), comm:
        if to_all:
            dist.all_gather(list(buf.unbind(0)), padded, group=group)
        else:
            dst = 0 if group is None else dist.get_global_rank(group, 0)
            dist.gather(padded, list(buf.unbind(0)) if keep else None, dst=dst, group=group)
    if not keep:
        return None
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(buf.unbind(0), sizes)], dim=dim)


def decode_split(vae, z: torch.Tensor, rank: int, world: int, group=None, comm: CommClock = None,
                 progress=None, phases: Optional[VAEPhases] = None):
    """The VAE decode of latent ``z`` [B, C, T, h, w] split over ``world`` ranks by latent rows;
    the video on rank 0, None elsewhere. ``phases``: the per-phase account (untimed by default)."""
    phases = phases or VAEPhases()
    sizes = split_sizes(z.shape[3], world)
    start = sum(sizes[:rank])
    ctx = SplitVAEContext(rank, world, group, comm, phases, sizes)
    with phases.phase("decode"):
        local = vae.decode(z.narrow(3, start, sizes[rank]), progress=progress, context=ctx)
    scale = local.shape[3] // sizes[rank]
    return gather_rows(local, 3, [s * scale for s in sizes], rank, group, comm=comm, phases=phases)


def encode_split(vae, video: torch.Tensor, rank: int, world: int, group=None, comm: CommClock = None,
                 phases: Optional[VAEPhases] = None):
    """The VAE encode of ``video`` [B, 3, F, H, W] split by latent rows; the latent on every rank."""
    phases = phases or VAEPhases()
    stride = vae.spatial_stride
    sizes = split_sizes(video.shape[3] // stride, world)
    start = sum(sizes[:rank]) * stride
    ctx = SplitVAEContext(rank, world, group, comm, phases, sizes)
    local = vae.encode(video.narrow(3, start, sizes[rank] * stride), context=ctx)
    return gather_rows(local, 3, sizes, rank, group, to_all=True, comm=comm, phases=phases)
