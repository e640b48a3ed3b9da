"""The frozen op table handed to the model: one resolved callable per call site."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Dict, Optional

if TYPE_CHECKING:
    from ..parallel.sequence import SequencePlan


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
    add_layer_norm_modulate: ResolvedOp
    qk_norm_rope: ResolvedOp
    gated_residual: ResolvedOp
    linear_gelu: ResolvedOp
    #: the quantized Linears' kernels (a ``wanport.ops.quant.QuantKernels`` in ``fn``); None when the
    #: recipe's ``quant.dit`` is none
    quant_linear: Optional[ResolvedOp] = None
    #: sequence parallelism (``wanport.parallel.sequence.SequencePlan``): how the model splits and
    #: gathers its tokens; None on a single device. Set together with the self-attention wrapper.
    sequence: Optional["SequencePlan"] = None
    #: the VAEs' channel RMS norm (+SiLU); None when the table was resolved for a DiT alone
    channel_rms_norm: Optional[ResolvedOp] = None

    def describe(self) -> Dict[str, str]:
        """Call site -> qualified implementation name (for reports)."""
        return {f.name: getattr(self, f.name).impl for f in fields(self)
                if isinstance(getattr(self, f.name), ResolvedOp)}
