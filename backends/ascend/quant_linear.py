"""Quantized DiT Linears on Ascend (Atlas A2): the ``int8_w8a8`` and ``int8_w8a16`` schemes of
docs/quantization.md on torch_npu's quantisation kernels. Atlas A2 has no FP8 matmul, so the FP8
schemes are not offered here.

Weights keep the canonical layout of ``wanport.ops.quant`` — int8 ``[N, K]`` row-major (made
contiguous at load) with a float32 ``[N, 1]`` per-channel scale — because both kernels take the
weight as ``(K, N)`` and accept the transposed view of a contiguous ``[N, K]`` tensor
(``weight.t()``: no copy; the layout torch_npu's docs recommend for per-channel W8A16). Other
strided views are not used.

``int8_w8a8`` — ``npu_dynamic_quant(x, dst_type=torch.int8)`` quantizes each token (row) of a
bf16/fp16 activation: ``s = rowmax|x| / 127``, ``q = round(x / s)`` (the reference arithmetic), then
``npu_quant_matmul(q2d, weight.t(), weight_scale[N] fp32, pertoken_scale=s[M] fp32, bias=b,
output_dtype=bf16|fp16)`` (b: bf16 as stored for a bf16 output, else float32) computes
``(q @ wᵀ) · w_scale · s + b`` with an exact integer accumulator and one rounding of the output.
x is flattened to ``[M, K]`` (pertoken_scale is 1-D ``(M,)``). A float32 bias and scale with a
bfloat16 output need op-plugin >= 7.0.0 (the 6.0.rc2
table demanded bfloat16 scales); ``dst_type`` exists from the same release, which is how the
plugin tells the two apart (``requires("npu_dynamic_quant", "dst_type")``). The kernel has no
float32 output: ``out_dtype`` float32 is the bf16 (fp16) result cast up.

``int8_w8a16`` — ``npu_weight_quant_batchmatmul(x2d, weight.t(), antiquant_scale, bias=b)``:
activations stay in their bf16/fp16 dtype, the kernel dequantizes the weight on the fly.
``antiquant_scale`` must have x's dtype (the float32 scale is rounded to it: a relative 2^-9
change in bf16) and the bias must be float32 for bf16 x and float16 for fp16 x. Same on every
torch_npu era.

Neither kernel is fused with the adaLN norm or the GELU here: ``layer_norm_modulate`` and
``linear_gelu`` are the base class's compositions around these two methods.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from wanport.ops.quant import Activation, QuantizedActivation, QuantKernels

_HALF = (torch.float16, torch.bfloat16)


def _kernel_dtype(dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    """The half dtype the kernels compute in: the activation's, else the requested output's, else bf16."""
    if dtype in _HALF:
        return dtype
    return out_dtype if out_dtype in _HALF else torch.bfloat16


class AscendW8A8(QuantKernels):
    """int8_w8a8: per-token dynamic INT8 activations x per-channel INT8 weights."""

    def __init__(self, npu_dynamic_quant: Callable, npu_quant_matmul: Callable) -> None:
        super().__init__("int8_w8a8")
        self._dynamic_quant = npu_dynamic_quant
        self._quant_matmul = npu_quant_matmul

    def quantize_weight(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        q, s = super().quantize_weight(w)
        return q.contiguous(), s.contiguous()

    def quantize_activation(self, x: Activation) -> QuantizedActivation:
        if isinstance(x, QuantizedActivation) or x.dtype not in _HALF:
            # already quantized (checked for the scheme), or float32: the reference arithmetic (torch
            # ops on the device; npu_dynamic_quant takes float16/bfloat16 only)
            return super().quantize_activation(x)
        q, s = self._dynamic_quant(x, dst_type=torch.int8)
        return QuantizedActivation(q, s.unsqueeze(-1), x.dtype, self.scheme.name)

    def linear(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: Optional[torch.Tensor], *, out_dtype: torch.dtype) -> torch.Tensor:
        qa = self.quantize_activation(x)
        lead, k = qa.data.shape[:-1], qa.data.shape[-1]
        n = weight.shape[0]
        x1 = qa.data.reshape(-1, k).contiguous()
        tok = qa.scale.reshape(-1).float().contiguous()
        od = _kernel_dtype(qa.dtype, out_dtype)
        b = None
        if bias is not None:  # a bf16 bias goes as it is with a bf16 output; else float32 (both tables allow it)
            b = bias.reshape(-1) if bias.dtype == od == torch.bfloat16 else bias.reshape(-1).float()
        y = self._quant_matmul(x1, weight.t(), weight_scale.reshape(-1).float(), pertoken_scale=tok, bias=b,
                               output_dtype=od)
        y = y.reshape(*lead, n)
        return y if y.dtype == out_dtype else y.to(out_dtype)


class AscendW8A16(QuantKernels):
    """int8_w8a16: per-channel INT8 weights dequantized inside the matmul, activations in bf16/fp16."""

    def __init__(self, npu_weight_quant_batchmatmul: Callable) -> None:
        super().__init__("int8_w8a16")
        self._wqbmm = npu_weight_quant_batchmatmul

    def quantize_weight(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        q, s = super().quantize_weight(w)
        return q.contiguous(), s.contiguous()

    def linear(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: Optional[torch.Tensor], *, out_dtype: torch.dtype) -> torch.Tensor:
        a = self.quantize_activation(x).data  # weight-only: the activation itself
        dt = _kernel_dtype(a.dtype, out_dtype)
        lead, k = a.shape[:-1], a.shape[-1]
        n = weight.shape[0]
        x2 = a.reshape(-1, k).to(dt).contiguous()
        b = None
        if bias is not None:
            b = bias.reshape(-1).to(torch.float32 if dt == torch.bfloat16 else torch.float16).contiguous()
        y = self._wqbmm(x2, weight.t(), weight_scale.reshape(-1).to(dt), bias=b)
        y = y.reshape(*lead, n)
        return y if y.dtype == out_dtype else y.to(out_dtype)


def make_w8a8(torch_npu) -> AscendW8A8:
    return AscendW8A8(torch_npu.npu_dynamic_quant, torch_npu.npu_quant_matmul)


def make_w8a16(torch_npu) -> AscendW8A16:
    return AscendW8A16(torch_npu.npu_weight_quant_batchmatmul)
