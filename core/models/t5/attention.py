"""UMT5 self-attention with the official numerics (docs/wan-model.md §4.1, §7.3).

Official (``wan/modules/t5.py``), per layer, in the compute dtype ``dt``::

    bias   = zeros(B, H, Lq, Lk, dt) + pos_bias           # relative-position bias
    bias[key is padding] = finfo(dt).min                   # additive mask
    scores = q @ k^T + bias                                # no 1/sqrt(d) scaling
    p      = softmax(scores.float(), -1).to(dt)            # softmax in float32
    out    = p @ v

transformers >= 5 routes UMT5 attention through ``ALL_ATTENTION_FUNCTIONS``; its eager
function softmaxes in the compute dtype and the default may be SDPA. We register
:func:`wan_t5_attention` under :data:`WANPORT_T5_ATTENTION` (plus a mask builder that hands the
2-D padding mask through unchanged) and select it with the config's attention implementation.
Older transformers compute UMT5 attention inline with an fp32 softmax already; there we keep
``"eager"``. Nothing here runs at import time.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

WANPORT_T5_ATTENTION = "wanport_t5_fp32_softmax"

_selected: Optional[str] = None
_mask_hooked = False


def _key_bias(attention_mask: Optional[torch.Tensor], bias: torch.Tensor) -> torch.Tensor:
    """Fold the mask into ``bias`` [B, H, Lq, Lk] the official way (masked -> finfo.min)."""
    if attention_mask is None:
        return bias
    m = attention_mask.to(bias.device)
    b = bias.shape[0]
    if m.dim() == 4 and m.is_floating_point():
        # an already additive mask (0 keep, very negative drop), as transformers defines 4-D float masks
        return bias + m.to(bias.dtype)
    if m.dim() == 2:  # [B, Lk] padding mask (1/True = real token)
        m = m.view(b, 1, 1, -1)
    elif m.dim() == 3:  # [B, Lq, Lk]
        m = m.unsqueeze(1)
    keep = m if m.dtype == torch.bool else (m != 0)
    return bias.masked_fill(~keep, torch.finfo(bias.dtype).min)


def wan_t5_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    position_bias: Optional[torch.Tensor] = None,
    **kwargs,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``ALL_ATTENTION_FUNCTIONS`` signature: q, k, v [B, H, L, d]; returns ([B, Lq, H, d], probs)."""
    dtype = query.dtype
    b, h, lq = query.shape[0], query.shape[1], query.shape[2]
    lk = key.shape[-2]
    bias = query.new_zeros(b, h, lq, lk)
    if position_bias is not None:
        bias = bias + position_bias.to(dtype)
    bias = _key_bias(attention_mask, bias)
    scores = torch.matmul(query, key.transpose(-1, -2))
    if scaling is not None and scaling != 1.0:  # UMT5 passes 1.0 (T5 does not scale)
        scores = scores * scaling
    scores = scores + bias
    probs = torch.softmax(scores.float(), dim=-1).to(dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), probs


def wan_t5_mask(*args, **kwargs) -> Optional[torch.Tensor]:
    """Mask builder for :data:`WANPORT_T5_ATTENTION`: the padding mask as given ([B, Lk] bool),
    or None; :func:`wan_t5_attention` applies it like the official code."""
    return kwargs.get("attention_mask")


def _umt5_uses_attention_interface() -> bool:
    try:
        from transformers.models.umt5 import modeling_umt5
    except Exception:  # pragma: no cover - transformers without UMT5
        return False
    return hasattr(modeling_umt5, "ALL_ATTENTION_FUNCTIONS")


def select_attention_implementation() -> str:
    """Register the official-numerics attention (once) and return the name to put into the
    UMT5 config's attention implementation; ``"eager"`` on transformers whose UMT5 attention
    is inline (those already softmax in float32)."""
    global _selected, _mask_hooked
    if _selected is not None:
        return _selected
    name = "eager"
    if _umt5_uses_attention_interface():
        try:
            from transformers import AttentionInterface

            AttentionInterface.register(WANPORT_T5_ATTENTION, wan_t5_attention)
            try:
                from transformers.masking_utils import AttentionMaskInterface

                AttentionMaskInterface.register(WANPORT_T5_ATTENTION, wan_t5_mask)
                _mask_hooked = True
            except Exception:  # pragma: no cover - the caller then passes a ready 4-D mask
                _mask_hooked = False
            name = WANPORT_T5_ATTENTION
        except Exception:  # pragma: no cover - an interface we do not know; stay on eager
            name = "eager"
    _selected = name
    return name


def mask_is_hooked() -> bool:
    """True when transformers hands our attention the raw padding mask through
    :func:`wan_t5_mask`; otherwise the caller should pass a ready 4-D additive mask
    (transformers returns 4-D masks unchanged)."""
    return _mask_hooked


__all__ = ["mask_is_hooked", "WANPORT_T5_ATTENTION", "wan_t5_attention", "wan_t5_mask", "select_attention_implementation"]
