"""Attention through torch SDPA with the kernel chosen explicitly (cuDNN, flash, efficient).

SDPA's own choice is not always the fastest on Hopper (cuDNN measured 575-629 TFLOP/s at
Wan shapes vs FA2's 365-377), so each kernel is a separate implementation the resolver picks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def _kernel_context(kind: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[kind]
    return lambda: sdpa_kernel([backend])


def _key_mask(kv_lens: Sequence[int], b: int, skv: int, device) -> torch.Tensor:
    lens = torch.tensor(list(kv_lens), device=device)
    return (torch.arange(skv, device=device)[None, :] < lens[:, None])[:, None, None, :]


def make_sdpa(kind: str):
    enter = _kernel_context(kind)

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        if return_lse:
            raise ValueError("cuda.sdpa_%s has no log-sum-exp output" % kind)
        mask = None
        if kv_lens is not None and min(kv_lens) < k.shape[1]:
            mask = _key_mask(kv_lens, q.shape[0], k.shape[1], q.device)
        with enter():
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask, scale=scale)
        return out.transpose(1, 2)

    attention.__name__ = "sdpa_%s" % kind
    return attention
