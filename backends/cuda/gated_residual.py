"""Triton: the gated residual add x + y * gate, written in place when x already has the result dtype."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._rows import modulation_strides

_BLOCK = 1024


@triton.jit
def _gated_residual_kernel(
    x_ptr, y_ptr, g_ptr, out_ptr, seq_len, g_b, g_s,
    C: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < C
    b = row // seq_len
    s = row % seq_len
    x = tl.load(x_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + b * g_b + s * g_s + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * C + cols, (x + y * g).to(out_ptr.dtype.element_ty), mask=m)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), gate.dtype)
    b, s, c = x.shape
    x = x if x.is_contiguous() else x.contiguous()
    y = y if y.is_contiguous() else y.contiguous()
    out = x if x.dtype == out_dtype else torch.empty(x.shape, device=x.device, dtype=out_dtype)
    g_b, g_s = modulation_strides(gate, x)
    _gated_residual_kernel[(b * s, triton.cdiv(c, _BLOCK))](x, y, gate, out, s, g_b, g_s, C=c, BLOCK=_BLOCK,
                                                             num_warps=4)
    return out
