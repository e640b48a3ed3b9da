"""What an op implementation declares, and what a call site requires of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, FrozenSet, Optional, Tuple

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
    #: quant_linear: the quantization schemes implemented (``wanport.ops.quant.SCHEMES`` names)
    schemes: FrozenSet[str] = frozenset()

    def check(self, req: "Requirements") -> Tuple[bool, str]:
        """(ok, reason) for one call site's requirements."""
        if self.device_types is not None and req.device_type not in self.device_types:
            return False, (
                "runs on %s, not on device type %r"
                % ("/".join(sorted(self.device_types)), req.device_type)
            )
        if self.dtypes is not None:
            bad = [d for d in req.dtypes if d not in self.dtypes]
            if bad:
                return False, "dtype %s not supported (supports %s)" % (
                    _names(bad), _names(self.dtypes))
        if req.head_dim is not None:
            if self.head_dims is not None and req.head_dim not in self.head_dims:
                return False, "head dim %d not in %s" % (req.head_dim, sorted(self.head_dims))
            if self.max_head_dim is not None and req.head_dim > self.max_head_dim:
                return False, "head dim %d > %d" % (req.head_dim, self.max_head_dim)
        if req.lse and not self.lse:
            return False, "cannot return the log-sum-exp (needed for ring attention)"
        if req.kv_lens and not self.kv_lens:
            return False, "cannot mask padded keys (kv_lens)"
        if req.per_token_modulation and not self.per_token_modulation:
            return False, "no per-token modulation (needed for per-token timesteps)"
        if req.batch_gt1 and not self.batch_gt1:
            return False, "batch size > 1 not supported"
        if req.quant_scheme is not None and req.quant_scheme not in self.schemes:
            return False, "does not implement quantization scheme %s (implements: %s)" % (
                req.quant_scheme, ", ".join(sorted(self.schemes)) or "none")
        return True, ""


def _names(dtypes) -> str:
    return ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))


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
    #: quant_linear: the scheme the recipe asks for (``quant.dit``)
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
