"""Merged LoRAs: every delta added in float32 as the DiT's tensors are read, rounded once.

For a parameter ``W`` touched by LoRAs (in recipe order):
``W' = round_to_policy_dtype(float32(W) + sum_i s_i * (scale_i * up_i @ down_i  or  delta_i))``
-- the product and the sum in float32 on the load device, one rounding at the end, so the merged
model costs nothing per step. :class:`Merger` is both the per-tensor hook of
:func:`wanport.checkpoints.dit_checkpoint.load_dit` and, for weight sources that build the model
otherwise (random benchmark weights), an in-place pass over a loaded model.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import torch

from .match import Delta, LoadedLora, LowRank

Term = Tuple[float, Union[LowRank, Delta]]


def delta_float32(term: Union[LowRank, Delta], strength: float, device: torch.device) -> torch.Tensor:
    """One term's delta in float32 on ``device``, strength and alpha/rank applied."""
    if isinstance(term, LowRank):
        up = term.up.to(device=device, dtype=torch.float32)
        down = term.down.to(device=device, dtype=torch.float32)
        return torch.mm(up, down).mul_(float(strength) * term.scale)
    return term.delta.to(device=device, dtype=torch.float32) * float(strength)


def index_terms(loras: Sequence[LoadedLora]) -> Dict[str, List[Term]]:
    """parameter name -> [(strength, term)] in recipe order."""
    out: Dict[str, List[Term]] = {}
    for lora in loras:
        s = lora.spec.strength
        for term in list(lora.lowrank) + list(lora.deltas):
            out.setdefault(term.param, []).append((s, term))
    return out


class Merger:
    """Adds the deltas of merged LoRAs to the tensors they touch."""

    def __init__(self, loras: Sequence[LoadedLora]) -> None:
        self.terms = index_terms(loras)
        self.merged: List[str] = []

    def __call__(self, key: str, tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The tensor ``key`` as read from the file -> on ``device`` in ``dtype``, deltas merged."""
        terms = self.terms.get(key)
        if not terms:
            return tensor.to(device=device, dtype=dtype)
        w = tensor.to(device=device, dtype=torch.float32, copy=True)
        for strength, term in terms:
            w += delta_float32(term, strength, w.device)
        self.merged.append(key)
        return w.to(dtype)

    def merge_into(self, model: torch.nn.Module) -> torch.nn.Module:
        """In place on a loaded model (each touched parameter rounded once to its own dtype)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key in self.terms:
                p = params[key]
                p.data = self(key, p.data, p.device, p.dtype)
        return model


__all__ = ["Merger", "delta_float32", "index_terms"]
