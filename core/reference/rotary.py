"""Reference rotary embedding: interleaved pairs rotated by real cos/sin tables."""

from __future__ import annotations

import torch

from ..ops.checks import check_rotary_tables


def _rotate(x: torch.Tensor, cos_half: torch.Tensor, sin_half: torch.Tensor) -> torch.Tensor:
    dt = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(dt).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c = cos_half.to(dt)
    s = sin_half.to(dt)
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    check_rotary_tables(cos, sin, q.shape[1], q.shape[-1])
    # [S, D] repeated-interleaved -> one value per pair, broadcast over batch and heads
    cos_half = cos[:, 0::2][None, :, None, :]
    sin_half = sin[:, 0::2][None, :, None, :]
    return _rotate(q, cos_half, sin_half), _rotate(k, cos_half, sin_half)
