"""Triton: Wan's RMSNorm (float32 statistics, rounded to x's dtype, times the weight)."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._rows import row_launch, rows_view


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, x_row_stride, eps, C: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < C
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=m, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / C + eps)
    n = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    y = n * tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * C + cols, y.to(out_ptr.dtype.element_ty), mask=m)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *,
             out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    c = x.shape[-1]
    x2 = rows_view(x)
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype or torch.promote_types(x.dtype, weight.dtype))
    block, warps = row_launch(c)
    _rms_norm_kernel[(x2.shape[0],)](x2, weight, out, x2.stride(0), eps, C=c, BLOCK=block, num_warps=warps)
    return out
