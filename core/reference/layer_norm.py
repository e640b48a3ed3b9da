"""Reference LayerNorm (optional affine), statistics in float32, output in x's dtype."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def layer_norm(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float, *,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    dt = torch.promote_types(x.dtype, torch.float32)
    w = weight.to(dt) if weight is not None else None
    b = bias.to(dt) if bias is not None else None
    y = F.layer_norm(x.to(dt), (x.shape[-1],), w, b, eps).to(x.dtype)
    return y if out_dtype is None else y.to(out_dtype)
