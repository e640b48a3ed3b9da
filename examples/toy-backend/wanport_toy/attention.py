"""Attention as the flash-attention recurrence: keys in blocks, a running row max ``m`` and sum
``l``, the output rescaled as each block arrives. A different formulation of the same contract
(``wanport.ops.contracts.AttentionFn``) than the reference's one softmax over all keys."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from wanport.ops.checks import check_kv_lens


def make_online_softmax_attention(block: str = "256"):
    key_block = int(block)
    if key_block < 1:
        raise ValueError("WANPORT_TOY_KEY_BLOCK must be a positive integer, got %r" % block)

    def online_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                       kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        b, sq, n, _ = q.shape
        skv = k.shape[1]
        lens = check_kv_lens(kv_lens, b, skv)
        dt = torch.promote_types(q.dtype, torch.float32)
        qf, kf, vf = (t.transpose(1, 2).to(dt) for t in (q, k, v))  # [B, N, S, D]
        m = torch.full((b, n, sq, 1), float("-inf"), dtype=dt, device=q.device)
        l_sum = torch.zeros(b, n, sq, 1, dtype=dt, device=q.device)
        acc = torch.zeros(b, n, sq, vf.shape[-1], dtype=dt, device=q.device)
        for s0 in range(0, skv, key_block):
            s1 = min(skv, s0 + key_block)
            scores = torch.matmul(qf, kf[:, :, s0:s1].transpose(-1, -2)) * scale
            if lens is not None:
                keys = torch.arange(s0, s1, device=q.device)
                valid = keys[None, :] < torch.tensor(lens, device=q.device)[:, None]  # [B, block]
                scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
            m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # a block with no valid key
            p = torch.exp(scores - safe)
            correction = torch.exp(m - safe)
            l_sum = l_sum * correction + p.sum(dim=-1, keepdim=True)
            acc = acc * correction + torch.matmul(p, vf[:, :, s0:s1])
            m = m_new
        out = (acc / l_sum).transpose(1, 2).to(q.dtype)
        if return_lse:
            return out, (m + torch.log(l_sum)).squeeze(-1).float()
        return out

    return online_softmax
