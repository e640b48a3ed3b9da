"""Text-to-video: Wan2.1 T2V (one DiT) and Wan2.2 T2V-A14B (two experts) (docs/wan-model.md §6.2, §3).

Per call: noise of the plan's latent shape from the seed, the prompt's T5 context (and the
negative prompt's, unless guidance is off), the sampling loop -- nothing else conditions the
model.
"""

from __future__ import annotations

from typing import Optional

import torch

from .generator import Denoising, Generator, experts_report
from .noise import initial_noise


class T2VGenerator(Generator):
    def condition(self, call, ctx_cond: torch.Tensor, ctx_uncond: Optional[torch.Tensor]) -> Denoising:
        plan = call.plan
        self.models.vae(call.clock)  # for the decode
        experts, finish = self.experts(call)
        # drawn in the official shape (no batch dim), so `noise: device` matches the official draw
        latent = initial_noise(plan.latent_shape, plan.seed, plan.noise, self.prep.device)[None]
        return Denoising(experts, latent, {"context": ctx_cond},
                         {"context": ctx_uncond} if ctx_uncond is not None else None,
                         plan.width, plan.height, plan.frame_num, finish=finish)


__all__ = ["T2VGenerator", "experts_report"]
