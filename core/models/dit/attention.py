"""Self- and cross-attention of a Wan block (official key names: q, k, v, o, norm_q, norm_k)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .layers import RMSNormParams, linear


class _Projections(nn.Module):
    """q, k, v, o Linears and the q/k RMSNorm weights over the full model dim."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.eps = eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNormParams(dim)
        self.norm_k = RMSNormParams(dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim)


class SelfAttention(_Projections):
    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ops,
        attn_dtype: torch.dtype,
        kv_lens: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        q, k = ops.qk_norm_rope.fn(linear(x, self.q), linear(x, self.k), self.norm_q.weight,
                                   self.norm_k.weight, self.eps, cos, sin, self.num_heads, attn_dtype)
        v = self._heads(linear(x, self.v))
        out = ops.self_attention.fn(q, k, v.to(attn_dtype), scale=self.head_dim ** -0.5, kv_lens=kv_lens)
        return linear(out.flatten(2), self.o)


class CrossAttention(_Projections):
    """Text cross-attention (t2v). The image-context variant (Wan2.1 i2v) extends this."""

    def forward(self, x: torch.Tensor, context: torch.Tensor, ops, attn_dtype: torch.dtype) -> torch.Tensor:
        q = self._heads(ops.rms_norm.fn(linear(x, self.q), self.norm_q.weight, self.eps, out_dtype=attn_dtype))
        k = self._heads(ops.rms_norm.fn(linear(context, self.k), self.norm_k.weight, self.eps,
                                        out_dtype=attn_dtype))
        v = self._heads(linear(context, self.v))
        out = ops.cross_attention.fn(q, k, v.to(attn_dtype), scale=self.head_dim ** -0.5)
        return linear(out.flatten(2), self.o)
