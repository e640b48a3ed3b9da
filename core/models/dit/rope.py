"""Wan's 3D rotary tables as real cos/sin, built once per video grid (docs/wan-model.md §2.4).

The head dim D is split into three axes (frame, height, width) of real sizes
``D - 4*(D//6)``, ``2*(D//6)``, ``2*(D//6)`` (44/42/42 for D=128). Each axis has its own
frequency ladder ``w_j = 10000**(-2j/n_axis)`` and positions start at 0. Angles are computed
in float64 on the host (as the official code does), then rounded once to float32.
"""

from __future__ import annotations

from typing import Tuple

import torch

MAX_POSITIONS = 1024  # the official tables cover positions 0..1023 on every axis
THETA = 10000.0


def axis_dims(head_dim: int) -> Tuple[int, int, int]:
    third = head_dim // 6
    return head_dim - 4 * third, 2 * third, 2 * third


def _axis_angles(positions: torch.Tensor, n_axis: int) -> torch.Tensor:
    j = torch.arange(0, n_axis, 2, dtype=torch.float64)
    inv = 1.0 / torch.pow(THETA, j / n_axis)
    return torch.outer(positions.to(torch.float64), inv)  # [P, n_axis/2]


def rope_angles(grid: Tuple[int, int, int], head_dim: int) -> torch.Tensor:
    """[F*H*W, D/2] float64 angles for tokens in row-major (f, h, w) order."""
    f, h, w = grid
    if max(grid) > MAX_POSITIONS:
        raise ValueError("video grid %s exceeds the %d rotary positions Wan was trained with"
                         % (tuple(grid), MAX_POSITIONS))
    dt, dh, dw = axis_dims(head_dim)
    af = _axis_angles(torch.arange(f), dt)
    ah = _axis_angles(torch.arange(h), dh)
    aw = _axis_angles(torch.arange(w), dw)
    angles = torch.cat(
        [
            af[:, None, None, :].expand(f, h, w, -1),
            ah[None, :, None, :].expand(f, h, w, -1),
            aw[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    )
    return angles.reshape(f * h * w, head_dim // 2)


def rope_tables(
    grid: Tuple[int, int, int], head_dim: int, total_len: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [S, D] float32 on the host, angles repeated for both pair members.

    ``total_len`` > F*H*W appends identity rows (cos 1, sin 0) for padding tokens.
    """
    angles = rope_angles(grid, head_dim)
    cos = torch.cos(angles).float().repeat_interleave(2, dim=-1)
    sin = torch.sin(angles).float().repeat_interleave(2, dim=-1)
    pad = total_len - cos.shape[0]
    if pad > 0:
        cos = torch.cat([cos, torch.ones(pad, head_dim)], dim=0)
        sin = torch.cat([sin, torch.zeros(pad, head_dim)], dim=0)
    return cos, sin
