"""FP8 e4m3 Linears on NVIDIA GPUs: ``torch._scaled_mm`` (row-wise scales on sm90+, one scale per
tensor as the fallback), activations quantized by the Triton row kernels of :mod:`.quant_rows`
in the pass that produces them (the adaLN norm, the FFN's GELU) or in one pass of their own.

Layout (wanport.ops.quant): weight [N, K] float8_e4m3fn row-major, so ``weight.t()`` is the
column-major [K, N] operand ``_scaled_mm`` wants; weight_scale float32 [N, 1] -> scale_b [1, N]
(row-wise) or a scalar (tensor-wise); activation scale float32 [M, 1] (row-wise) or a scalar.
Shapes the FP8 GEMM cannot take (K or N not a multiple of 16) run as the dequantized float32
matmul of the reference emulation, on the device.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from wanport.ops.quant import Activation, QuantizedActivation, QuantKernels

FP8_MAX = 448.0


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """``torch._scaled_mm`` across torch versions (<= 2.3 returned (out, amax))."""
    out = torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=out_dtype)
    return out[0] if isinstance(out, tuple) else out


def gemm_shape_ok(k: int, n: int) -> bool:
    return k % 16 == 0 and n % 16 == 0


class Fp8Kernels(QuantKernels):
    """fp8_rowwise or fp8_tensor."""

    def __init__(self, scheme: str):
        super().__init__(scheme)
        self.rowwise = self.scheme.activation_granularity == "token"

    # -- activations
    def quantize_activation(self, x: Activation) -> QuantizedActivation:
        if isinstance(x, QuantizedActivation):
            return super().quantize_activation(x)  # checks the scheme
        if self.rowwise:
            from .quant_rows import row_quant_fp8

            q, s = row_quant_fp8(x)
            return QuantizedActivation(q, s, x.dtype, self.scheme.name)
        # one dynamic scale per call (no host sync: the scale stays a device tensor)
        scale = (x.detach().abs().amax().float().clamp(min=1e-12) / FP8_MAX).reshape([1] * x.dim())
        q = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return QuantizedActivation(q, scale, x.dtype, self.scheme.name)

    def layer_norm_modulate(self, x, shift, scale, eps, *, out_dtype, fallback) -> QuantizedActivation:
        if not self.rowwise or x.dim() != 3 or out_dtype not in (torch.bfloat16, torch.float32):
            return super().layer_norm_modulate(x, shift, scale, eps, out_dtype=out_dtype, fallback=fallback)
        from .quant_rows import ln_modulate_quant_fp8

        q, s = ln_modulate_quant_fp8(x, shift, scale, eps, out_dtype)
        return QuantizedActivation(q, s, out_dtype, self.scheme.name)

    def add_layer_norm_modulate(self, x, y, shift, scale, eps, *, out_dtype, fallback):
        if not self.rowwise or x.dim() != 3 or out_dtype not in (torch.bfloat16, torch.float32):
            return super().add_layer_norm_modulate(x, y, shift, scale, eps, out_dtype=out_dtype, fallback=fallback)
        from .quant_rows import ln_modulate_quant_fp8

        total, q, s = ln_modulate_quant_fp8(x, shift, scale, eps, out_dtype, y=y)
        return total, QuantizedActivation(q, s, out_dtype, self.scheme.name)

    # -- matmuls
    def linear(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: Optional[torch.Tensor], *, out_dtype: torch.dtype) -> torch.Tensor:
        n, k = weight.shape
        if not gemm_shape_ok(k, n):
            return self._dequantized(x, weight, weight_scale, bias, out_dtype)
        qa = self.quantize_activation(x)
        lead = qa.data.shape[:-1]
        a = qa.data.reshape(-1, k)
        if not a.is_contiguous():
            a = a.contiguous()
        if self.rowwise:
            sa = qa.scale.reshape(-1, 1)
            sb = weight_scale.reshape(1, -1) if weight_scale.numel() > 1 else weight_scale.reshape(1, 1).expand(1, n)
        else:
            sa = qa.scale.reshape(())
            sb = weight_scale.reshape(())
        b = None if bias is None else bias.to(out_dtype)
        y = scaled_mm(a, weight.t(), sa.float(), sb.float().contiguous(), b, out_dtype)
        return y.view(*lead, n)

    def linear_gelu(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
                    bias: Optional[torch.Tensor], *, out_dtype: torch.dtype,
                    quantize_output: bool = False) -> Activation:
        y = self.linear(x, weight, weight_scale, bias, out_dtype=out_dtype)  # bias in the GEMM epilogue
        if quantize_output and self.rowwise and y.dtype in (torch.bfloat16, torch.float16, torch.float32):
            from .quant_rows import gelu_quant_fp8

            q, s = gelu_quant_fp8(y)  # GELU + quantization in one pass over the widest activation
            return QuantizedActivation(q, s, y.dtype, self.scheme.name)
        a = F.gelu(y, approximate="tanh")
        return self.quantize_activation(a) if quantize_output else a

    def _dequantized(self, x, weight, weight_scale, bias, out_dtype):
        a = super().quantize_activation(x).dequantize()
        w = weight.float() * weight_scale.float()
        return F.linear(a, w, None if bias is None else bias.float()).to(out_dtype)


def make_fp8(scheme: str) -> Fp8Kernels:
    return Fp8Kernels(scheme)
