"""Temporal feature cache of the Wan VAE's causal chunked encode/decode (docs/wan-model.md §5.2).

The Wan VAE runs its encoder on chunks of 1, 4, 4, ... frames and its decoder on one latent
frame at a time. Every causal temporal conv keeps the last ``CACHE_T`` frames of its *input*
from the previous chunk and puts them in front of the next chunk instead of zero padding, so
chunked processing sees the same left context as a whole-sequence pass would (with the
official boundary rules below).

One :class:`FeatureCache` lives for exactly one ``encode``/``decode`` call; slots are keyed by
the layer object, so there is no slot counting and no state on the modules (re-entrant).
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import torch

CACHE_T = 2  # frames of left context kept per causal conv


class _Marker:
    """A cache entry that is not a tensor (only the upsample3d "first chunk seen" flag)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# upsample3d stores this after the first chunk (official code: the string 'Rep'): the first
# latent frame is not upsampled in time; the second chunk then runs ``time_conv`` with plain
# zero causal padding.
FIRST_CHUNK_DONE = _Marker("FIRST_CHUNK_DONE")

Entry = Union[torch.Tensor, _Marker]


class FeatureCache:
    """Per-call temporal cache: one entry per cached layer, keyed by the layer object."""

    def __init__(self) -> None:
        self._slots: Dict[int, Entry] = {}

    def get(self, layer: object) -> Optional[Entry]:
        return self._slots.get(id(layer))

    def put(self, layer: object, value: Entry) -> None:
        self._slots[id(layer)] = value

    def __len__(self) -> int:
        return len(self._slots)

    @staticmethod
    def next_context(x: torch.Tensor, prev: Optional[Entry]) -> torch.Tensor:
        """What a causal conv stores after seeing chunk ``x`` (official rule).

        The last ``CACHE_T`` frames of ``x``; if the chunk has a single frame, the last frame
        of the previous entry goes in front of it (when there is one). Cloned so the cache does
        not keep the whole chunk alive.
        """
        new = x[:, :, -CACHE_T:].clone()
        if new.shape[2] < CACHE_T and isinstance(prev, torch.Tensor):
            new = torch.cat([prev[:, :, -1:], new], dim=2)
        return new
