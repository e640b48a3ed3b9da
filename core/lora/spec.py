"""The recipe's ``lora:`` list, checked without torch.

Each entry: ``{path, strength (default 1.0), expert (two-expert models: high | low | both),
merge (default true)}``; entries apply in order. ``merge: true`` adds the delta into the weights
as they load (no cost per step); ``merge: false`` keeps a low-rank side path whose strength can
change between runs of a resident pipeline.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

EXPERT_CHOICES = ("high", "low", "both")
_KEYS = ("path", "strength", "expert", "merge")


@dataclass(frozen=True)
class LoraSpec:
    """One recipe entry, checked."""

    path: str
    strength: float = 1.0
    #: None (single-expert model) or "high" | "low" | "both"
    expert: Optional[str] = None
    merge: bool = True
    #: a name unique within the recipe (the file stem, numbered on repeats): the key of
    #: :func:`wanport.lora.side_path.set_lora_strengths`
    name: str = ""

    def applies_to(self, expert: str) -> bool:
        """Whether this entry applies to the expert named ``expert`` ("" for a single DiT,
        "high_noise" / "low_noise" for the two Wan2.2 A14B experts)."""
        if not expert or self.expert in (None, "both"):
            return True
        return expert.startswith(self.expert)


def check_lora_list(path: str, value: Any, problems: List[str]) -> Optional[List[dict]]:
    """Structural check of ``lora:`` (the loader's type check): a list of mappings with known
    keys and plain values. Returns the list (entries as dicts) or None after a problem."""
    if value is None:
        return []
    if isinstance(value, dict):  # one entry given without the list
        value = [value]
    if not isinstance(value, list):
        problems.append("%s: expected a list of {path, strength, expert, merge}, got %r" % (path, value))
        return None
    out = []
    for i, entry in enumerate(value):
        where = "%s[%d]" % (path, i)
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            problems.append("%s: expected a mapping {path: file.safetensors, strength: 1.0}, got %r" % (where, entry))
            return None
        unknown = [k for k in entry if k not in _KEYS]
        if unknown:
            problems.append("%s: unknown key %r (known: %s)" % (where, unknown[0], ", ".join(_KEYS)))
            return None
        if not isinstance(entry.get("path"), str) or not entry["path"].strip():
            problems.append("%s.path: required, the LoRA .safetensors file" % where)
            return None
        s = entry.get("strength", 1.0)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(float(s)):
            problems.append("%s.strength: expected a finite number, got %r" % (where, s))
            return None
        e = entry.get("expert")
        if e is not None and e not in EXPERT_CHOICES:
            problems.append("%s.expert: %r is not one of %s" % (where, e, ", ".join(EXPERT_CHOICES)))
            return None
        m = entry.get("merge", True)
        if not isinstance(m, bool):
            problems.append("%s.merge: expected true or false, got %r" % (where, m))
            return None
        out.append(dict(entry))
    return out


def plan_loras(entries: Optional[List[dict]], experts: bool, problems: List[str]) -> Tuple[LoraSpec, ...]:
    """Entries -> LoraSpecs, checked against the model (expert names only for two-expert models)."""
    specs = []
    seen = {}
    for i, entry in enumerate(entries or ()):
        where = "lora[%d]" % i
        expert = entry.get("expert")
        if experts and expert is None:
            problems.append("%s.expert: this model has two experts; name the one(s) the LoRA is for "
                            "(expert: high | low | both)" % where)
        elif not experts and expert not in (None, "both"):
            problems.append("%s.expert: the model has one DiT; drop `expert: %s`" % (where, expert))
        stem = os.path.splitext(os.path.basename(entry["path"]))[0] or "lora"
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else "%s#%d" % (stem, seen[stem])
        specs.append(LoraSpec(entry["path"], float(entry.get("strength", 1.0)), expert if experts else None,
                              bool(entry.get("merge", True)), name))
    return tuple(specs)


__all__ = ["LoraSpec", "EXPERT_CHOICES", "check_lora_list", "plan_loras"]
