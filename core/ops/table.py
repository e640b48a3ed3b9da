"""The frozen op table handed to the model: one resolved callable per call site."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict


@dataclass(frozen=True)
class ResolvedOp:
    site: str
    kind: str
    impl: str  # qualified name, backend.impl
    fn: Callable
    why: str = ""  # "override" / "default" / "fallback: <reason>"

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


@dataclass(frozen=True)
class OpTable:
    """Resolved once at pipeline start; the model calls these fields directly."""

    self_attention: ResolvedOp
    cross_attention: ResolvedOp
    rotary: ResolvedOp
    rms_norm: ResolvedOp
    layer_norm: ResolvedOp
    layer_norm_modulate: ResolvedOp

    def describe(self) -> Dict[str, str]:
        """Call site -> qualified implementation name (for reports)."""
        return {
            name: getattr(self, name).impl
            for name in (
                "self_attention",
                "cross_attention",
                "rotary",
                "rms_norm",
                "layer_norm",
                "layer_norm_modulate",
            )
        }
