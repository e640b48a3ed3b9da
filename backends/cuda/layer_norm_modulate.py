"""Triton: affine-free LayerNorm fused with adaLN modulation, norm(x) * (1 + scale) + shift; the same
kernel with ``ADD`` first forms the residual sum x + y and writes it (``add_layer_norm_modulate``)."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._rows import modulation_strides, row_launch, rows_view


@triton.jit
def _ln_modulate_kernel(
    x_ptr, y_ptr, sum_ptr, shift_ptr, scale_ptr, out_ptr,
    seq_len, x_row_stride, sh_b, sh_s, sc_b, sc_s, eps,
    C: tl.constexpr, BLOCK: tl.constexpr, ADD: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // seq_len
    s = row % seq_len
    cols = tl.arange(0, BLOCK)
    m = cols < C
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=m, other=0.0)
    if ADD:  # the residual sum in its dtype (float32 stream + bf16 branch: one float32 add), stored
        x = x.to(sum_ptr.dtype.element_ty) + tl.load(y_ptr + row * C + cols, mask=m, other=0.0).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * C + cols, x, mask=m)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    xc = tl.where(m, x - mean, 0.0)
    rstd = tl.math.rsqrt(tl.sum(xc * xc, axis=0) / C + eps)
    n = (xc * rstd).to(sum_ptr.dtype.element_ty).to(tl.float32)  # official: LN(x).type_as(x)
    sc = tl.load(scale_ptr + b * sc_b + s * sc_s + cols, mask=m, other=0.0).to(tl.float32)
    sh = tl.load(shift_ptr + b * sh_b + s * sh_s + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * C + cols, (n * (1.0 + sc) + sh).to(out_ptr.dtype.element_ty), mask=m)


def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, *,
                        out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    if out_dtype is None:
        out_dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)
    b, s, c = x.shape
    x2 = rows_view(x)
    sh_b, sh_s = modulation_strides(shift, x)
    sc_b, sc_s = modulation_strides(scale, x)
    out = torch.empty(b, s, c, device=x.device, dtype=out_dtype)
    block, warps = row_launch(c)
    # without ADD the sum pointer only carries x's dtype (nothing is stored through it)
    _ln_modulate_kernel[(b * s,)](x2, x2, x2, shift, scale, out, s, x2.stride(0), sh_b, sh_s, sc_b, sc_s, eps,
                                  C=c, BLOCK=block, ADD=False, num_warps=warps)
    return out

