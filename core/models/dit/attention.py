"""Self- and cross-attention of a Wan block (official key names: q, k, v, o, norm_q, norm_k)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .layers import RMSNormParams, linear
from .quant_linear import matmul_dtype, shared_input


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
        x = shared_input(x, self.q, self.k, self.v)  # one quantization for the three GEMMs
        q, k = ops.qk_norm_rope.fn(linear(x, self.q), linear(x, self.k), self.norm_q.weight,
                                   self.norm_k.weight, self.eps, cos, sin, self.num_heads, attn_dtype)
        attention = ops.self_attention.fn
        scale = self.head_dim ** -0.5
        if getattr(attention, "overlaps", False):  # sequence parallel: q/k travel while v is projected
            pending = attention.exchange_qk(q, k)
            v = self._heads(linear(x, self.v))
            out = attention.attend(pending, v.to(attn_dtype), scale=scale, kv_lens=kv_lens)
        else:
            v = self._heads(linear(x, self.v))
            out = attention(q, k, v.to(attn_dtype), scale=scale, kv_lens=kv_lens)
        return linear(out.flatten(2), self.o)


class CrossAttention(_Projections):
    """Text cross-attention (t2v, ti2v, Wan2.2 i2v): all ``text_len`` context rows, no mask."""

    def forward(self, x: torch.Tensor, context: torch.Tensor, ops, attn_dtype: torch.dtype,
                context_img: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = shared_input(context, self.k, self.v)
        q = self._heads(ops.rms_norm.fn(linear(x, self.q), self.norm_q.weight, self.eps, out_dtype=attn_dtype))
        k = self._heads(ops.rms_norm.fn(linear(context, self.k), self.norm_k.weight, self.eps,
                                        out_dtype=attn_dtype))
        v = self._heads(linear(context, self.v))
        out = ops.cross_attention.fn(q, k, v.to(attn_dtype), scale=self.head_dim ** -0.5)
        return linear(out.flatten(2), self.o)


class ImageCrossAttention(CrossAttention):
    """Wan2.1 i2v cross-attention (docs/wan-model.md §2.4): the text attention plus an attention of the same
    queries over the image-context tokens, with their own ``k_img``/``v_img`` projections and
    ``norm_k_img``. The two outputs are summed before the shared output projection ``o``, in the
    dtype of the normalised query (the official flash-attention outputs are cast back to it:
    float32 under the official policy), then rounded once for ``o``."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__(dim, num_heads, eps)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = RMSNormParams(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, ops, attn_dtype: torch.dtype,
                context_img: Optional[torch.Tensor] = None) -> torch.Tensor:
        if context_img is None:
            raise ValueError("this i2v model's cross-attention needs the image context (clip_fea)")
        scale = self.head_dim ** -0.5
        context = shared_input(context, self.k, self.v)
        context_img = shared_input(context_img, self.k_img, self.v_img)
        q = self._heads(ops.rms_norm.fn(linear(x, self.q), self.norm_q.weight, self.eps, out_dtype=attn_dtype))
        k_img = self._heads(ops.rms_norm.fn(linear(context_img, self.k_img), self.norm_k_img.weight, self.eps,
                                            out_dtype=attn_dtype))
        v_img = self._heads(linear(context_img, self.v_img))
        out_img = ops.cross_attention.fn(q, k_img, v_img.to(attn_dtype), scale=scale)
        k = self._heads(ops.rms_norm.fn(linear(context, self.k), self.norm_k.weight, self.eps,
                                        out_dtype=attn_dtype))
        v = self._heads(linear(context, self.v))
        out = ops.cross_attention.fn(q, k, v.to(attn_dtype), scale=scale)
        acc = torch.promote_types(matmul_dtype(self.q), self.norm_q.weight.dtype)
        return linear((out.to(acc) + out_img.to(acc)).flatten(2), self.o)
