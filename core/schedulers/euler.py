"""First-order (Euler) sampler for flow matching.

The probability-flow ODE in sigma is ``dx/dsigma = v``, so one explicit Euler step is

    x_next = x + (sigma_next - sigma) * v

and the last step (``sigma_next = 0``) lands on the data prediction ``x - sigma * v``.

Two schedules:

* ``FlowEulerScheduler(steps, shift)`` -- the official dpm++ schedule (``get_sampling_sigmas``):
  shifted ``linspace(1, 0, N+1)[:N]``, starting at exactly sigma 1 (timestep 1000), then 0;
* ``FlowEulerScheduler(timesteps=[...], shift=...)`` -- an explicit step list for distilled
  few-step models: ``sigma_i = shift(t_i / 1000)``, then 0. The model receives
  ``int(sigma_i * 1000)`` (equal to ``t_i`` for integer ``t_i`` when shift is 1).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import ConfigError
from .base import FlowScheduler
from .sigmas import check_shift, check_steps, check_timesteps, sampling_sigmas, sigmas_from_timesteps


class FlowEulerScheduler(FlowScheduler):
    """Euler steps over the dpm++-style schedule or an explicit timestep list."""

    name = "euler"

    def __init__(
        self,
        steps: Optional[int] = None,
        shift: float = 1.0,
        timesteps: Optional[Sequence[float]] = None,
    ) -> None:
        shift = check_shift(shift)
        if timesteps is not None:
            t = check_timesteps(timesteps)
            if steps is not None and check_steps(steps) != t.size:
                raise ConfigError(
                    f"steps={steps} but timesteps has {t.size} entries; pass only timesteps= "
                    "(the number of steps is inferred) or make the two agree"
                )
            sigmas = sigmas_from_timesteps(t, shift)
        elif steps is None:
            raise ConfigError(
                "the euler scheduler needs steps=N or an explicit timesteps=[...] list"
            )
        else:
            sigmas = sampling_sigmas(check_steps(steps), shift)
        self.shift = shift
        self._set_schedule(sigmas)
        s = self._sigmas  # step sizes: float32 differences of the float32 sigmas
        self._dsigmas = tuple(float(v) for v in (s[1:] - s[:-1]))

    def _step(self, k: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return sample + self._dsigmas[k] * model_output

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", shift={self.shift})"
