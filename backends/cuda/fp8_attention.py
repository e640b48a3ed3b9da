"""FP8 attention on Hopper (``quant.attention: fp8``, lossy, opt-in): a Triton flash-attention
forward on e4m3 operands, the scheme of ``wanport.ops.attention_quant`` (docs/quantization.md).

- Q, K (smoothed) and V are quantized by torch ops into the kernel's layouts: ``q8``/``k8``
  ``[B, N, S_pad, D]`` e4m3 with one float32 scale per 128-row block, ``v8`` ``[B, N, D, S_pad]``
  (transposed: the B operand of an FP8 ``tl.dot`` on sm90 must be K-major) with one scale per
  channel; rows are zero-padded to a multiple of 128 so the kernel loads whole tiles unmasked.
- The kernel: one program per (128-query block, sample x head); the loop over 128-key blocks does
  ``s = dot(q8, k8ᵀ) * s_q * s_k * scale * log2(e)`` (float32 accumulator), masks keys past the
  sample's length, the online softmax in base 2, ``p`` times 448 rounded to e4m3 (round to nearest
  even), ``acc += dot(p8, v8)``; the output ``acc * s_v / (448 * l)`` in q's dtype, the natural-log
  LSE when asked (plus the ``scale * q . mean(k)`` the smoothing took away).

The operand dtype is whatever the quantizer produced: ``float8_e4m3fn`` on the GPU, or float32
values on e4m3's grid with ``EMULATE_P`` rounding P in the kernel -- the same code then runs in
Triton's CPU interpreter (``TRITON_INTERPRET=1``, which has no fp8 ``dot``) for the tests.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from wanport.ops.attention_quant import BLOCK, P_SCALE, lse_shift, per_sample_keys, quantize_qkv, to_e4m3_grid

_LOG2E = 1.0 / math.log(2.0)


@triton.jit
def _round_e4m3_nonneg(x):
    """x >= 0, <= 448 rounded to e4m3's grid (3 mantissa bits, subnormal step 2^-9); ties round up
    (the GPU cast rounds ties to even; a tie is a float32 value exactly halfway, which the
    interpreter tests never rely on)."""
    e = tl.floor(tl.log2(tl.maximum(x, 0.015625)))  # 2^-6: subnormals share the smallest normal's step
    step = tl.exp2(e - 3.0)
    return tl.minimum(tl.floor(x / step + 0.5) * step, 448.0)


@triton.jit
def _fp8_attention_fwd(
    Q, K, V, QS, KS, VS, O, LSE,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vd,
    stride_ob, stride_os, stride_oh,
    N, SQ, SKV, NQB, NKB, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, P_MULT: tl.constexpr,
    RETURN_LSE: tl.constexpr, EMULATE_P: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // N).to(tl.int64)  # sample offsets pass 2^31 elements at Wan sizes from B = 6
    h = pid_bh % N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :])
    q_scale = tl.load(QS + pid_bh * NQB + pid_m) * qk_scale
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, SKV, BLOCK_N):
        cols = start_n + offs_n
        kt = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None])  # [D, BLOCK_N]
        k_scale = tl.load(KS + pid_bh * NKB + start_n // BLOCK_N)
        s = tl.dot(q, kt) * (q_scale * k_scale)
        s = tl.where(cols[None, :] < SKV, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_d[None, :] * stride_vd + cols[:, None])  # [BLOCK_N, D], keys contiguous
        pq = p * P_MULT
        if EMULATE_P:
            pq = _round_e4m3_nonneg(pq)
        acc = acc * alpha[:, None] + tl.dot(pq.to(v.dtype), v)
        m_i = m_new
    v_scale = tl.load(VS + pid_bh * HEAD_DIM + offs_d) / P_MULT
    out = acc * v_scale[None, :] / l_i[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < SQ)
    if RETURN_LSE:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # log2 units -> natural log
        tl.store(LSE + pid_bh * SQ + offs_m, lse, mask=offs_m < SQ)


def _fp8_cast(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float8_e4m3fn)


def quantize(q, k, v, *, emulate: bool = False):
    """The kernel's operands (q8, s_q, k8, s_k, v8t, s_v, k_mean) from q, k, v [B, S, N, D]."""
    q8, s_q, k8, s_k, v8t, s_v, k_mean = quantize_qkv(q, k, v, to_e4m3_grid if emulate else _fp8_cast)
    return q8.contiguous(), s_q.contiguous(), k8.contiguous(), s_k.contiguous(), v8t.contiguous(), s_v.contiguous(), k_mean


def launch(ops, sq: int, skv: int, scale: float, out_dtype, return_lse: bool, *, emulate: bool = False,
           num_warps: int = 8, num_stages: int = 3):
    """The attention kernel on quantized operands ``ops`` (from :func:`quantize`): out [B, Sq, N, D]
    in ``out_dtype`` and, when asked, the kernel's LSE [B, N, Sq] (before the smoothing shift)."""
    q8, s_q, k8, s_k, v8t, s_v, _ = ops
    b, n, _, d = q8.shape
    out = torch.empty((b, sq, n, d), dtype=out_dtype, device=q8.device)
    lse = torch.empty((b, n, sq), dtype=torch.float32, device=q8.device) if return_lse else out
    grid = (q8.shape[2] // BLOCK, b * n)
    extra = {} if emulate else dict(num_warps=num_warps, num_stages=num_stages)
    _fp8_attention_fwd[grid](
        q8, k8, v8t, s_q, s_k, s_v, out, lse,
        q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2),
        v8t.stride(0), v8t.stride(1), v8t.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        n, sq, skv, s_q.shape[2], s_k.shape[2], float(scale) * _LOG2E,
        HEAD_DIM=d, BLOCK_M=BLOCK, BLOCK_N=BLOCK, P_MULT=P_SCALE,
        RETURN_LSE=bool(return_lse), EMULATE_P=bool(emulate), **extra)
    return (out, lse) if return_lse else out


def _core(q, k, v, scale, return_lse, *, emulate: bool = False):
    ops = quantize(q, k, v, emulate=emulate)
    res = launch(ops, q.shape[1], k.shape[1], scale, q.dtype, return_lse, emulate=emulate)
    if return_lse:
        return res[0], res[1] + lse_shift(q, ops[-1], scale)
    return res


def make_fp8_attention(emulate: bool = False):
    """The attention contract through the FP8 kernel; ``emulate``: float32 operands on e4m3's grid
    and P rounded in the kernel (the interpreter tests)."""
    if not emulate and not hasattr(torch, "float8_e4m3fn"):
        raise RuntimeError("torch %s has no float8_e4m3fn" % torch.__version__)

    def core(q, k, v, scale, return_lse):
        if q.shape[-1] not in (64, 128):
            raise ValueError("cuda.fp8_triton takes head dims 64 and 128, not %d" % q.shape[-1])
        if q.dtype not in (torch.float16, torch.bfloat16) and not emulate:
            raise ValueError("cuda.fp8_triton takes float16/bfloat16 q, k, v, not %s" % q.dtype)
        return _core(q, k, v, scale, return_lse, emulate=emulate)

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        return per_sample_keys(core, q, k, v, scale, kv_lens, return_lse)

    attention.__name__ = "fp8_triton"
    return attention


__all__ = ["launch", "make_fp8_attention", "quantize"]
