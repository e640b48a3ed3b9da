"""Unmerged LoRAs: a low-rank side path on the DiT's Linear layers, strengths mutable.

A Linear with unmerged LoRAs computes ``x W^T + b + sum_i f_i (x down_i^T) up_i^T`` with
``f_i = strength_i * alpha_i / r_i``, in the weight's dtype (:func:`wanport.models.dit.layers.linear`
and the FFN up-projection in ``block.py`` read the layer's ``lora_side``). The base weights stay
untouched, so :func:`set_lora_strengths` changes a LoRA's strength on a loaded model between
runs (a resident pipeline); a term with strength 0 is skipped, so strength 0 gives the base
output bit for bit. Full deltas (``diff``, ``diff_b``, ``diff_m``) of unmerged LoRAs are re-merged
into their parameter from a kept copy of the base value whenever a strength changes (they touch
biases, norms and modulation vectors: small).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence

import torch
import torch.nn.functional as F

from .match import LoadedLora
from .merge import delta_float32

ATTR = "lora_side"


@dataclass
class SideTerm:
    name: str
    down: torch.Tensor  # [r, in], the layer's weight dtype, on its device
    up: torch.Tensor  # [out, r]
    scale: float
    strength: float

    @property
    def factor(self) -> float:
        return self.strength * self.scale


class LoraSide:
    """The side path of one Linear layer (a plain object: the state dict keeps its keys)."""

    def __init__(self) -> None:
        self.terms: List[SideTerm] = []

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the layer's output for ``x``, already in the weight's dtype) plus the side path."""
        for t in self.terms:
            f = t.factor
            if f == 0.0:
                continue
            if t.down.device != x.device:  # the model was moved (e.g. a parked expert activated)
                t.down, t.up = t.down.to(x.device), t.up.to(x.device)
            h = F.linear(x.to(t.down.dtype), t.down)
            out = out.add_(F.linear(h * f, t.up))  # out is the layer's fresh output: added in place
        return out


def side_of(layer: torch.nn.Module):
    """The layer's :class:`LoraSide`, or None (a dict lookup: cheap on every call)."""
    return layer.__dict__.get(ATTR)


@dataclass
class _Remerged:
    param: torch.nn.Parameter
    base: torch.Tensor
    terms: list = field(default_factory=list)  # [(name, term)]


class UnmergedLoras:
    """What :func:`attach` put on a model; kept as ``model.lora_unmerged``."""

    def __init__(self) -> None:
        self.sides: Dict[str, LoraSide] = {}
        self.remerged: Dict[str, _Remerged] = {}
        self.strengths: Dict[str, float] = {}

    def set_strengths(self, strengths: Mapping[str, float]) -> None:
        unknown = [n for n in strengths if n not in self.strengths]
        if unknown:
            raise KeyError("LoRA %r is not attached unmerged to this model (unmerged: %s); a merged LoRA's strength "
                           "is fixed at load (use merge: false to change it later)"
                           % (unknown[0], ", ".join(sorted(self.strengths)) or "none"))
        self.strengths.update({n: float(s) for n, s in strengths.items()})
        for side in self.sides.values():
            for t in side.terms:
                t.strength = self.strengths[t.name]
        with torch.no_grad():
            for r in self.remerged.values():
                w = r.base.to(torch.float32, copy=True)
                for name, term in r.terms:
                    w += delta_float32(term, self.strengths[name], w.device)
                r.param.data.copy_(w.to(r.param.dtype))


def attach(model: torch.nn.Module, loras: Sequence[LoadedLora]) -> UnmergedLoras:
    """Side paths for the unmerged ``loras`` on a loaded model (factors moved to each layer's
    device and weight dtype once)."""
    state = model.__dict__.get("lora_unmerged") or UnmergedLoras()
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for lora in loras:
        name = lora.spec.name
        state.strengths[name] = lora.spec.strength
        for term in lora.lowrank:
            layer = modules[term.module]
            side = side_of(layer)
            if side is None:
                side = LoraSide()
                setattr(layer, ATTR, side)
                state.sides[term.module] = side
            w = layer.weight
            side.terms.append(SideTerm(name, term.down.to(device=w.device, dtype=w.dtype),
                                       term.up.to(device=w.device, dtype=w.dtype), term.scale, lora.spec.strength))
        for d in lora.deltas:
            p = params[d.param]
            r = state.remerged.get(d.param)
            if r is None:
                r = state.remerged[d.param] = _Remerged(p, p.data.clone())
            r.terms.append((name, d))
    model.lora_unmerged = state
    state.set_strengths({})  # re-merge the deltas at their recipe strengths
    return state


def set_lora_strengths(model: torch.nn.Module, strengths: Mapping[str, float]) -> None:
    """Change the strength of unmerged LoRAs (by the names in the run report) on a loaded DiT;
    takes effect at the next forward. KeyError for a name that is not attached unmerged."""
    state = model.__dict__.get("lora_unmerged")
    if state is None:
        raise KeyError("this model has no unmerged LoRA (load one with merge: false)")
    state.set_strengths(strengths)


def lora_strengths(model: torch.nn.Module) -> Dict[str, float]:
    """The current strengths of the model's unmerged LoRAs."""
    state = model.__dict__.get("lora_unmerged")
    return dict(state.strengths) if state is not None else {}


__all__ = ["LoraSide", "attach", "set_lora_strengths", "lora_strengths", "side_of", "UnmergedLoras"]
