"""Reference LayerNorm·modulate: norm(x) * (1 + scale) + shift, Wan's adaLN."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, *,
                        out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    stat = torch.promote_types(x.dtype, torch.float32)
    normed = F.layer_norm(x.to(stat), (x.shape[-1],), None, None, eps).to(x.dtype)
    dt = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)
    y = normed.to(dt) * (1 + scale.to(dt)) + shift.to(dt)
    return y if out_dtype is None else y.to(out_dtype)
