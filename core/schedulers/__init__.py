"""Flow-matching samplers (docs/wan-model.md §6.1).

``make_scheduler(name, steps=..., shift=..., timesteps=...)`` is the entry point:

* ``"unipc"`` -- :class:`FlowUniPCScheduler`, the official Wan default (UniPC bh2, order 2) on the
  official schedule (sigmas from 0.999, shifted);
* ``"euler"`` -- :class:`FlowEulerScheduler`, first-order steps on the official dpm++ schedule
  (sigmas from 1.0, shifted) or on an explicit ``timesteps`` list;
* ``"distill"`` -- :class:`FlowStepDistillScheduler`, the sampler the step-distilled models are
  trained for (``denoising_step_list``, e.g. [1000, 750, 500, 250]; float timesteps; no CFG).

Every scheduler exposes ``timesteps`` (int64 [N], CPU), ``sigmas`` (float32 [N+1], CPU, last 0),
``num_steps``, ``step(model_output, sample)``, ``step_index`` and ``reset()``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import ConfigError
from .base import FlowScheduler
from .euler import FlowEulerScheduler
from .sigmas import check_shift, check_steps, check_timesteps, closest_name
from .step_distill import FlowStepDistillScheduler
from .unipc import FlowUniPCScheduler

#: valid scheduler names, for make_scheduler
SCHEDULERS = ("unipc", "euler", "distill")


def make_scheduler(
    name: str,
    steps: Optional[int] = None,
    shift: float = 1.0,
    timesteps: Optional[Sequence[float]] = None,
    denoising_step_list: Optional[Sequence[int]] = None,
) -> FlowScheduler:
    """Build a scheduler with its timesteps set.

    ``steps``: number of model evaluations. ``shift``: the flow shift (> 0; 1.0 = none).
    ``timesteps`` (euler only): explicit decreasing list in (0, 1000]; ``steps`` is inferred and,
    if also given, must match its length. Invalid arguments raise :class:`ConfigError`.
    """
    if not isinstance(name, str):
        raise ConfigError(
            f"scheduler name must be a string, got {name!r}; choose one of {', '.join(SCHEDULERS)}"
        )
    key = name.strip().lower()
    if key not in SCHEDULERS:
        near = closest_name(key, SCHEDULERS)
        hint = f"did you mean '{near}'? " if near else ""
        raise ConfigError(
            f"unknown scheduler '{name}'; {hint}choose one of: {', '.join(SCHEDULERS)}"
        )
    shift = check_shift(shift)
    if key == "distill" or denoising_step_list is not None:
        if key != "distill":
            raise ConfigError(f"denoising_step_list is for the 'distill' scheduler, not '{key}'")
        if timesteps is not None:
            raise ConfigError("the 'distill' scheduler takes denoising_step_list=[...], not timesteps=")
        if denoising_step_list is None:
            raise ConfigError("the 'distill' scheduler needs denoising_step_list=[...] (the distilled model's "
                              "trained timesteps, e.g. [1000, 750, 500, 250])")
        sched = FlowStepDistillScheduler(denoising_step_list, shift)
        if steps is not None and check_steps(steps) != sched.num_steps:
            raise ConfigError(f"steps={steps} but denoising_step_list has {sched.num_steps} entries; drop steps")
        return sched
    if timesteps is not None:
        t = check_timesteps(timesteps)
        if steps is not None and check_steps(steps) != t.size:
            raise ConfigError(
                f"steps={steps} but timesteps has {t.size} entries; pass only timesteps= "
                "(the number of steps is inferred) or make the two agree"
            )
        if key != "euler":
            raise ConfigError(
                f"an explicit timesteps list is supported by the 'euler' scheduler only, not "
                f"'{key}'; use make_scheduler('euler', timesteps=[...], shift=...) or give "
                f"steps=N to '{key}'"
            )
        return FlowEulerScheduler(timesteps=t.tolist(), shift=shift)
    if steps is None:
        raise ConfigError(
            f"scheduler '{key}' needs the number of steps: pass steps=N (e.g. steps=50)"
            + (" or an explicit timesteps=[...] list" if key == "euler" else "")
        )
    steps = check_steps(steps)
    if key == "unipc":
        return FlowUniPCScheduler(steps, shift)
    return FlowEulerScheduler(steps, shift)


__all__ = [
    "SCHEDULERS",
    "FlowEulerScheduler",
    "FlowScheduler",
    "FlowStepDistillScheduler",
    "FlowUniPCScheduler",
    "make_scheduler",
]
