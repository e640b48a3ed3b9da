"""One Wan DiT block (docs/wan-model.md §2.3 step 6) and the output head (step 7)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CrossAttention, ImageCrossAttention, SelfAttention
from .layers import LayerNormParams, linear
from .quant_linear import QuantLinear, matmul_dtype, shared_kernels


def _modulation_chunks(table: torch.Tensor, e: torch.Tensor, n: int):
    """(table + e) split into n tensors of shape [B, 1 or L, C].

    table: [1, n, C]; e: [B, 1 or L, n or 1, C] (one timestep per sample, or per token).
    """
    summed = table.unsqueeze(0).to(e.dtype) + e  # [B, 1|L, n, C]
    return [c.squeeze(2) for c in summed.chunk(n, dim=2)]


class WanBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, image_context: bool = False):
        super().__init__()
        self.eps = eps
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = LayerNormParams(dim)  # cross-attention pre-norm (affine)
        self.cross_attn = (ImageCrossAttention if image_context else CrossAttention)(dim, num_heads, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ops,
        attn_dtype: torch.dtype,
        kv_lens: Optional[Sequence[int]] = None,
        context_img: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # e0: [B, 6, C] (Wan2.1) or [B, L, 6, C] (per-token timesteps)
        e0 = e0.unsqueeze(1) if e0.dim() == 3 else e0
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = _modulation_chunks(self.modulation, e0, 6)

        # norm outputs are rounded once to the dtype of the Linear that consumes them (what
        # autocast does to the official float32 result)
        mm = matmul_dtype(self.ffn[0])
        sa = self.self_attn
        h = _norm_modulate(ops, shared_kernels(sa.q, sa.k, sa.v), x, shift_sa, scale_sa, self.eps, mm)
        y = self.self_attn(h, cos, sin, ops, attn_dtype, kv_lens)
        x = ops.gated_residual.fn(x, y, gate_sa)  # promotes to the modulation dtype: the float32 residual stream

        y = self.cross_attn(ops.layer_norm.fn(x, self.norm3.weight, self.norm3.bias, self.eps, out_dtype=mm),
                            context, ops, attn_dtype, context_img)

        up, down = self.ffn[0], self.ffn[2]
        kernels = shared_kernels(up)
        if kernels is None:  # the residual add and the FFN's norm in one pass where the backend fuses them
            x, h = ops.add_layer_norm_modulate.fn(x, y, shift_ff, scale_ff, self.eps, out_dtype=mm)
        else:  # ... and the quantization of ffn.0's input with them
            x, h = kernels.add_layer_norm_modulate(x, y, shift_ff, scale_ff, self.eps, out_dtype=mm,
                                                   fallback=ops.layer_norm_modulate.fn)
        if isinstance(up, QuantLinear):  # GEMM, GELU, and the quantization ffn.2 needs, fused where the backend can
            a = up.kernels.linear_gelu(h, up.weight, up.weight_scale, up.bias, out_dtype=up.out_dtype,
                                       quantize_output=shared_kernels(up, down) is not None)
        elif up.__dict__.get("lora_side") is None:
            a = ops.linear_gelu.fn(h, up.weight, up.bias)
        else:  # an unmerged LoRA's side path joins before the GELU
            a = F.gelu(linear(h, up), approximate="tanh")
        y = linear(a, self.ffn[2])
        return ops.gated_residual.fn(x, y, gate_ff)


def _norm_modulate(ops, kernels, x, shift, scale, eps, mm):
    """The adaLN norm; quantized in the same pass when every Linear reading it is quantized."""
    if kernels is None:
        return ops.layer_norm_modulate.fn(x, shift, scale, eps, out_dtype=mm)
    return kernels.layer_norm_modulate(x, shift, scale, eps, out_dtype=mm, fallback=ops.layer_norm_modulate.fn)


class Head(nn.Module):
    """``head.modulation`` [1, 2, C] and ``head.head`` Linear(C, prod(patch) * out_dim)."""

    def __init__(self, dim: int, out_dim: int, patch_size, eps: float):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))
        self.head = nn.Linear(dim, out_dim * patch_size[0] * patch_size[1] * patch_size[2])

    def forward(self, x: torch.Tensor, e: torch.Tensor, ops) -> torch.Tensor:
        """e: [B, C] (one timestep per sample) or [B, L, C] (per token). The head uses e, not e0."""
        e = e.unsqueeze(1) if e.dim() == 2 else e
        shift, scale = _modulation_chunks(self.modulation, e.unsqueeze(2), 2)
        h = ops.layer_norm_modulate.fn(x, shift, scale, self.eps)
        return linear(h, self.head)
