"""Reference Linear + tanh GELU, in the official rounding order (Linear output, then GELU)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return F.gelu(F.linear(x.to(weight.dtype), weight, bias), approximate="tanh")
