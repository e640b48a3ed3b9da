"""What an op implementation declares, and what a call site requires of it."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Callable, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import torch

from .contracts import OP_KINDS


def _always() -> Tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class Constraints:
    """What an implementation supports. ``None`` means "no limit" for that field."""

    dtypes: Optional[FrozenSet[torch.dtype]] = None  # input dtypes accepted
    head_dims: Optional[FrozenSet[int]] = None  # exact head dims accepted (attention/rotary)
    max_head_dim: Optional[int] = None
    lse: bool = False  # attention: can also return the log-sum-exp
    kv_lens: bool = True  # attention: honours per-sample kv lengths
    per_token_modulation: bool = True  # layer_norm_modulate: shift/scale of shape [B, S, C]
    batch_gt1: bool = True  # works for batch size > 1
    out_dtype: bool = False  # accepts the optional out_dtype keyword (else wrapped with a cast)
    device_types: Optional[FrozenSet[str]] = None  # None: any device (pure PyTorch)
    #: quant_linear: the quantization schemes implemented (``wanport.ops.quant.SCHEMES`` names);
    #: attention: the ``quant.attention`` schemes (``fp8``: ``wanport.ops.attention_quant``)
    schemes: FrozenSet[str] = frozenset()

    def check(self, req: "Requirements") -> Tuple[bool, str]:
        """(ok, why) for one call site's requirements; ``why`` lists every unmet requirement
        ("; "-separated), so one look at a refusal shows all that stands in the way."""
        reasons = self.refusals(req)
        return not reasons, "; ".join(reasons)

    def refusals(self, req: "Requirements") -> List[str]:
        """Every requirement of ``req`` these constraints do not meet, one sentence each."""
        out = []
        if self.device_types is not None and req.device_type not in self.device_types:
            out.append("runs on %s, not on device type %r" % ("/".join(sorted(self.device_types)), req.device_type))
        if self.dtypes is not None:
            bad = [d for d in req.dtypes if d not in self.dtypes]
            if bad:
                out.append("dtype %s not supported (supports %s)" % (_names(bad), _names(self.dtypes)))
        if req.head_dim is not None:
            if self.head_dims is not None and req.head_dim not in self.head_dims:
                out.append("head dim %d not in %s" % (req.head_dim, _dims(self.head_dims)))
            if self.max_head_dim is not None and req.head_dim > self.max_head_dim:
                out.append("head dim %d > %d" % (req.head_dim, self.max_head_dim))
        if req.lse and not self.lse:
            out.append("cannot return the log-sum-exp (needed for ring attention)")
        if req.kv_lens and not self.kv_lens:
            out.append("cannot mask padded keys (kv_lens)")
        if req.per_token_modulation and not self.per_token_modulation:
            out.append("no per-token modulation (needed for per-token timesteps)")
        if req.batch_gt1 and not self.batch_gt1:
            out.append("batch size > 1 not supported")
        if req.quant_scheme is not None and req.quant_scheme not in self.schemes:
            out.append("does not implement quantization scheme %s (implements: %s)" % (
                req.quant_scheme, ", ".join(sorted(self.schemes)) or "none"))
        return out


def _names(dtypes) -> str:
    return ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))


def _dims(dims) -> str:
    """A set of head dims, short: a long arithmetic run as ``8..512 step 8``."""
    ds = sorted(dims)
    if len(ds) > 8:
        step = ds[1] - ds[0]
        if all(b - a == step for a, b in zip(ds, ds[1:])):
            return "%d..%d step %d" % (ds[0], ds[-1], step)
    return str(ds)


@dataclass(frozen=True)
class Requirements:
    """What one call site of the model needs, derived from the model config and recipe."""

    device_type: str
    dtypes: FrozenSet[torch.dtype] = frozenset()
    head_dim: Optional[int] = None
    lse: bool = False
    kv_lens: bool = False
    per_token_modulation: bool = False
    batch_gt1: bool = False
    #: quant_linear: the scheme the recipe asks for (``quant.dit``); self_attention: ``quant.attention``
    #: when not ``none`` (then only implementations declaring it fit, lossy by request)
    quant_scheme: Optional[str] = None


@dataclass(frozen=True)
class OpImpl:
    """One implementation of one op kind, as a backend declares it.

    ``load`` returns the callable; it runs once, at resolution, and is where a backend may
    import its vendor package. ``available`` must never raise and must not import vendor
    packages either (it may use ``importlib.util.find_spec``).
    """

    kind: str
    name: str
    backend: str
    load: Callable[[], Callable]
    constraints: Constraints = field(default_factory=Constraints)
    priority: int = 0  # higher wins among implementations that satisfy the requirements
    description: str = ""
    available: Callable[[], Tuple[bool, str]] = _always
    exact: bool = True  # False for lossy kernels (never chosen automatically)
    tolerance: float = 0.0  # declared max relative error vs the float64 reference (0 = n/a)
    #: the call sites where the resolver may pick it without being asked (None: every site of its
    #: kind); a recipe may still name it anywhere -- for a kernel that is slower at some shapes
    default_sites: Optional[FrozenSet[str]] = None

    def __post_init__(self):
        if self.kind not in OP_KINDS:
            raise ValueError("unknown op kind %r (known: %s)" % (self.kind, ", ".join(OP_KINDS)))

    @property
    def qualified_name(self) -> str:
        return "%s.%s" % (self.backend, self.name)


class AtLoad:
    """An argument of :func:`lazy` computed when the implementation loads, not when it is declared
    (e.g. the vendor function a factory wraps: ``AtLoad(lambda: import_vendor().some_op)``)."""

    def __init__(self, get: Callable[[], object]) -> None:
        self.get = get


def lazy(target: str, *args, call: Optional[bool] = None, package: Optional[str] = None) -> Callable[[], Callable]:
    """The ``load`` of an :class:`OpImpl`: imports nothing until the resolver calls it.

    ``target`` is ``"module:attr"`` (``module`` may be relative, ``".attention"``, with
    ``package=__package__``). Loading imports the module and returns ``attr``, or, when ``args``
    are given (or ``call=True``: a factory without arguments), ``attr(*args)``; an :class:`AtLoad`
    argument is evaluated first, at load time. So a plugin module declares its implementations
    without importing their modules (or any vendor package they import).
    """
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError("lazy(%r): the target is 'module:attr'" % (target,))
    if call is None:
        call = bool(args)

    def load():
        obj = getattr(importlib.import_module(module, package), attr)
        if not call:
            return obj
        return obj(*(a.get() if isinstance(a, AtLoad) else a for a in args))

    load.__qualname__ = load.__name__ = "lazy(%s)" % target
    return load


def ranked(priority: Mapping[Tuple[str, str], int], impls: Sequence[OpImpl]) -> List[OpImpl]:
    """``impls`` with each priority taken from a backend's one ranking table, ``priority[(kind, name)]``
    (an implementation missing from the table keeps the priority it was declared with)."""
    return [dataclasses.replace(i, priority=priority[(i.kind, i.name)]) if (i.kind, i.name) in priority else i
            for i in impls]
