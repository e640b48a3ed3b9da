"""Op implementations the resolver builds from others: composed fused kinds, out_dtype casts."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def with_out_dtype(fn: Callable) -> Callable:
    """Give an implementation without ``out_dtype`` support the keyword, as a cast after it."""

    def wrapped(*args, out_dtype=None, **kwargs):
        y = fn(*args, **kwargs)
        return y if out_dtype is None or y.dtype == out_dtype else y.to(out_dtype)

    wrapped.__name__ = "%s+cast" % getattr(fn, "__name__", "op")
    return wrapped


def compose_qk_norm_rope(rms_norm: Callable, rotary: Callable) -> Callable:
    """``qk_norm_rope`` from a backend's own rms_norm and rotary (contract in ops/contracts.py)."""

    def qk_norm_rope(q, k, q_weight, k_weight, eps, cos, sin, num_heads, out_dtype):
        b, s, c = q.shape
        heads = (b, s, num_heads, c // num_heads)
        qn = rms_norm(q, q_weight, eps).view(heads)
        kn = rms_norm(k, k_weight, eps).view(heads)
        qr, kr = rotary(qn, kn, cos, sin)
        return qr.to(out_dtype), kr.to(out_dtype)

    return qk_norm_rope


def compose_add_layer_norm_modulate(layer_norm_modulate: Callable) -> Callable:
    """``add_layer_norm_modulate`` from a backend's own layer_norm_modulate: the sum in a new tensor
    (what ``x = x + y`` did before the kind existed), then the norm of it."""

    def add_layer_norm_modulate(x, y, shift, scale, eps, *, out_dtype=None):
        s = x + y
        return s, layer_norm_modulate(s, shift, scale, eps, out_dtype=out_dtype)

    return add_layer_norm_modulate


def channel_rms_norm_composed(x: torch.Tensor, gamma: torch.Tensor, *, silu: bool = False) -> torch.Tensor:
    """``channel_rms_norm`` in plain PyTorch ops, the arithmetic of a fused kernel: float32 (at least)
    from the input to the end, one rounding to x's dtype (contract in ops/contracts.py)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    c = x.shape[1]
    y = xf / xf.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    y = y * math.sqrt(c) * gamma.reshape((c,) + (1,) * (x.dim() - 2)).to(xf.dtype)
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


def compose_channel_rms_norm() -> Callable:
    return channel_rms_norm_composed


COMPOSERS = {"qk_norm_rope": compose_qk_norm_rope, "add_layer_norm_modulate": compose_add_layer_norm_modulate,
             "channel_rms_norm": compose_channel_rms_norm}
