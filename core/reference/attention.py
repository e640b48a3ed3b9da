"""Reference attention: explicit softmax(q·kᵀ·scale)·v, statistics in (at least) float32.

``math`` chunks the queries so the score matrix stays bounded (it runs at full Wan sizes on
a GPU, slowly) and returns the log-sum-exp. ``sdpa`` is torch's fused SDPA, whatever kernel
torch picks on the device; it has no LSE output.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..ops.checks import check_kv_lens

_SCORE_BUDGET_BYTES = 256 * 2**20


def _key_mask(kv_lens: Sequence[int], batch: int, skv: int, device) -> Optional[torch.Tensor]:
    """[B, 1, 1, Skv] bool, True where the key is valid (None: every key is)."""
    checked = check_kv_lens(kv_lens, batch, skv)
    if checked is None:
        return None
    lens = torch.tensor(list(checked), device=device)
    return (torch.arange(skv, device=device)[None, :] < lens[:, None])[:, None, None, :]


def attention_math(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    kv_lens: Optional[Sequence[int]] = None,
    return_lse: bool = False,
):
    b, sq, n, d = q.shape
    skv = k.shape[1]
    dt = torch.promote_types(q.dtype, torch.float32)
    qf = q.transpose(1, 2).to(dt)
    kf = k.transpose(1, 2).to(dt)
    vf = v.transpose(1, 2).to(dt)
    valid = _key_mask(kv_lens, b, skv, q.device)
    per_query = b * n * skv * torch.finfo(dt).bits // 8
    chunk = max(1, min(sq, _SCORE_BUDGET_BYTES // max(per_query, 1)))
    out = torch.empty(b, n, sq, vf.shape[-1], dtype=dt, device=q.device)
    lse = torch.empty(b, n, sq, dtype=dt, device=q.device) if return_lse else None
    for s0 in range(0, sq, chunk):
        s1 = min(sq, s0 + chunk)
        scores = torch.matmul(qf[:, :, s0:s1], kf.transpose(-1, -2)) * scale
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - row_lse[..., None])
        out[:, :, s0:s1] = torch.matmul(probs, vf)
        if lse is not None:
            lse[:, :, s0:s1] = row_lse
    out = out.transpose(1, 2).to(q.dtype)
    if return_lse:
        return out, lse.float()
    return out


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    kv_lens: Optional[Sequence[int]] = None,
    return_lse: bool = False,
):
    if return_lse:
        raise ValueError("reference.sdpa cannot return the log-sum-exp; use reference.math")
    mask = _key_mask(kv_lens, q.shape[0], k.shape[1], q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)
