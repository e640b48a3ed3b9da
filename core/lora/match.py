"""Every key of every LoRA file matched against the model the recipe builds -- before any weight loads.

:func:`inspect_lora` reads one file (:mod:`.files`), detects its key format (:mod:`.formats`),
groups the keys by module and checks each group against the DiT built on the meta device
(with the I2V image cross-attention ``k_img``/``v_img`` and ``img_emb`` when the model has them):

* a LoRA pair needs both factors, a Linear layer to land on, ``down [r, in]`` and ``up [out, r]``
  matching its weight ``[out, in]``, and a scalar alpha when one is given;
* a diff must have the exact shape of the weight (or parameter) it adds to; ``diff_b`` of the bias;
  ``diff_m`` of the module's ``modulation``.

A key that matches nothing is an error (``lora_strict: false``: a warning, listed in the report);
a rank or shape mismatch is always an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch

from ..errors import CheckpointError
from .files import read_lora_file
from .formats import ParsedKey, Unparsed, detect_format, parse_keys
from .spec import LoraSpec


@dataclass
class LowRank:
    """``W += strength * scale * up @ down`` on the Linear weight ``param``."""

    param: str
    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    scale: float  # alpha / r, or 1 without alpha
    keys: Tuple[str, ...]

    @property
    def module(self) -> str:
        return self.param[: -len(".weight")]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class Delta:
    """``p += strength * delta`` on parameter ``param`` (full weight / bias / modulation delta)."""

    param: str
    delta: torch.Tensor
    key: str


@dataclass
class LoadedLora:
    """One LoRA file, checked against one model structure."""

    spec: LoraSpec
    fmt: str
    lowrank: List[LowRank] = field(default_factory=list)
    deltas: List[Delta] = field(default_factory=list)
    #: keys that matched nothing (only with lora_strict: false)
    unmatched: List[Unparsed] = field(default_factory=list)
    keys_total: int = 0

    @property
    def keys_applied(self) -> int:
        return sum(len(t.keys) for t in self.lowrank) + len(self.deltas)

    def params(self) -> Set[str]:
        return {t.param for t in self.lowrank} | {d.param for d in self.deltas}


@dataclass(frozen=True)
class ModelStructure:
    """What a LoRA is matched against: parameter shapes and the Linear layers' names."""

    shapes: Mapping[str, Tuple[int, ...]]
    linears: frozenset
    modules: Tuple[str, ...]

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelStructure":
        shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
        linears = frozenset(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
        owners = {k.rsplit(".", 1)[0] for k in shapes if "." in k}
        modules = tuple(sorted({n for n, _ in model.named_modules() if n} | owners | set(shapes)))
        return cls(shapes, linears, modules)


def _problem(path: str, key: str, text: str) -> str:
    return "LoRA file %s: key %r %s" % (path, key, text)


def _group(parsed: Sequence[ParsedKey], path: str) -> Dict[str, Dict[str, ParsedKey]]:
    groups: Dict[str, Dict[str, ParsedKey]] = {}
    for p in parsed:
        g = groups.setdefault(p.module, {})
        if p.role in g:
            raise CheckpointError(_problem(path, p.key, "gives the %s of %s a second time (also %r)"
                                           % (p.role, p.module, g[p.role].key)))
        g[p.role] = p
    return groups


def match_lora(spec: LoraSpec, tensors: Mapping[str, torch.Tensor], model: ModelStructure,
               strict: bool = True) -> LoadedLora:
    """Match the tensors of one file against ``model``; CheckpointError on any problem."""
    path = spec.path
    keys = list(tensors)
    fmt, seen = detect_format(keys)
    if not fmt:
        (f1, k1), (f2, k2) = list(seen.items())[:2]
        raise CheckpointError("LoRA file %s: mixes key formats: %r is %s, %r is %s; one file must use one format"
                              % (path, k1, f1, k2, f2))
    parsed, unparsed = parse_keys(keys, fmt, model.modules)
    unmatched: List[Unparsed] = list(unparsed)
    out = LoadedLora(spec, fmt, keys_total=len(keys))
    for module, g in _group(parsed, path).items():
        pair = [g.get(r) for r in ("down", "up")]
        if any(pair) or "alpha" in g:
            down, up = pair
            if down is None or up is None:
                have = down or up or g["alpha"]
                missing = "lora_up/lora_B (up)" if up is None else "lora_down/lora_A (down)"
                if down is None and up is None:
                    unmatched.append(Unparsed(have.key, "is an alpha with no LoRA pair"))
                else:
                    raise CheckpointError(_problem(path, have.key, "has no partner: the %s factor of %s is missing"
                                                   % (missing, module)))
            elif module not in model.linears:
                why = ("is a LoRA pair on %s, which is not a Linear layer of this model" % module
                       if module + ".weight" in model.shapes else "names module %s, which this model does not have"
                       % module)
                unmatched.append(Unparsed(down.key, why))
                unmatched.append(Unparsed(up.key, why))
                if "alpha" in g:
                    unmatched.append(Unparsed(g["alpha"].key, why))
            else:
                out.lowrank.append(_lowrank(path, module, down, up, g.get("alpha"), tensors, model))
        for role, suffix in (("diff", ".weight"), ("diff_b", ".bias"), ("diff_m", ".modulation")):
            p = g.get(role)
            if p is None:
                continue
            target = module + suffix
            if role == "diff" and target not in model.shapes and module in model.shapes:
                target = module  # a parameter named directly, e.g. blocks.0.modulation.diff
            if target not in model.shapes:
                unmatched.append(Unparsed(p.key, "is a delta of %s, which this model does not have" % target))
                continue
            t = tensors[p.key]
            want = model.shapes[target]
            if tuple(t.shape) != want:
                raise CheckpointError(_problem(path, p.key, "has shape %s, but %s is %s"
                                               % (list(t.shape), target, list(want))))
            out.deltas.append(Delta(target, t, p.key))
    if unmatched:
        first = unmatched[0]
        if strict:
            more = " (and %d more unmatched key(s))" % (len(unmatched) - 1) if len(unmatched) > 1 else ""
            raise CheckpointError(_problem(path, first.key, first.why) + more
                                  + "; is this LoRA for another model? (lora_strict: false skips such keys with a "
                                    "warning)")
        out.unmatched = unmatched
    return out


def _lowrank(path: str, module: str, down: ParsedKey, up: ParsedKey, alpha: Optional[ParsedKey],
             tensors: Mapping[str, torch.Tensor], model: ModelStructure) -> LowRank:
    d, u = tensors[down.key], tensors[up.key]
    out_f, in_f = model.shapes[module + ".weight"]
    if d.dim() != 2 or u.dim() != 2:
        raise CheckpointError(_problem(path, down.key if d.dim() != 2 else up.key,
                                       "must be a matrix (a Linear LoRA factor), got shape %s"
                                       % list((d if d.dim() != 2 else u).shape)))
    r = d.shape[0]
    if u.shape[1] != r:
        raise CheckpointError(_problem(path, up.key, "has rank %d, but its down factor %r has rank %d"
                                       % (u.shape[1], down.key, r)))
    if d.shape[1] != in_f:
        raise CheckpointError(_problem(path, down.key, "has %d input features, but %s takes %d (shape %s vs weight %s)"
                                       % (d.shape[1], module, in_f, list(d.shape), [out_f, in_f])))
    if u.shape[0] != out_f:
        raise CheckpointError(_problem(path, up.key, "has %d output features, but %s gives %d (shape %s vs weight %s)"
                                       % (u.shape[0], module, out_f, list(u.shape), [out_f, in_f])))
    scale, keys = 1.0, (down.key, up.key)
    if alpha is not None:
        a = tensors[alpha.key]
        if a.numel() != 1:
            raise CheckpointError(_problem(path, alpha.key, "must be a scalar alpha, got shape %s" % list(a.shape)))
        scale = float(a.reshape(())) / r
        keys += (alpha.key,)
    return LowRank(module + ".weight", d, u, scale, keys)


def inspect_lora(spec: LoraSpec, model: ModelStructure, strict: bool = True) -> LoadedLora:
    """Read, check and match one LoRA file (no model weight is read)."""
    return match_lora(spec, read_lora_file(spec.path), model, strict)


__all__ = ["LowRank", "Delta", "LoadedLora", "ModelStructure", "match_lora", "inspect_lora"]
