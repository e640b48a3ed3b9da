"""The sampler of the step-distilled Wan models (4 steps, no CFG).

The distilled models (LightX2V's distill LoRAs and merged checkpoints) are trained for a fixed
list of training timesteps, ``denoising_step_list`` (e.g. ``[1000, 750, 500, 250]``), and a
flow shift (``sample_shift``, 5). Their scheduler (LightX2V ``WanStepDistillScheduler``):

* the 1000 training sigmas ``linspace(1, 0, 1001)[:-1]``, shifted
  ``s' = shift * s / (1 + (shift - 1) * s)``, all in float32;
* step ``i`` uses the entry at index ``1000 - t_i``: sigma_i = s'[1000 - t_i] and the model
  receives the *float* timestep ``sigma_i * 1000`` (937.5 for t = 750 at shift 5), not an integer;
* from the flow prediction ``v``: ``x0 = x - sigma_i * v``; the next latent is
  ``x0 + sigma_{i+1} * v`` (the same ``v`` carries the noise direction), and the last step
  returns ``x0``. Computed in float32 in that order.

There is no fresh noise between steps (the next latent re-uses the predicted flow, not a new
draw), so one seed's initial noise, drawn on the host, gives one video on every backend.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError
from .base import FlowScheduler
from .sigmas import NUM_TRAIN_TIMESTEPS, check_shift

#: the list the published 4-step distilled Wan models are trained for
DEFAULT_STEP_LIST = (1000, 750, 500, 250)


def check_step_list(step_list) -> Tuple[int, ...]:
    """Strictly decreasing integers in [1, 1000]; ConfigError otherwise."""
    try:
        values = [v for v in step_list]
    except TypeError:
        raise ConfigError("denoising_step_list must be a list of integers, got %r" % (step_list,)) from None
    if not values:
        raise ConfigError("denoising_step_list is empty; the published 4-step list is %s" % list(DEFAULT_STEP_LIST))
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise ConfigError("denoising_step_list must hold integers (training timesteps), got %r" % (values,))
    if any(v < 1 or v > NUM_TRAIN_TIMESTEPS for v in values) or any(a <= b for a, b in zip(values, values[1:])):
        raise ConfigError("denoising_step_list must be strictly decreasing integers in [1, %d], got %r"
                          % (NUM_TRAIN_TIMESTEPS, values))
    return tuple(int(v) for v in values)


def distill_sigmas(step_list: Sequence[int], shift: float) -> np.ndarray:
    """float32 sigmas of the steps (before the final 0), as the distilled models' scheduler has them."""
    steps = check_step_list(step_list)
    shift = check_shift(shift)
    base = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)[:-1]
    shifted = shift * base / (1 + (shift - 1) * base)  # float32 throughout
    index = torch.tensor([NUM_TRAIN_TIMESTEPS - t for t in steps], dtype=torch.long)
    return shifted[index].numpy()


class FlowStepDistillScheduler(FlowScheduler):
    """Few-step sampling of the step-distilled models (``sample.solver: distill``)."""

    name = "distill"

    def __init__(self, denoising_step_list: Sequence[int] = DEFAULT_STEP_LIST, shift: float = 5.0) -> None:
        self.step_list = check_step_list(denoising_step_list)
        self.shift = check_shift(shift)
        s32 = distill_sigmas(self.step_list, self.shift)
        self._set_schedule(s32.astype(np.float64), timesteps=np.zeros(len(s32), dtype=np.int64))
        # the model's timesteps are the float32 products sigma * 1000
        self._timesteps = torch.from_numpy(s32) * float(NUM_TRAIN_TIMESTEPS)

    def _step(self, k: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        v = model_output.to(torch.float32)
        x0 = sample.to(torch.float32) - self._sigma_values[k] * v
        if k < self._num_steps - 1:
            return x0 + self._sigma_values[k + 1] * v
        return x0

    def __repr__(self) -> str:
        return "%s(steps=%s, shift=%g, step_index=%d)" % (type(self).__name__, list(self.step_list), self.shift,
                                                          self._step_index)


__all__ = ["FlowStepDistillScheduler", "DEFAULT_STEP_LIST", "check_step_list", "distill_sigmas"]
