"""Argument checks every implementation of a kind shares (one definition, one message).

Backends call these at the top of their implementation instead of writing their own, so the same
bad call fails the same way on every backend (the conformance kit in :mod:`wanport.testing` checks
that it does).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch


def check_kv_lens(kv_lens: Optional[Sequence[int]], batch: int, keys: int) -> Optional[Tuple[int, ...]]:
    """The attention contract's ``kv_lens``, checked: one host int per sample, each in
    ``[1, keys]``. Returns the lengths as a tuple of ints, or None when ``kv_lens`` is None or every
    key is valid (nothing to mask). Raises ``ValueError`` naming the problem."""
    if kv_lens is None:
        return None
    if isinstance(kv_lens, torch.Tensor):
        raise ValueError("kv_lens must be host ints (a list or tuple), not a tensor: a tensor would need a "
                         "device->host sync per call")
    lens = tuple(int(n) for n in kv_lens)
    if len(lens) != batch:
        raise ValueError("kv_lens has %d entries for batch %d" % (len(lens), batch))
    if min(lens) < 1 or max(lens) > keys:
        raise ValueError("kv_lens %s outside [1, %d]" % (list(lens), keys))
    return None if min(lens) == keys else lens


def per_sample_keys(core: Callable, q, k, v, scale: float, kv_lens: Optional[Sequence[int]], return_lse: bool):
    """Run ``core(q, k, v, scale, return_lse)`` ([B, S, N, D] in, out [B, Sq, N, D] (+ lse [B, N, Sq]))
    with each sample's padded keys removed first (a kernel without a key mask, or a quantizer that
    must see only the valid keys); samples of different lengths run one by one."""
    kv_lens = check_kv_lens(kv_lens, q.shape[0], k.shape[1])
    if kv_lens is None:
        return core(q, k, v, scale, return_lse)
    if len(set(kv_lens)) == 1:
        n = kv_lens[0]
        return core(q, k[:, :n], v[:, :n], scale, return_lse)
    parts = [core(q[i:i + 1], k[i:i + 1, :n], v[i:i + 1, :n], scale, return_lse) for i, n in enumerate(kv_lens)]
    if return_lse:
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return torch.cat(parts)


def check_rotary_tables(cos: torch.Tensor, sin: torch.Tensor, tokens: int, head_dim: int) -> None:
    """The rotary contract's tables: ``cos`` and ``sin`` both ``[S, D]`` for ``tokens`` = S and
    ``head_dim`` = D. Raises ``ValueError`` naming the shapes."""
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[0] != tokens or cos.shape[1] != head_dim:
        raise ValueError("rotary tables must be [S, D] = [%d, %d]; got cos %s, sin %s"
                         % (tokens, head_dim, tuple(cos.shape), tuple(sin.shape)))


__all__ = ["check_kv_lens", "check_rotary_tables", "per_sample_keys"]
