"""Attention through torch SDPA with the kernel chosen explicitly (cuDNN, flash, efficient),
plus log-sum-exp variants for ring attention.

SDPA's own choice is not always the fastest on Hopper (cuDNN measured 575-629 TFLOP/s at
Wan shapes vs FA2's 365-377), so each kernel is a separate implementation the resolver picks.
Padded keys (``kv_lens``) are dropped by slicing K/V (exact, free) rather than masked, so every
kernel honours them; samples with different lengths run one by one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from wanport.ops.checks import per_sample_keys


def _sdpa_kernel_context(kind: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[kind]
    return lambda: sdpa_kernel([backend])


def make_sdpa(kind: str):
    enter = _sdpa_kernel_context(kind)

    def core(q, k, v, scale, return_lse):
        if return_lse:
            raise ValueError("cuda.sdpa_%s has no log-sum-exp output; use cuda.%s_lse" % (kind, kind))
        with enter():
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 scale=scale)
        return out.transpose(1, 2)

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        return per_sample_keys(core, q, k, v, scale, kv_lens, return_lse)

    attention.__name__ = "sdpa_%s" % kind
    return attention


def make_lse(kind: str):
    """Attention that also returns the natural-log LSE [B, N, Sq] float32 (ring merging), through
    the aten kernels SDPA dispatches to (they compute the LSE anyway)."""

    def core(q, k, v, scale, return_lse):
        if q.dtype not in (torch.float16, torch.bfloat16):  # the aten kernels return garbage, not an error
            raise ValueError("cuda.%s_lse takes float16/bfloat16 q/k/v, not %s" % (kind, q.dtype))
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kind == "cudnn":
            res = torch.ops.aten._scaled_dot_product_cudnn_attention(
                qt, kt, vt, None, True, 0.0, False, False, scale=scale)
        else:
            res = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, False, False, scale=scale)
        b, sq, n, _ = q.shape
        out = res[0].transpose(1, 2)
        lse = res[1].reshape(b, n, -1)[..., :sq].float()  # cuDNN keeps it as [B, N, S, 1]
        return (out, lse) if return_lse else out

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        return per_sample_keys(core, q, k, v, scale, kv_lens, return_lse)

    attention.__name__ = "%s_lse" % kind
    return attention


def make_flash_attn(version: int):
    """FlashAttention from the ``flash_attn`` (2) or ``flash_attn_interface`` (3) package, which
    take [B, S, N, D] directly."""
    if version == 3:
        from flash_attn_interface import flash_attn_func
    else:
        from flash_attn import flash_attn_func

    def core(q, k, v, scale, return_lse):
        if version == 3:
            res = flash_attn_func(q, k, v, softmax_scale=scale)
            out, lse = (res[0], res[1]) if isinstance(res, tuple) else (res, None)
        else:
            res = flash_attn_func(q, k, v, softmax_scale=scale, return_attn_probs=return_lse)
            out, lse = (res[0], res[1]) if isinstance(res, tuple) else (res, None)
        if return_lse:
            if lse is None:
                raise ValueError("this flash_attn build returned no log-sum-exp")
            return out, lse.float()
        return out

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        return per_sample_keys(core, q, k, v, scale, kv_lens, return_lse)

    attention.__name__ = "flash_attn%d" % version
    return attention


def make_fa4():
    """FlashAttention-4 (the CuTe-DSL kernels of the ``flash-attn-4`` package, Hopper and
    Blackwell). Takes [B, S, N, D] and returns ``(out, lse)`` with the natural-log LSE [B, N, S]
    in float32. It JIT-compiles one kernel per shape on its first call (seconds), which the
    pipeline's warm-up absorbs."""
    from flash_attn.cute import flash_attn_func

    def core(q, k, v, scale, return_lse):
        out, lse = flash_attn_func(q, k, v, softmax_scale=scale, return_lse=return_lse)
        if return_lse:
            return out, lse.float()
        return out

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        return per_sample_keys(core, q, k, v, scale, kv_lens, return_lse)

    attention.__name__ = "flash_attn4"
    return attention


def make_sage():
    """SageAttention (INT8 QK^T, lossy): opt-in only."""
    from sageattention import sageattn

    def core(q, k, v, scale, return_lse):
        if return_lse:
            raise ValueError("sageattention has no log-sum-exp output")
        return sageattn(q, k, v, tensor_layout="NHD", is_causal=False, sm_scale=scale)

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        return per_sample_keys(core, q, k, v, scale, kv_lens, return_lse)

    attention.__name__ = "sageattn"
    return attention
