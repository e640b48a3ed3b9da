"""Triton row kernels that emit FP8 e4m3 values and one float32 scale per row, in the pass that
produces the activation (docs/quantization.md): a plain row quantizer, the adaLN norm + quantize,
and tanh-GELU + quantize (the FFN's middle). One program per row: the per-row amax needs the
whole row, which the row kernels hold anyway.

The value quantized is the one the unfused path would quantize: the producer's output rounded
to its dtype (``round_ty``), so the reference emulation and these kernels see the same numbers.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._rows import modulation_strides, row_launch, rows_view

FP8_MAX = 448.0


@triton.jit
def _emit(y, cols, m, q_ptr, s_ptr, row, C: tl.constexpr, QMAX: tl.constexpr):
    """Per-row symmetric quantization of the float32 row ``y`` (masked by ``m``): scale = amax / QMAX."""
    amax = tl.max(tl.where(m, tl.abs(y), 0.0), axis=0)
    scale = tl.maximum(amax, 1e-12) / QMAX
    q = tl.minimum(tl.maximum(y / scale, -QMAX), QMAX)
    tl.store(q_ptr + row * C + cols, q.to(q_ptr.dtype.element_ty), mask=m)
    tl.store(s_ptr + row, scale)


@triton.jit
def _row_quant_kernel(x_ptr, q_ptr, s_ptr, x_row_stride, C: tl.constexpr, BLOCK: tl.constexpr,
                      QMAX: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < C
    y = tl.load(x_ptr + row * x_row_stride + cols, mask=m, other=0.0).to(tl.float32)
    _emit(y, cols, m, q_ptr, s_ptr, row, C, QMAX)


@triton.jit
def _ln_modulate_quant_kernel(
    x_ptr, y_ptr, sum_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr,
    seq_len, x_row_stride, sh_b, sh_s, sc_b, sc_s, eps,
    C: tl.constexpr, BLOCK: tl.constexpr, QMAX: tl.constexpr, ROUND_BF16: tl.constexpr, ADD: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // seq_len
    s = row % seq_len
    cols = tl.arange(0, BLOCK)
    m = cols < C
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=m, other=0.0)
    if ADD:  # the residual sum first (as layer_norm_modulate's ADD), stored
        x = x.to(sum_ptr.dtype.element_ty) + tl.load(y_ptr + row * C + cols, mask=m, other=0.0).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * C + cols, x, mask=m)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    xc = tl.where(m, x - mean, 0.0)
    rstd = tl.math.rsqrt(tl.sum(xc * xc, axis=0) / C + eps)
    n = (xc * rstd).to(sum_ptr.dtype.element_ty).to(tl.float32)  # official: LN(x).type_as(x)
    sc = tl.load(scale_ptr + b * sc_b + s * sc_s + cols, mask=m, other=0.0).to(tl.float32)
    sh = tl.load(shift_ptr + b * sh_b + s * sh_s + cols, mask=m, other=0.0).to(tl.float32)
    y = n * (1.0 + sc) + sh
    if ROUND_BF16:  # the norm's output as the unfused path rounds it for the Linear
        y = y.to(tl.bfloat16).to(tl.float32)
    _emit(y, cols, m, q_ptr, s_ptr, row, C, QMAX)


@triton.jit
def _gelu_quant_kernel(x_ptr, q_ptr, s_ptr, x_row_stride, C: tl.constexpr, BLOCK: tl.constexpr,
                       QMAX: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < C
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=m, other=0.0).to(tl.float32)
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)  # tanh(u), saturating at +-1
    y = (0.5 * x * (1.0 + t)).to(x_ptr.dtype.element_ty).to(tl.float32)  # GELU rounded as unfused
    _emit(y, cols, m, q_ptr, s_ptr, row, C, QMAX)


def _outputs(rows: int, c: int, device):
    q = torch.empty(rows, c, device=device, dtype=torch.float8_e4m3fn)
    s = torch.empty(rows, 1, device=device, dtype=torch.float32)
    return q, s


def _warps(block: int) -> int:
    return 16 if block >= 8192 else row_launch(block)[1]


def row_quant_fp8(x: torch.Tensor):
    """x [..., C] -> (fp8 [..., C], float32 scale [..., 1]), one pass."""
    c = x.shape[-1]
    x2 = rows_view(x)
    q, s = _outputs(x2.shape[0], c, x.device)
    block = triton.next_power_of_2(c)
    _row_quant_kernel[(x2.shape[0],)](x2, q, s, x2.stride(0), C=c, BLOCK=block, QMAX=FP8_MAX,
                                      num_warps=_warps(block))
    return q.view(*x.shape), s.view(*x.shape[:-1], 1)


def ln_modulate_quant_fp8(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                          round_dtype: torch.dtype, y: Optional[torch.Tensor] = None):
    """norm(x) * (1 + scale) + shift, rounded to ``round_dtype`` (bf16 or float32), quantized per row.
    With ``y``: of the sum x + y instead, which is returned too (in x's storage when x is contiguous
    and has the sum's dtype): ``(sum, q, scale)``."""
    b, s, c = x.shape
    x2 = rows_view(x)
    total = x2
    if y is not None:
        if y.shape != x.shape:
            raise ValueError("x %s and y %s differ in shape" % (tuple(x.shape), tuple(y.shape)))
        y = y if y.is_contiguous() else y.contiguous()
        sum_dtype = torch.promote_types(x.dtype, y.dtype)
        in_place = x.is_contiguous() and x.dtype == sum_dtype
        total = x if in_place else torch.empty(b, s, c, device=x.device, dtype=sum_dtype)
    sh_b, sh_s = modulation_strides(shift, x)
    sc_b, sc_s = modulation_strides(scale, x)
    q, sc = _outputs(b * s, c, x.device)
    block = triton.next_power_of_2(c)
    _ln_modulate_quant_kernel[(b * s,)](x2, x2 if y is None else y, total, shift, scale, q, sc, s, x2.stride(0),
                                        sh_b, sh_s, sc_b, sc_s, eps, C=c, BLOCK=block, QMAX=FP8_MAX,
                                        ROUND_BF16=round_dtype == torch.bfloat16, ADD=y is not None,
                                        num_warps=_warps(block))
    if y is None:
        return q.view(b, s, c), sc.view(b, s, 1)
    return total, q.view(b, s, c), sc.view(b, s, 1)


def gelu_quant_fp8(y: torch.Tensor):
    """tanh-GELU of y [..., C] (rounded to y's dtype), quantized per row."""
    c = y.shape[-1]
    y2 = rows_view(y)
    q, s = _outputs(y2.shape[0], c, y.device)
    block = triton.next_power_of_2(c)
    _gelu_quant_kernel[(y2.shape[0],)](y2, q, s, y2.stride(0), C=c, BLOCK=block, QMAX=FP8_MAX,
                                       num_warps=_warps(block))
    return q.view(*y.shape), s.view(*y.shape[:-1], 1)
