"""Shared launch helpers for the row-wise Triton kernels (one program per token row)."""

from __future__ import annotations

import torch
import triton


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """[..., C] as a [rows, C] view with a unit inner stride (copies only if it must)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(1) == 1 else x2.contiguous()


def row_launch(c: int):
    """(BLOCK, num_warps) for a row of c elements."""
    block = triton.next_power_of_2(c)
    return block, (8 if block >= 4096 else 4 if block >= 1024 else 2)


def modulation_strides(t: torch.Tensor, x: torch.Tensor):
    """(batch stride, token stride) of a shift/scale/gate tensor [B, 1|S, C] against x [B, S, C];
    token stride 0 when one row serves every token of a sample."""
    if t.dim() != 3 or t.shape[-1] != x.shape[-1] or t.shape[0] not in (1, x.shape[0]) \
            or t.shape[1] not in (1, x.shape[1]) or t.stride(2) != 1:
        raise ValueError("modulation tensor %s does not broadcast against %s as [B, 1|S, C]"
                         % (tuple(t.shape), tuple(x.shape)))
    sb = t.stride(0) if t.shape[0] > 1 else 0
    ss = t.stride(1) if t.shape[1] > 1 else 0
    return sb, ss
