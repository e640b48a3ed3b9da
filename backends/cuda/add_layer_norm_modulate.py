"""Triton: the cross-attention's residual add fused with the FFN's adaLN norm (``add_layer_norm_modulate``):
one pass reads x and y, writes x + y and norm(x + y) * (1 + scale) + shift. The kernel is
``layer_norm_modulate``'s with its ``ADD`` switch on."""

from __future__ import annotations

from typing import Optional

import torch

from ._rows import modulation_strides, row_launch, rows_view
from .layer_norm_modulate import _ln_modulate_kernel


def add_layer_norm_modulate(x: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                            *, out_dtype: Optional[torch.dtype] = None):
    """(x + y, norm(x + y) * (1 + scale) + shift); the sum goes into x's storage when x is contiguous
    and already has the sum's dtype."""
    sum_dtype = torch.promote_types(x.dtype, y.dtype)
    if out_dtype is None:
        out_dtype = torch.promote_types(torch.promote_types(sum_dtype, scale.dtype), shift.dtype)
    if x.shape != y.shape:
        raise ValueError("add_layer_norm_modulate: x %s and y %s differ in shape" % (tuple(x.shape), tuple(y.shape)))
    b, s, c = x.shape
    x2 = rows_view(x)
    y = y if y.is_contiguous() else y.contiguous()
    in_place = x.is_contiguous() and x.dtype == sum_dtype
    total = x if in_place else torch.empty(b, s, c, device=x.device, dtype=sum_dtype)
    sh_b, sh_s = modulation_strides(shift, x)
    sc_b, sc_s = modulation_strides(scale, x)
    out = torch.empty(b, s, c, device=x.device, dtype=out_dtype)
    block, warps = row_launch(c)
    _ln_modulate_kernel[(b * s,)](x2, y, total, shift, scale, out, s, x2.stride(0), sh_b, sh_s, sc_b, sc_s, eps,
                                  C=c, BLOCK=block, ADD=True, num_warps=warps)
    return total, out
