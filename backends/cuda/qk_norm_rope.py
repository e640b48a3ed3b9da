"""Triton: q/k RMSNorm over the full model dim fused with Wan's rotary embedding and the cast.

One or a few token rows per program (narrow rows: the norm weight loaded once for several): one
read of the Linear output (bf16), one write of the rotated, attention-ready tensor. Numerics follow the contract:
float32 statistics, the normalised value rounded to the input dtype (as the official code does)
before the weight, rotation in float32, one rounding to the output dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from wanport.ops.checks import check_rotary_tables


@triton.jit
def _qk_norm_rope_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
    rows, seq_len, x_row_stride, out_row_stride, cos_row_stride, eps,
    C: tl.constexpr, HALF_D: tl.constexpr, HALF_BLOCK: tl.constexpr, ROWS: tl.constexpr,
):
    # each row is read and written contiguously (vector loads) and split into its pairs in
    # registers; a program takes ROWS rows so the norm weight is loaded once for all of them
    j = tl.arange(0, HALF_BLOCK)  # pair index within the row
    i = tl.arange(0, 2 * HALF_BLOCK)  # element index within the row
    mi = i < C
    w = tl.load(w_ptr + i, mask=mi, other=0.0).to(tl.float32)
    we, wo = tl.split(tl.reshape(w, (HALF_BLOCK, 2)))
    p = j % HALF_D
    m = j < C // 2
    in_ty = x_ptr.dtype.element_ty
    out_ty = out_ptr.dtype.element_ty
    for r in range(ROWS):
        row = tl.program_id(0) * ROWS + r
        if row < rows:
            s = row % seq_len
            x = tl.load(x_ptr + row * x_row_stride + i, mask=mi, other=0.0).to(tl.float32)
            xe, xo = tl.split(tl.reshape(x, (HALF_BLOCK, 2)))
            rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / C + eps)
            ne = (xe * rstd).to(in_ty).to(tl.float32) * we
            no = (xo * rstd).to(in_ty).to(tl.float32) * wo
            c = tl.load(cos_ptr + s * cos_row_stride + 2 * p, mask=m, other=1.0)
            sn = tl.load(sin_ptr + s * cos_row_stride + 2 * p, mask=m, other=0.0)
            out = tl.reshape(tl.join(ne * c - no * sn, ne * sn + no * c), (2 * HALF_BLOCK,))
            tl.store(out_ptr + row * out_row_stride + i, out.to(out_ty), mask=mi)


def rows_per_program(c: int) -> int:
    """Token rows per program, measured on an H200 at 32 760 tokens (q and k together,
    ``benchmarks/qk_norm_rope_rows_probe.py``): the 1.3B's 1536-wide rows gain from 4 (0.204 ->
    0.182 ms), the 14B's 5120-wide rows lose (1 row 0.553 ms, 4 rows 0.597)."""
    return 4 if c <= 2048 else 1


def _one(x: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
         num_heads: int, out_dtype: torch.dtype, rows: int = 0) -> torch.Tensor:
    """``rows``: token rows per program (0: :func:`rows_per_program`)."""
    b, s, c = x.shape
    rows_per = rows or rows_per_program(c)
    x2 = x.reshape(b * s, c)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(b, s, num_heads, c // num_heads, device=x.device, dtype=out_dtype)
    half_block = triton.next_power_of_2(c // 2)
    n = b * s
    _qk_norm_rope_kernel[(triton.cdiv(n, rows_per),)](
        x2, w, cos, sin, out, n, s, x2.stride(0), c, cos.stride(0), eps,
        C=c, HALF_D=c // num_heads // 2, HALF_BLOCK=half_block, ROWS=rows_per,
        num_warps=8 if half_block >= 2048 else 4,
    )
    return out


def qk_norm_rope(q, k, q_weight, k_weight, eps, cos, sin, num_heads, out_dtype):
    if cos.stride(1) != 1 or sin.stride(1) != 1 or cos.stride(0) != sin.stride(0):
        cos, sin = cos.contiguous(), sin.contiguous()
    check_rotary_tables(cos, sin, q.shape[1], q.shape[-1] // num_heads)
    return (_one(q, q_weight, cos, sin, eps, num_heads, out_dtype),
            _one(k, k_weight, cos, sin, eps, num_heads, out_dtype))
