"""Reference channel RMS norm of the Wan VAEs (``RMS_norm`` + the SiLU after it), as the official
module-by-module code rounds it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def channel_rms_norm(x: torch.Tensor, gamma: torch.Tensor, *, silu: bool = False) -> torch.Tensor:
    """``x / max(||x||_C, 1e-12) * sqrt(C) * gamma`` over dim 1, then SiLU when asked.

    Low-precision inputs are normalised in float32 and rounded back before the products (each
    product and the SiLU round again, as separate modules do). ``F.normalize(x, dim=1)`` spelled out:
    same math, and ~10x faster on the CPU than ``vector_norm``'s strided channel reduction."""
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    c = x.shape[1]
    y = (xf / xf.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)).to(x.dtype)
    y = y * math.sqrt(c) * gamma.reshape((c,) + (1,) * (x.dim() - 2))
    return F.silu(y) if silu else y
