"""The reference quantized Linears: a float32 emulation of every scheme (quantize, dequantize,
matmul), the ground truth other backends' ``quant_linear`` implementations are checked against.

Runs on any device (pure PyTorch). Weights and activations are quantized by the reference
arithmetic of :mod:`wanport.ops.quant` and stored in the scheme's 8-bit dtype (so a quantized
tiny model really holds 8-bit weights); the matmul dequantizes both to float32, multiplies in
float32 and rounds the output once to ``out_dtype``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..ops.quant import Activation, QuantizedActivation, QuantKernels


class EmulatedKernels(QuantKernels):
    """One scheme, emulated in float32."""

    def linear(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: Optional[torch.Tensor], *, out_dtype: torch.dtype) -> torch.Tensor:
        qa = self.quantize_activation(x)
        a = qa.dequantize()
        w = weight.float() * weight_scale.float()
        y = F.linear(a, w, None if bias is None else bias.float())
        return y.to(out_dtype)


def make(scheme: str) -> EmulatedKernels:
    return EmulatedKernels(scheme)


__all__ = ["EmulatedKernels", "make"]
