"""RMSNorm through the vector norm and the gated residual through addcmul: the contracts'
(``wanport.ops.contracts``) semantics by other formulations than the reference's."""

from __future__ import annotations

import math
from typing import Optional

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *,
             out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) = sqrt(C) / sqrt(||x||^2 + C*eps), float32 statistics, rounded to
    x's dtype before the weight as the contract says."""
    c = x.shape[-1]
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
    y = (xf * (math.sqrt(c) / torch.sqrt(norm * norm + c * eps))).to(x.dtype) * weight
    return y if out_dtype is None else y.to(out_dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    dt = torch.promote_types(torch.promote_types(x.dtype, y.dtype), gate.dtype)
    return torch.addcmul(x.to(dt), y.to(dt), gate.to(dt))
