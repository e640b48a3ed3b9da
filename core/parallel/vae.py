"""VAE parallelism: the decode (and encode) split along the frame height across all ranks.

Exact: every spatial conv gets real halo rows from the neighbouring ranks instead of zeros
(zeros only at the true image borders), the mid-block attention attends over the whole frame
(keys/values all-gathered), and everything else (per-position norms, nearest upsampling, the
temporal caches) is local. The pieces are gathered on rank 0 (decode) or on every rank (encode).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..models.vae.cache import FeatureCache
from ..models.vae.layers import VAEContext
from .mesh import CommClock


def split_sizes(n: int, parts: int) -> List[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


class SplitVAEContext(VAEContext):
    """A VAEContext whose padding exchanges halo rows and whose attention sees the whole frame."""

    def __init__(self, rank: int, world: int, group=None, comm: CommClock = None) -> None:
        super().__init__(FeatureCache())
        self.rank, self.world, self.group = rank, world, group
        self.comm = comm or CommClock()

    def _global(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def pad(self, x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
        pads = list(pads) + [0] * (6 - len(pads)) if len(pads) < 6 and x.dim() == 5 else list(pads)
        top, bottom = pads[2], pads[3]
        hdim = x.dim() - 2
        if top or bottom:
            rows = x.shape[hdim]
            if rows < max(top, bottom):
                raise ValueError("a shard of %d rows is too small for a %d-row halo" % (rows, max(top, bottom)))
            up, down = self.rank - 1, self.rank + 1
            ops, recv_top, recv_bottom = [], None, None
            if up >= 0:
                if bottom:  # the rank above needs my first rows as its bottom halo
                    ops.append(dist.P2POp(dist.isend, x.narrow(hdim, 0, bottom).contiguous(), self._global(up),
                                          group=self.group))
                if top:
                    recv_top = torch.empty_like(x.narrow(hdim, 0, top)).contiguous()
                    ops.append(dist.P2POp(dist.irecv, recv_top, self._global(up), group=self.group))
            if down < self.world:
                if top:  # the rank below needs my last rows as its top halo
                    ops.append(dist.P2POp(dist.isend, x.narrow(hdim, rows - top, top).contiguous(),
                                          self._global(down), group=self.group))
                if bottom:
                    recv_bottom = torch.empty_like(x.narrow(hdim, 0, bottom)).contiguous()
                    ops.append(dist.P2POp(dist.irecv, recv_bottom, self._global(down), group=self.group))
            if ops:
                with self.comm:
                    for req in dist.batch_isend_irecv(ops):
                        req.wait()
            zeros = lambda n: x.new_zeros(x.shape[:hdim] + (n,) + x.shape[hdim + 1:])  # noqa: E731
            parts = []
            if top:
                parts.append(recv_top if recv_top is not None else zeros(top))
            parts.append(x)
            if bottom:
                parts.append(recv_bottom if recv_bottom is not None else zeros(bottom))
            x = torch.cat(parts, dim=hdim)
        rest = list(pads)
        rest[2] = rest[3] = 0
        return F.pad(x, tuple(rest)) if any(rest) else x

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Local queries against the keys/values of the whole frame ([N, 1, L_local, C])."""
        return F.scaled_dot_product_attention(q, self._gather_rows(k), self._gather_rows(v))

    def _gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """All-gather along dim 2 with possibly different lengths per rank."""
        n = torch.tensor([t.shape[2]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        with self.comm:
            dist.all_gather(sizes, n, group=self.group)
        sizes = [int(s) for s in sizes]
        longest = max(sizes)
        padded = F.pad(t, (0, 0, 0, longest - t.shape[2])) if t.shape[2] < longest else t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        with self.comm:
            dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([p[:, :, :s] for p, s in zip(parts, sizes)], dim=2)


def gather_rows(x: torch.Tensor, dim: int, sizes: Sequence[int], rank: int, group=None, to_all: bool = False,
                comm: CommClock = None):
    """Concatenate every rank's rows along ``dim`` (uneven sizes): on rank 0 (None elsewhere), or
    on every rank with ``to_all``."""
    comm = comm or CommClock()
    longest = max(sizes)
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, longest - x.shape[dim]]
    padded = F.pad(x, pad) if x.shape[dim] < longest else x
    parts = [torch.empty_like(padded) for _ in sizes]
    with comm:
        dist.all_gather(parts, padded.contiguous(), group=group)
    if not to_all and rank != 0:
        return None
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)


def decode_split(vae, z: torch.Tensor, rank: int, world: int, group=None, comm: CommClock = None,
                 progress=None):
    """The VAE decode of latent ``z`` [B, C, T, h, w] split over ``world`` ranks by latent rows;
    the video on rank 0, None elsewhere."""
    sizes = split_sizes(z.shape[3], world)
    start = sum(sizes[:rank])
    ctx = SplitVAEContext(rank, world, group, comm)
    local = vae.decode(z.narrow(3, start, sizes[rank]), progress=progress, context=ctx)
    scale = local.shape[3] // sizes[rank]
    return gather_rows(local, 3, [s * scale for s in sizes], rank, group, comm=comm)


def encode_split(vae, video: torch.Tensor, rank: int, world: int, group=None, comm: CommClock = None):
    """The VAE encode of ``video`` [B, 3, F, H, W] split by latent rows; the latent on every rank."""
    stride = vae.spatial_stride
    sizes = split_sizes(video.shape[3] // stride, world)
    start = sum(sizes[:rank]) * stride
    ctx = SplitVAEContext(rank, world, group, comm)
    local = vae.encode(video.narrow(3, start, sizes[rank] * stride), context=ctx)
    return gather_rows(local, 3, sizes, rank, group, to_all=True, comm=comm)
