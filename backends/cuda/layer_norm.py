"""Triton: LayerNorm over the last dim (optional affine), float32 statistics."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._rows import row_launch, rows_view


@triton.jit
def _layer_norm_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, x_row_stride, eps,
    C: tl.constexpr, BLOCK: tl.constexpr, AFFINE: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < C
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    xc = tl.where(m, x - mean, 0.0)
    y = xc * tl.math.rsqrt(tl.sum(xc * xc, axis=0) / C + eps)
    if AFFINE:
        y = y * tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32) \
            + tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
    y = y.to(x_ptr.dtype.element_ty)  # the contract: LN in x's dtype, then out_dtype
    tl.store(out_ptr + row * C + cols, y.to(out_ptr.dtype.element_ty), mask=m)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float, *,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    c = x.shape[-1]
    x2 = rows_view(x)
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype or x.dtype)
    affine = weight is not None
    if affine and bias is None:
        bias = torch.zeros_like(weight)
    block, warps = row_launch(c)
    _layer_norm_kernel[(x2.shape[0],)](x2, weight if affine else x2, bias if affine else x2, out,
                                       x2.stride(0), eps, C=c, BLOCK=block, AFFINE=affine, num_warps=warps)
    return out
