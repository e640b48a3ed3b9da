"""The denoising loop shared by every task (docs/wan-model.md §6.1, §6.2, §3).

Per step: pick the expert for the step's timestep (one model, or the Wan2.2 high/low-noise
switch of :mod:`.moe`), a conditional and an unconditional forward with classifier-free guidance
``v = v_u + g * (v_c - v_u)`` (the unconditional one skipped when ``g == 1``), one scheduler step,
then an optional fix-up of the sample (TI2V puts the first frame's latent back after every step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple

import torch

from .timing import StageClock


@dataclass(frozen=True)
class Expert:
    """A model to call at a step, its name in reports and the CFG scale that goes with it."""

    name: str
    model: Callable[..., torch.Tensor]
    guide_scale: float


class SingleExpert:
    """One model for every step."""

    def __init__(self, model: Callable[..., torch.Tensor], guide_scale: float, name: str = "dit") -> None:
        self.expert = Expert(name, model, float(guide_scale))

    def select(self, t: int) -> Expert:
        return self.expert


TimestepFn = Callable[[torch.Tensor], torch.Tensor]
AfterStepFn = Callable[[torch.Tensor], torch.Tensor]


class LoopObserver:
    """Hooks of the denoising loop (e.g. ``wanport dump`` records tensors through them).

    The loop calls ``step_start`` before a step's forwards, ``forward`` right before each model
    call (``branch`` is "cond" or "uncond"), and ``step_end`` with the updated latent; after the
    loop, the pipeline calls ``video_decoded`` with the decoded video [3, F, H, W] in [-1, 1]
    before writing it. The base class does nothing; subclasses override what they need.
    Observers must not modify tensors.
    """

    def step_start(self, index: int, t: int, expert: Expert) -> None:
        return None

    def forward(self, index: int, branch: str) -> None:
        return None

    def step_end(self, index: int, latent: torch.Tensor) -> None:
        return None

    def video_decoded(self, video: torch.Tensor) -> None:
        return None


def denoise_loop(
    experts,
    scheduler,
    latent: torch.Tensor,
    cond: Mapping[str, Any],
    uncond: Optional[Mapping[str, Any]],
    clock: Optional[StageClock] = None,
    progress: bool = True,
    timestep_fn: Optional[TimestepFn] = None,
    after_step: Optional[AfterStepFn] = None,
    observer: Optional[LoopObserver] = None,
    cfg_parallel=None,
    feature_cache=None,
) -> Tuple[torch.Tensor, List[str]]:
    """Run every step of ``scheduler`` on ``latent`` [1, C, T, H, W].

    ``experts.select(t)`` gives the :class:`Expert` for integer timestep ``t``; ``cond`` and
    ``uncond`` are keyword arguments of the model call besides ``(latent, t)`` (``context=...``,
    ``y=...``, ``clip_fea=...``); ``uncond`` None disables guidance. ``timestep_fn`` maps the
    step's timestep (a 0-d int64 tensor) to what the model receives (default ``[t]``; TI2V: one
    per token). ``observer`` (a :class:`LoopObserver`) sees every step and forward.
    ``cfg_parallel`` (``wanport.parallel.cfg.CfgParallel``) runs the two guidance branches on two
    rank groups instead of one after the other. ``feature_cache`` (``wanport.cache.runner.FeatureCache``,
    attached to the models) is told the step, branch and expert of every forward, and the bar shows
    its reuse count. Returns the final latent and the expert name
    used at each step."""
    from tqdm.auto import tqdm

    obs = observer if observer is not None else LoopObserver()
    names: List[str] = []
    steps = scheduler.timesteps
    bar = tqdm(total=len(steps), desc="denoise", unit="step", disable=not progress, leave=False)
    try:
        for i, t in enumerate(steps):
            expert = experts.select(int(t))  # before the step clock: a parked expert's move is timed apart
            start = clock.now() if clock else 0.0
            obs.step_start(i, int(t), expert)
            tt = timestep_fn(t) if timestep_fn is not None else t.reshape(1)
            guided = uncond is not None and expert.guide_scale != 1.0
            if guided and cfg_parallel is not None:
                obs.forward(i, cfg_parallel.branch)
                if feature_cache is not None:
                    feature_cache.enter(i, cfg_parallel.branch, expert.name)
                v = cfg_parallel.guided(expert.model, latent, tt, cond, uncond, expert.guide_scale)
            else:
                obs.forward(i, "cond")
                if feature_cache is not None:
                    feature_cache.enter(i, "cond", expert.name)
                v = expert.model(latent, tt, **cond)
                if guided:
                    obs.forward(i, "uncond")
                    if feature_cache is not None:
                        feature_cache.enter(i, "uncond", expert.name)
                    v_uncond = expert.model(latent, tt, **uncond)
                    v = v_uncond + expert.guide_scale * (v - v_uncond)
            latent = scheduler.step(v, latent)
            if after_step is not None:
                latent = after_step(latent)
            obs.step_end(i, latent)
            names.append(expert.name)
            if clock:
                clock.steps.append(clock.now() - start)
            if feature_cache is not None:
                bar.set_postfix(reused=feature_cache.reused, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    return latent, names


__all__ = ["Expert", "LoopObserver", "SingleExpert", "denoise_loop"]
