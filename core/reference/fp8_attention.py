"""Float32 emulations of FP8 attention, the ground truth of the schemes in
``wanport.ops.attention_quant``:

- ``quant.attention: fp8`` (:func:`fp8_attention`): smoothed K, e4m3 Q/K per 128-row block, e4m3 V
  per channel, the online softmax over 128-key blocks with P rounded to e4m3 (times 448) before
  ``P V``;
- ``quant.attention: fp8_tensor`` (:func:`fp8_tensor_attention`): K and V smoothed, e4m3 Q, K, V with
  one scale per (sample, head), the same P rounding, the output rounded to e4m3 with V's scale and
  V's mean added back (no log-sum-exp).

Every rounding of the scheme is done on e4m3's grid in float32 (``round_to_format``), so this runs
wherever torch does, without an fp8 dtype; the arithmetic between roundings is float32.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..ops.attention_quant import (
    BLOCK,
    P_SCALE,
    head_means,
    lse_shift,
    output_scales,
    per_sample_keys,
    quantize_heads,
    quantize_qkv,
    smooth_heads,
    to_e4m3_grid,
)
from ..ops.quant import FP8_E4M3


def _online_softmax_pv(qv, k8, v8t, skv, row_scale, key_scale):
    """The key loop both schemes share, over the first ``skv`` keys: ``qv`` [B, N, Sq, D], ``k8``
    [B, N, Skv(+pad), D] and ``v8t`` [B, N, D, Skv(+pad)] float32 on e4m3's grid; the score of a row and a key block is
    ``(qv . k8) * row_scale[row] * key_scale(block j)``; P per 128-key block times 448 rounded to
    e4m3. Returns (acc [B, N, Sq, D], m, l [B, N, Sq])."""
    b, n, sq, d = qv.shape
    m = torch.full((b, n, sq), float("-inf"), dtype=torch.float32, device=qv.device)
    l = torch.zeros((b, n, sq), dtype=torch.float32, device=qv.device)
    acc = torch.zeros((b, n, sq, d), dtype=torch.float32, device=qv.device)
    for j, j0 in enumerate(range(0, skv, BLOCK)):
        j1 = min(skv, j0 + BLOCK)
        s = torch.matmul(qv, k8[:, :, j0:j1].transpose(-1, -2))
        s = s * row_scale[..., None] * key_scale(j)
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = l * alpha + p.sum(dim=-1)
        p8 = to_e4m3_grid(p * P_SCALE)
        acc = acc * alpha[..., None] + torch.matmul(p8, v8t[:, :, :, j0:j1].transpose(-1, -2))
        m = m_new
    return acc, m, l


def _core(q, k, v, scale, return_lse):
    sq = q.shape[1]
    q8, s_q, k8, s_k, v8t, s_v, k_mean = quantize_qkv(q, k, v, to_e4m3_grid)
    # per query row: its block's scale times the softmax scale
    row_scale = s_q.repeat_interleave(BLOCK, dim=2)[:, :, :sq] * scale  # [B, N, Sq]
    acc, m, l = _online_softmax_pv(q8[:, :, :sq], k8, v8t, k.shape[1], row_scale, lambda j: s_k[:, :, j, None, None])
    out = acc * (s_v[:, :, None, :] / P_SCALE) / l[..., None]
    out = out.transpose(1, 2).to(q.dtype)
    if return_lse:
        return out, m + torch.log(l) + lse_shift(q, k_mean, scale)
    return out


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                  kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
    """The attention contract (``wanport.ops.contracts.AttentionFn``) through the FP8 scheme."""
    return per_sample_keys(_core, q, k, v, scale, kv_lens, return_lse)


def _tensor_core(q, k, v, scale, return_lse):
    if return_lse:
        raise ValueError("quant.attention: fp8_tensor has no log-sum-exp (ring attention needs one: use "
                         "quant.attention: fp8 or parallel.ring: 1)")
    sq = q.shape[1]
    q8, s_q = quantize_heads(q, to_e4m3_grid)
    k8, s_k = quantize_heads(smooth_heads(k), to_e4m3_grid)
    v_mean = head_means(v)  # [B, 1, N, D]: added back after the rounding of O
    v8, s_v = quantize_heads(v.float() - v_mean, to_e4m3_grid)
    row_scale = (s_q * scale)[:, :, None].expand(-1, -1, sq)  # [B, N, Sq]
    acc, _, l = _online_softmax_pv(q8.transpose(1, 2), k8.transpose(1, 2), v8.permute(0, 2, 3, 1),
                                   k.shape[1], row_scale, lambda j: s_k[:, :, None, None])
    o = acc * (s_v[:, :, None, None] / P_SCALE) / l[..., None]  # [B, N, Sq, D] float32
    o_mult, o_desc = output_scales(s_v)  # V's own scale, widened for P's rounding
    o8 = to_e4m3_grid((o * o_mult[:, :, None, None]).clamp(-FP8_E4M3.max, FP8_E4M3.max))
    out = o8 * o_desc[:, :, None, None] + v_mean.transpose(1, 2)
    return out.transpose(1, 2).to(q.dtype)


def fp8_tensor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                         kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
    """The attention contract through the ``fp8_tensor`` scheme (no log-sum-exp: ``return_lse``
    raises). Each sample's scales see only its valid keys."""
    return per_sample_keys(_tensor_core, q, k, v, scale, kv_lens, return_lse)


__all__ = ["fp8_attention", "fp8_tensor_attention"]
