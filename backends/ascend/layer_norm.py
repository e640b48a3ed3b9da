"""Affine LayerNorm (the cross-attention pre-norm) through ``torch_npu.npu_layer_norm_eval``.

``npu_layer_norm_eval(x, [C], weight, bias, eps=eps)`` returns the normalised tensor in x's dtype.
x, weight and bias are given one dtype (the promoted one; float32 under the official policy, where
this norm sees the float32 residual stream), the result is returned in x's dtype and then rounded
to ``out_dtype`` if one is given. weight and bias here are [C] (no batch dimension), so the
kernel's resize of weight/bias to the normalised shape is a no-op.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


def make_layer_norm(npu_layer_norm_eval: Callable):
    def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float, *,
                   out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        dt = x.dtype
        for t in (weight, bias):
            if t is not None:
                dt = torch.promote_types(dt, t.dtype)
        w = weight.to(dt) if weight is not None else None
        b = bias.to(dt) if bias is not None else None
        y = npu_layer_norm_eval(x.to(dt), [x.shape[-1]], w, b, eps=float(eps))
        target = out_dtype if out_dtype is not None else x.dtype
        return y if y.dtype == target else y.to(target)

    return layer_norm
