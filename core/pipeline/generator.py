"""What a model family does in one call, between the text encoding and the decode.

A family's generator (:class:`~.t2v.T2VGenerator`, :class:`~.i2v.I2VGenerator`,
:class:`~.ti2v.TI2VGenerator`) turns a call's plan and text contexts into a :class:`Denoising`:
the initial latent, the keyword arguments of the conditional and unconditional forwards, the
models per step (one DiT, or the Wan2.2 A14B expert switch), and the family's part of the
report. The shared shell (:class:`wanport.pipeline.api.Pipeline`) runs the rest: text, the
sampling loop, the decode, the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .moe import ExpertSwitch
from .sampling import SingleExpert


@dataclass
class Denoising:
    """The inputs of one call's sampling loop."""

    experts: Any  # .select(t) -> Expert
    latent: torch.Tensor
    cond: Dict[str, Any]
    uncond: Optional[Dict[str, Any]]
    #: the video (width, height, frames)
    width: int
    height: int
    frames: int
    timestep_fn: Optional[Callable] = None
    after_step: Optional[Callable] = None
    #: the family's part of the report (image, conditioning, mode, ...)
    report: Dict[str, Any] = field(default_factory=dict)
    #: called with the expert name of every step after the loop (the experts' report)
    finish: Optional[Callable[[List[str], Dict[str, Any]], None]] = None


def experts_report(plan, info: Dict[str, Any], names) -> Dict[str, Any]:
    """The MoE part of a report: the boundary, the expert and guide scale of every step."""
    low, high = plan.guide_scales
    out = {
        "boundary": plan.boundary,
        "boundary_timestep": plan.boundary * 1000,
        "guide_scale": {"low_noise": low, "high_noise": high},
        "per_step": names,
        "guide_scale_per_step": [high if n == "high_noise" else low for n in names],
        "steps": {n: names.count(n) for n in ("high_noise", "low_noise")},
    }
    out.update(info)
    return out


class Generator:
    """The family-independent part: the models per step. Subclasses implement :meth:`condition`."""

    #: Wan2.1 I2V: the CLIP tower encodes the image
    uses_clip = False

    def __init__(self, prep, models) -> None:
        self.prep = prep
        self.models = models

    def condition(self, call, ctx_cond: torch.Tensor, ctx_uncond: Optional[torch.Tensor]) -> Denoising:
        raise NotImplementedError

    def experts(self, call) -> Tuple[Any, Optional[Callable]]:
        """(the models per step, a finish callback writing the experts' report or None). The
        loaded models are bound to the call's op table; a two-expert switch is made per call
        (boundary and guide scales are per-call values; the parking state carries over)."""
        plan, clock = call.plan, call.clock
        if not self.prep.ckpts.experts:
            return SingleExpert(self.models.dit(clock).bind_ops(call.ops), plan.guide_scale), None
        models, parking, info = self.models.experts(clock)
        for model in models.values():
            model.bind_ops(call.ops)
        switch = ExpertSwitch(models, plan.boundary, plan.guide_scales, parking)
        first = len(parking.moves) if parking is not None else 0

        def finish(names: List[str], report: Dict[str, Any]) -> None:
            report["experts"] = experts_report(plan, dict(info, moves=switch.moves()[first:]), names)

        return switch, finish


__all__ = ["Denoising", "Generator", "experts_report"]
