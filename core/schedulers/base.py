"""Common interface of wanport's flow-matching samplers.

A scheduler owns a fixed schedule of ``N`` steps:

* ``timesteps`` -- int64 ``[N]`` on the CPU, what the model is conditioned on at each step;
* ``sigmas`` -- float32 ``[N + 1]`` on the CPU, the noise levels, ending with 0.

``step(model_output, sample)`` takes the model's velocity prediction ``v ~ noise - x0`` at the
current step and the current sample, and returns the sample at the next noise level. The step
counter is internal: call ``step`` exactly once per entry of ``timesteps``, in order.

Device rules: the tensors handed to ``step`` are never moved or modified in place; every
coefficient is a Python float computed once on the CPU (from the float32 sigmas, as the official
code does), so a step launches only elementwise tensor ops on the caller's device and never
synchronises with it. The scheduler keeps references to the tensors it was given (multistep
history): do not modify them in place after the call.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .sigmas import timesteps_from_sigmas


class FlowScheduler:
    """Base class: schedule bookkeeping, step counting and argument checks.

    Subclasses implement :meth:`_step` (one update, given the step index) and, when they keep
    history, :meth:`_clear_history`.
    """

    #: short name used by :func:`wanport.schedulers.make_scheduler`
    name = "base"

    def _set_schedule(
        self, sigmas: Sequence[float], timesteps: Optional[Sequence[int]] = None
    ) -> None:
        """Install ``N`` step sigmas (float64, before the final 0) and their model timesteps.

        Sigmas must be finite, in (0, 1], strictly decreasing. Without ``timesteps`` the model
        timesteps are ``int(sigma * 1000)``.
        """
        s64 = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        if s64.size == 0:
            raise ConfigError(f"{type(self).__name__}: the schedule has no steps")
        if not np.all(np.isfinite(s64)) or np.any(s64 <= 0.0) or np.any(s64 > 1.0):
            raise ConfigError(
                f"{type(self).__name__}: sigmas must lie in (0, 1], got {s64.tolist()}"
            )
        if np.any(np.diff(s64) >= 0.0):
            raise ConfigError(
                f"{type(self).__name__}: sigmas must be strictly decreasing, got {s64.tolist()}"
            )
        if timesteps is None:
            ts = timesteps_from_sigmas(s64)
        else:
            ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
            if ts.shape != s64.shape:
                raise ConfigError(
                    f"{type(self).__name__}: {ts.size} timesteps for {s64.size} sigmas"
                )
        # float32 like the official scheduler; the solvers read these exact values
        s32 = np.concatenate([s64, [0.0]]).astype(np.float32)
        if np.any(np.diff(s32) >= 0.0):
            raise ConfigError(
                f"{type(self).__name__}: {s64.size} steps are too many: neighbouring sigmas "
                "coincide in float32; use fewer steps"
            )
        self._sigmas = torch.from_numpy(s32)
        self._timesteps = torch.from_numpy(np.ascontiguousarray(ts))
        #: the float32 sigmas as Python floats (exact), for the per-step scalar arithmetic
        self._sigma_values = tuple(float(v) for v in s32)
        self._num_steps = int(s64.size)
        self._step_index = 0

    # ---------------------------------------------------------------- schedule (read-only)

    @property
    def timesteps(self) -> torch.Tensor:
        """int64 ``[N]`` (CPU): the timestep the model receives at each step (a copy)."""
        return self._timesteps.clone()

    @property
    def sigmas(self) -> torch.Tensor:
        """float32 ``[N + 1]`` (CPU): the noise level before each step, then the final 0 (a copy)."""
        return self._sigmas.clone()

    @property
    def num_steps(self) -> int:
        """N, the number of model evaluations / calls to :meth:`step`."""
        return self._num_steps

    def __len__(self) -> int:
        return self._num_steps

    # ---------------------------------------------------------------- stepping

    @property
    def step_index(self) -> int:
        """How many steps have been taken since construction or the last :meth:`reset`."""
        return self._step_index

    @property
    def finished(self) -> bool:
        return self._step_index >= self._num_steps

    def reset(self) -> None:
        """Back to step 0 with the history cleared; the schedule is kept."""
        self._step_index = 0
        self._clear_history()

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance one step: return the sample at ``sigmas[step_index + 1]``.

        ``model_output`` is the velocity prediction at the current step for ``sample`` (same
        shape, same device). The result has ``sample``'s dtype and device.
        """
        k = self._step_index
        if k >= self._num_steps:
            raise RuntimeError(
                f"{type(self).__name__}.step() called {k + 1} times, but the schedule has only "
                f"{self._num_steps} steps; call reset() to sample again with the same schedule "
                "or build a new scheduler"
            )
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__}.step() expects tensors, got "
                f"{type(model_output).__name__} and {type(sample).__name__}"
            )
        if model_output.shape != sample.shape:
            raise ValueError(
                f"{type(self).__name__}.step(): model_output shape {tuple(model_output.shape)} "
                f"differs from sample shape {tuple(sample.shape)}"
            )
        out = self._step(k, model_output, sample)
        self._step_index = k + 1
        if out.dtype != sample.dtype:
            out = out.to(sample.dtype)
        return out

    # ---------------------------------------------------------------- subclass hooks

    def _step(self, k: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _clear_history(self) -> None:
        pass

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_steps={self._num_steps}, step_index={self._step_index}, "
            f"first_timestep={int(self._timesteps[0])}, first_sigma={self._sigma_values[0]:.8f})"
        )
