"""LayerNorm·modulate (adaLN) through ``torch_npu.npu_layer_norm_eval`` with weight = 1 + scale,
bias = shift — the fusion MindIE's Wan2.1 uses.

The kernel normalises over the last dim and applies one [C] weight and bias to every row: it clones
weight/bias and ``resize_``s them to the normalised shape, so a [B, 1, C] modulation with B > 1 would
silently use the first sample's values for all samples. This implementation is therefore declared
for one modulation row only (``batch_gt1=False``, ``per_token_modulation=False``; the resolver picks
the reference ``F.layer_norm`` implementation otherwise), passes the row explicitly as [C] rather
than relying on the resize, and — should it be handed more rows anyway — computes those calls with
the reference implementation instead of returning wrong numbers.

Numerics: the kernel runs in promote(x, scale, shift) (float32 under the official policy) on x
converted exactly; it skips the reference's rounding of norm(x) to x's dtype before the modulation
(within the declared tolerance).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from wanport.reference.layer_norm_modulate import layer_norm_modulate as _reference


def make_layer_norm_modulate(npu_layer_norm_eval: Callable):
    def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, *,
                            out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        c = x.shape[-1]
        if shift.numel() != c or scale.numel() != c:  # per sample (B > 1) or per token: not one row
            return _reference(x, shift, scale, eps, out_dtype=out_dtype)
        dt = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)
        weight = (1 + scale.to(dt)).reshape(c)
        bias = shift.to(dt).reshape(c)
        y = npu_layer_norm_eval(x.to(dt), [c], weight, bias, eps=float(eps))
        return y if out_dtype is None or y.dtype == out_dtype else y.to(out_dtype)

    return layer_norm_modulate
