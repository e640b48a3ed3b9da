"""Rotary embedding through ``torch_npu.npu_rotary_mul``, real float32 tables, no complex dtype.

The contract hands over ``cos``/``sin`` as [S, D] float32 with each angle repeated for both members
of a pair — exactly the r1/r2 of the kernel's interleave mode — built once per video shape by the
model. q/k are [B, S, N, D] (BSND), for which interleave mode accepts only 1S1D tables: a view of
the [S, D] table, no copy.

- ``rotary_mul`` (torch_npu with ``rotary_mode``, op-plugin >= 7.0.0):
  ``npu_rotary_mul(x, cos[1,S,1,D], sin[1,S,1,D], rotary_mode="interleave")``.
- ``rotary_mul_half`` (older torch_npu, half mode only): the pairs (x[2i], x[2i+1]) are moved to the
  halves (x[i], x[D/2+i]), rotated by the kernel's split-half rule with tables built once per table
  pair (cos[:, 0::2] twice), and moved back: two extra copies per tensor, still one fused kernel.

The kernel casts r1/r2 to x's dtype; the contract asks for float32 math, so half-precision q/k are
rotated in float32 and rounded once at the end (no cast at all under the official policy, whose
rotary input is float32). Interleave mode needs B*N < 1000: larger batches go through in chunks.
"""

from __future__ import annotations

from typing import Callable

import torch

from wanport.ops.checks import check_rotary_tables

_MAX_BN = 999  # interleave mode: B * N < 1000


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _batch_chunks(x: torch.Tensor):
    per = max(1, _MAX_BN // max(1, x.shape[2]))
    return [x] if x.shape[0] <= per else list(x.split(per, dim=0))


def make_rotary_interleave(npu_rotary_mul: Callable):
    def rotate(x, c, s):
        parts = [npu_rotary_mul(_f32(p).contiguous(), c, s, rotary_mode="interleave") for p in _batch_chunks(x)]
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return y.to(x.dtype)

    def rotary_mul(q, k, cos, sin):
        check_rotary_tables(cos, sin, q.shape[1], q.shape[-1])
        s, d = cos.shape
        c = cos.float().reshape(1, s, 1, d)  # 1S1D, a view of the model's table
        sn = sin.float().reshape(1, s, 1, d)
        return rotate(q, c, sn), rotate(k, c, sn)

    return rotary_mul


class _HalfTables:
    """cos/sin reordered to the split-half layout, rebuilt only when the model hands new tables."""

    def __init__(self) -> None:
        self._src = (None, None)
        self._out = (None, None)

    def get(self, cos: torch.Tensor, sin: torch.Tensor):
        if self._src[0] is not cos or self._src[1] is not sin:
            s, d = cos.shape
            c = cos.float()[:, 0::2]  # one angle per pair (the table repeats it)
            sn = sin.float()[:, 0::2]
            self._out = (torch.cat((c, c), dim=-1).reshape(1, s, 1, d).contiguous(),
                         torch.cat((sn, sn), dim=-1).reshape(1, s, 1, d).contiguous())
            self._src = (cos, sin)  # held, so identity means the same table
        return self._out


def make_rotary_half(npu_rotary_mul: Callable):
    tables = _HalfTables()

    def rotate(x, c, s):
        d = x.shape[-1]
        xf = _f32(x)
        halves = torch.cat((xf[..., 0::2], xf[..., 1::2]), dim=-1)  # pairs -> halves
        y = npu_rotary_mul(halves, c, s)  # split-half rule, the only mode this torch_npu has
        out = torch.stack((y[..., : d // 2], y[..., d // 2:]), dim=-1).flatten(-2)  # halves -> pairs
        return out.to(x.dtype)

    def rotary_mul_half(q, k, cos, sin):
        check_rotary_tables(cos, sin, q.shape[1], q.shape[-1])
        c, s = tables.get(cos, sin)
        return rotate(q, c, s), rotate(k, c, s)

    return rotary_mul_half
