"""Attention through torch_npu's fused kernels.

``npu_fusion_attention`` (FlashAttentionScore):
  - BSND: Wan's q/k/v are already [B, S, N, D], so no transpose in or out;
  - BNSD: the order the kernel computes in (what MindIE runs), three transposes in, one out.
  ``head_num`` = N, ``scale`` always passed (the kernel's default is 1.0), ``keep_prob=1.0`` (the op
  has no eval switch: anything below 1 is dropout), ``sparse_mode=0`` with the band limits wide
  open. Returns a 7-tuple; the output is item 0.

``npu_fused_infer_attention_score`` (FIA, the inference kernel), BSND: masks padded keys with
  ``actual_seq_lengths_kv`` (per-sample lengths, no mask tensor) and returns the log-sum-exp with
  ``softmax_lse_flag=True`` (for merging ring-attention partials). Returns (out, lse) always.

Padded keys (``kv_lens``) on npu_fusion_attention: equal lengths slice the keys (exact, no mask);
unequal lengths use an ``atten_mask`` in the kernel's polarity — True/1 means *masked out*, the
opposite of SDPA's boolean mask — of the accepted shape [B, 1, Sq, Skv] (the kernel does not
broadcast [B, 1, 1, Skv]). The mask is built once per (lengths, shape) and reused; past a memory
budget the samples run one by one on sliced keys instead.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from wanport.ops.checks import check_kv_lens

_INT32_MAX = 2147483647  # "no band limit" for pre_tockens / next_tockens
_MASK_BUDGET_BYTES = 64 * 2**20  # a bool [B, 1, Sq, Skv] mask larger than this: per-sample calls instead


def padding_mask(lens: Sequence[int], sq: int, skv: int, device) -> torch.Tensor:
    """[B, 1, Sq, Skv] bool in npu_fusion_attention's polarity: True where the key is masked out."""
    keys = torch.arange(skv, device=device)
    limit = torch.tensor(list(lens), device=device)
    masked = keys[None, :] >= limit[:, None]  # [B, Skv]: True past each sample's length
    return masked[:, None, None, :].expand(len(lens), 1, sq, skv).contiguous()


class _LastMask:
    """One cached mask: a run has one padded shape per call site, reused by every block and step."""

    def __init__(self) -> None:
        self._key = None
        self._mask: Optional[torch.Tensor] = None

    def get(self, lens, sq: int, skv: int, device) -> torch.Tensor:
        key = (tuple(lens), sq, skv, str(device))
        if key != self._key:
            self._mask = padding_mask(lens, sq, skv, device)
            self._key = key
        return self._mask


def make_fusion_attention(npu_fusion_attention: Callable, layout: str = "BSND"):
    layout = layout.upper()
    if layout not in ("BSND", "BNSD"):
        raise ValueError("layout must be BSND or BNSD, got %r" % layout)
    masks = _LastMask()

    def call(q, k, v, mask, scale):
        n = q.shape[2]
        if layout == "BNSD":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = npu_fusion_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), n, layout,
            atten_mask=mask, scale=scale, keep_prob=1.0,
            pre_tockens=_INT32_MAX, next_tockens=_INT32_MAX, inner_precise=0, sparse_mode=0,
        )[0]
        return out.transpose(1, 2) if layout == "BNSD" else out

    def fusion_attention(q, k, v, *, scale: float, kv_lens=None, return_lse: bool = False):
        if return_lse:
            raise ValueError("ascend.fusion_attention returns no log-sum-exp; ascend.fused_infer_attention does")
        scale = float(scale)
        b, sq = q.shape[0], q.shape[1]
        skv = k.shape[1]
        lens = check_kv_lens(kv_lens, b, skv)
        if lens is None:
            return call(q, k, v, None, scale)
        if len(set(lens)) == 1:
            n = lens[0]
            return call(q, k[:, :n], v[:, :n], None, scale)
        if b * sq * skv <= _MASK_BUDGET_BYTES:
            return call(q, k, v, masks.get(lens, sq, skv, q.device), scale)
        return torch.cat([call(q[i:i + 1], k[i:i + 1, :n], v[i:i + 1, :n], None, scale)
                          for i, n in enumerate(lens)], dim=0)

    fusion_attention.__name__ = "fusion_attention_%s" % layout.lower()
    return fusion_attention


def make_fused_infer_attention(npu_fused_infer_attention_score: Callable):
    def fused_infer_attention(q, k, v, *, scale: float, kv_lens=None, return_lse: bool = False):
        b, sq, n = q.shape[0], q.shape[1], q.shape[2]
        lens = check_kv_lens(kv_lens, b, k.shape[1])
        extra = {} if lens is None else {"actual_seq_lengths_kv": list(lens)}
        out, lse = npu_fused_infer_attention_score(
            q.contiguous(), k.contiguous(), v.contiguous(),
            num_heads=n, num_key_value_heads=n, input_layout="BSND", scale=float(scale),
            sparse_mode=0, inner_precise=0, softmax_lse_flag=bool(return_lse), **extra,
        )
        if return_lse:
            return out, lse.reshape(b, n, sq).float()  # [B, N, Sq, 1] -> [B, N, Sq]
        return out

    return fused_infer_attention
