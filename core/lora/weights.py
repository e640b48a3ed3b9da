"""LoRAs in a run: inspected with the checkpoint, applied as the DiT loads, listed in the report.

:class:`LoraWeights` wraps a weight source (:mod:`wanport.pipeline.weights`): ``inspect(plan)``
inspects the checkpoint, then reads and matches every LoRA file of the recipe against the
model of each expert it applies to (nothing of the model is loaded); ``load_dit`` merges the
``merge: true`` LoRAs into the tensors as they are read (or into a model built otherwise, e.g.
random benchmark weights) and attaches the side path of the ``merge: false`` ones.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional

from ..errors import CheckpointError
from .files import read_lora_file
from .match import LoadedLora, ModelStructure, match_lora


def _structure(cfg, policy) -> ModelStructure:
    from ..models.dit import WanDiT

    return ModelStructure.of(WanDiT.on_meta(cfg, policy))


def inspect_loras(plan, ckpts) -> Dict[str, List[LoadedLora]]:
    """expert name ("" for a single DiT) -> the LoRAs that apply to it, matched; errors before load."""
    specs = getattr(plan, "loras", ()) or ()
    if not specs:
        return {}
    strict = getattr(plan, "lora_strict", True)
    experts = dict(ckpts.experts) if ckpts.experts else {"": ckpts.dit}
    files: Dict[str, Any] = {}
    out: Dict[str, List[LoadedLora]] = {}
    warned = set()
    for name, ckpt in experts.items():
        model = _structure(ckpt.config, plan.policy)
        out[name] = []
        for spec in specs:
            if not spec.applies_to(name):
                continue
            if spec.path not in files:
                files[spec.path] = read_lora_file(spec.path)
            lora = match_lora(spec, files[spec.path], model, strict)
            if lora.unmatched and id(spec) not in warned:  # once per entry, not per expert
                warned.add(id(spec))
                first = lora.unmatched[0]
                warnings.warn("LoRA file %s: %d key(s) match no layer and are skipped (lora_strict: false), e.g. "
                              "%r %s" % (spec.path, len(lora.unmatched), first.key, first.why), stacklevel=2)
            out[name].append(lora)
    for spec in specs:
        if not any(l.spec is spec for ls in out.values() for l in ls):
            raise CheckpointError("LoRA file %s: expert %r matches no expert of this model (%s)"
                                  % (spec.path, spec.expert, ", ".join(experts)))
    return out


class LoraWeights:
    """A weight source whose DiTs come out with the recipe's LoRAs applied."""

    def __init__(self, base) -> None:
        self.base = base
        self.loaded: Dict[str, List[LoadedLora]] = {}
        self._ckpts = None

    def __getattr__(self, name):
        if name == "base":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def describe(self):
        return self.base.describe()

    def inspect(self, plan):
        ckpts = self.base.inspect(plan)
        self.loaded = inspect_loras(plan, ckpts)
        self._ckpts = ckpts
        return ckpts

    def _expert_of(self, ckpt) -> str:
        experts = self._ckpts.experts if self._ckpts is not None else None
        if not experts:
            return ""
        for name, c in experts.items():
            if c is ckpt or c.directory == ckpt.directory:
                return name
        return ""

    def load_dit(self, ckpt, policy, device, *args, **kwargs):
        from ..pipeline.weights import CheckpointWeights
        from .merge import Merger
        from .side_path import attach

        loras = self.loaded.get(self._expert_of(ckpt), [])
        merged = [l for l in loras if l.spec.merge]
        unmerged = [l for l in loras if not l.spec.merge]
        if merged and isinstance(self.base, CheckpointWeights):
            model = self.base.load_dit(ckpt, policy, device, *args, transform=Merger(merged), **kwargs)
        else:
            model = self.base.load_dit(ckpt, policy, device, *args, **kwargs)
            if merged:
                Merger(merged).merge_into(model)
        if unmerged:
            attach(model, unmerged)
        return model

    def report(self) -> Optional[List[Dict[str, Any]]]:
        return lora_report(self.loaded)


def as_lora_source(weights) -> LoraWeights:
    return weights if isinstance(weights, LoraWeights) else LoraWeights(weights)


def lora_report(loaded: Dict[str, List[LoadedLora]]) -> Optional[List[Dict[str, Any]]]:
    """One row per recipe entry: file, format, keys applied, strength, merged or not, experts,
    ranks and any unmatched key (lora_strict: false)."""
    rows: Dict[int, Dict[str, Any]] = {}
    for expert, loras in loaded.items():
        for l in loras:
            row = rows.get(id(l.spec))
            if row is None:
                ranks = sorted({t.rank for t in l.lowrank})
                row = rows[id(l.spec)] = {
                    "name": l.spec.name, "file": os.path.abspath(l.spec.path), "format": l.fmt,
                    "keys_applied": l.keys_applied, "keys_in_file": l.keys_total,
                    "layers": len(l.params()), "rank": ranks[0] if len(ranks) == 1 else ranks,
                    "strength": l.spec.strength, "merged": l.spec.merge,
                    "mode": "merged into the weights at load" if l.spec.merge else "unmerged low-rank side path",
                    "experts": [],
                    "unmatched_keys": [{"key": u.key, "why": u.why} for u in l.unmatched],
                }
            if expert:
                row["experts"].append(expert)
    return list(rows.values()) or None


__all__ = ["LoraWeights", "as_lora_source", "inspect_loras", "lora_report"]
