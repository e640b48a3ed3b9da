"""Reference RMSNorm, as Wan's ``WanRMSNorm`` computes it."""

from __future__ import annotations

from typing import Optional

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *,
             out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype) * weight
    return y if out_dtype is None else y.to(out_dtype)
