"""Float32 emulation of FP8 attention (``quant.attention: fp8``): the ground truth of the scheme in
``wanport.ops.attention_quant`` -- smoothed K, e4m3 Q/K per 128-row block, e4m3 V per channel, the
online softmax over 128-key blocks with P rounded to e4m3 (times 448) before ``P V``.

Every rounding of the scheme is done on e4m3's grid in float32 (``round_to_format``), so this runs
wherever torch does, without an fp8 dtype; the arithmetic between roundings is float32.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..ops.attention_quant import BLOCK, P_SCALE, lse_shift, per_sample_keys, quantize_qkv, to_e4m3_grid


def _core(q, k, v, scale, return_lse):
    b, sq, n, d = q.shape
    skv = k.shape[1]
    q8, s_q, k8, s_k, v8t, s_v, k_mean = quantize_qkv(q, k, v, to_e4m3_grid)
    # per query row: its block's scale times the softmax scale
    row_scale = s_q.repeat_interleave(BLOCK, dim=2)[:, :, :sq] * scale  # [B, N, Sq]
    qv = q8[:, :, :sq]
    m = torch.full((b, n, sq), float("-inf"), dtype=torch.float32, device=q.device)
    l = torch.zeros((b, n, sq), dtype=torch.float32, device=q.device)
    acc = torch.zeros((b, n, sq, d), dtype=torch.float32, device=q.device)
    for j, j0 in enumerate(range(0, skv, BLOCK)):
        j1 = min(skv, j0 + BLOCK)
        s = torch.matmul(qv, k8[:, :, j0:j1].transpose(-1, -2))
        s = s * row_scale[..., None] * s_k[:, :, j, None, None]
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = l * alpha + p.sum(dim=-1)
        p8 = to_e4m3_grid(p * P_SCALE)
        acc = acc * alpha[..., None] + torch.matmul(p8, v8t[:, :, :, j0:j1].transpose(-1, -2))
        m = m_new
    out = acc * (s_v[:, :, None, :] / P_SCALE) / l[..., None]
    out = out.transpose(1, 2).to(q.dtype)
    if return_lse:
        return out, m + torch.log(l) + lse_shift(q, k_mean, scale)
    return out


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                  kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
    """The attention contract (``wanport.ops.contracts.AttentionFn``) through the FP8 scheme."""
    return per_sample_keys(_core, q, k, v, scale, kv_lens, return_lse)


__all__ = ["fp8_attention"]
