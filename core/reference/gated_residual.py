"""Reference gated residual add: x + y * gate, in the promoted dtype."""

from __future__ import annotations

import torch


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x + y * gate
