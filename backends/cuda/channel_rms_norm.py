"""Triton: the Wan VAE's channel RMS norm (+SiLU) on channels-last activations.

With channels-last data the channel dim is the innermost contiguous one, so the norm over C is a
row-wise op over the last dim of the ``[N, T, H, W, C]`` view. Several rows per program (a VAE row
is short: 96-1024 channels), float32 from load to store, one rounding. Inputs whose channel dim is
not contiguous (NCDHW) go to the composed PyTorch form."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from wanport.ops.composites import channel_rms_norm_composed

#: longest channel row one program holds (the Wan2.2 decoder's widest stage is 1024)
MAX_C = 1024


@triton.jit
def _channel_rms_norm_kernel(x_ptr, g_ptr, out_ptr, n_rows, x_row_stride, scale,
                             C: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr, SILU: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    m = (rows[:, None] < n_rows) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * x_row_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
    norm = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)
    g = tl.load(g_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    y = x / norm[:, None] * scale * g[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


def _launch(c: int):
    """(BLOCK_C, ROWS, num_warps): about 4096 elements per program."""
    block_c = triton.next_power_of_2(c)
    rows = max(1, 4096 // block_c)
    return block_c, rows, 4


def channel_rms_norm(x: torch.Tensor, gamma: torch.Tensor, *, silu: bool = False) -> torch.Tensor:
    c = x.shape[1]
    moved = x.movedim(1, -1)  # [N, (T,) H, W, C]: a view; rows when C is the unit-stride dim
    if moved.stride(-1) != 1 or c > MAX_C or x.numel() == 0:
        return channel_rms_norm_composed(x, gamma, silu=silu)
    rows = moved.reshape(-1, c)  # a view for channels-last data (copies only if it must)
    out = torch.empty(moved.shape, device=x.device, dtype=x.dtype)
    block_c, per_prog, warps = _launch(c)
    n = rows.shape[0]
    _channel_rms_norm_kernel[(triton.cdiv(n, per_prog),)](
        rows, gamma.reshape(-1).contiguous(), out, n, rows.stride(0), math.sqrt(c),
        C=c, BLOCK_C=block_c, ROWS=per_prog, SILU=bool(silu), num_warps=warps)
    return out.movedim(-1, 1)  # x's shape, channels-last strides
