"""Device memory of the feature cache (``cache:``, docs/caching.md) during the denoising loop.

What :class:`wanport.cache.runner.FeatureCache` keeps from one forward to the next, per
(expert, branch) state, on each rank:

* every method: the blocks' residual, this rank's shard of the token sequence
  ``[1, S_local, dim]`` in the residual stream's dtype (the promotion of the matmul and
  modulation dtypes: float32 under ``official``);
* ``first_block``: also block 0's residual at the last computed step (same shape and dtype);
* ``teacache``: also the previous statistic input, ``e`` ``[1, dim]`` or ``e0`` ``[1, 6, dim]``
  in the modulation dtype (per token, with per-token timesteps: ``S_local`` times that).

States: one per guidance branch this rank runs (two without CFG parallelism when guidance is on,
else one), times the experts of a Wan2.2 A14B model with ``per_expert`` (the high-noise expert's
state stays until the call ends; without ``per_expert`` the one state is replaced at the switch).
The cache is dropped before the VAE decode (``pipeline/api.py``), so only the denoise stage holds it.
"""

from __future__ import annotations

from typing import Dict

import torch

from .activations import Tokens
from .weights import itemsize


def cache_states(settings, experts: int, branches: int) -> int:
    """(expert, branch) states alive at once on one rank."""
    per_expert = experts if (experts > 1 and settings.per_expert) else 1
    return per_expert * branches


def cached_bytes(settings, dim: int, policy, tok: Tokens, experts: int, branches: int,
                 per_token: bool = False) -> Dict[str, int]:
    """``{"residuals": bytes, "inputs": bytes, "states": n}`` kept by the cache on one rank
    (zeros when ``settings`` is None or the method is none)."""
    if settings is None or not settings.enabled:
        return {"residuals": 0, "inputs": 0, "states": 0}
    states = cache_states(settings, experts, branches)
    stream = itemsize(torch.promote_types(policy.matmul, policy.modulation))
    per_state = (2 if settings.method == "first_block" else 1) * tok.local * dim * stream
    inputs = 0
    if settings.method == "teacache":
        width = (6 if settings.input == "e0" else 1) * dim
        inputs = (tok.local if per_token else 1) * width * itemsize(policy.modulation)
    return {"residuals": states * per_state, "inputs": states * inputs, "states": states}


__all__ = ["cached_bytes", "cache_states"]
