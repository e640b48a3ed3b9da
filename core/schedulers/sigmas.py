"""Noise-level (sigma) schedules for flow-matching sampling, and their argument checks.

Flow convention (docs/wan-model.md §6.1): ``x_sigma = (1 - sigma) * x0 + sigma * noise``; sigma runs from about 1
(pure noise) down to 0 (clean). The model is conditioned on an integer timestep on a 0..1000 scale,
``timestep = int(sigma * 1000)`` (truncation, exactly as the official code casts to int64), while the
solvers use the float sigmas themselves.

Every function here returns the ``N`` sigmas of the steps in float64; the scheduler appends the
final 0 and stores them as float32, like the official ``set_timesteps``.

* :func:`unipc_sigmas` -- the official UniPC schedule: ``N`` points of a linspace from the largest
  *training* sigma (0.999 as float32) down to 0 (exclusive), then shifted.
* :func:`sampling_sigmas` -- the official ``get_sampling_sigmas`` (used with ``--sample_solver
  dpm++``): a linspace from exactly 1.0, then shifted. wanport's Euler sampler uses it.
* :func:`sigmas_from_timesteps` -- an explicit list of timesteps (distilled few-step models).
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ConfigError

#: length of the training noise schedule; timesteps live on a 0..1000 scale
NUM_TRAIN_TIMESTEPS = 1000


# --------------------------------------------------------------------------------------------
# argument checks (raise ConfigError naming the fix)
# --------------------------------------------------------------------------------------------


def check_steps(steps: Any) -> int:
    """Return ``steps`` as an int, or raise ConfigError."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ConfigError(
            f"steps must be a positive integer, got {steps!r} ({type(steps).__name__}); "
            "pass e.g. steps=50"
        )
    if steps <= 0:
        raise ConfigError(f"steps must be a positive integer, got {steps}; pass e.g. steps=50")
    return int(steps)


def check_shift(shift: Any) -> float:
    """Return ``shift`` as a float, or raise ConfigError."""
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real):
        raise ConfigError(
            f"shift must be a positive number, got {shift!r} ({type(shift).__name__}); "
            "pass e.g. shift=5.0 (1.0 means no shift)"
        )
    value = float(shift)
    if not math.isfinite(value) or value <= 0.0:
        raise ConfigError(
            f"shift must be a positive finite number, got {shift!r}; "
            "pass e.g. shift=5.0 (1.0 means no shift)"
        )
    return value


def check_timesteps(timesteps: Any) -> np.ndarray:
    """Validate an explicit timestep list; return it as a float64 array.

    The list must be non-empty, every entry a real number in ``(0, 1000]``, strictly decreasing
    (from high noise to low noise). The clean end (0) is not part of the list: it is where the
    last step lands.
    """
    if isinstance(timesteps, (str, bytes)):
        raise ConfigError(
            f"timesteps must be a list of numbers, got the string {timesteps!r}; "
            "pass e.g. timesteps=[1000, 750, 500, 250]"
        )
    try:
        values = list(timesteps)
    except TypeError:
        raise ConfigError(
            f"timesteps must be a list of numbers, got {timesteps!r}; "
            "pass e.g. timesteps=[1000, 750, 500, 250]"
        ) from None
    if not values:
        raise ConfigError(
            "timesteps is empty; give at least one timestep, e.g. timesteps=[1000, 750, 500, 250]"
        )
    out = []
    for i, t in enumerate(values):
        if hasattr(t, "item") and not isinstance(t, numbers.Real):  # 0-dim tensor / numpy scalar
            try:
                t = t.item()
            except (ValueError, RuntimeError):
                raise ConfigError(
                    f"timesteps[{i}] is not a single number; pass a flat list such as "
                    "[1000, 750, 500, 250]"
                ) from None
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise ConfigError(
                f"timesteps[{i}] = {t!r} is not a number; timesteps must be numbers in (0, 1000]"
            )
        v = float(t)
        if not (math.isfinite(v) and 0.0 < v <= NUM_TRAIN_TIMESTEPS):
            raise ConfigError(
                f"timesteps[{i}] = {t!r} is outside (0, {NUM_TRAIN_TIMESTEPS}]; timesteps use the "
                f"model's 0..{NUM_TRAIN_TIMESTEPS} scale, start at most at {NUM_TRAIN_TIMESTEPS} "
                "(pure noise) and exclude 0 (the clean end is reached after the last step)"
            )
        out.append(v)
    for i in range(len(out) - 1):
        if not out[i] > out[i + 1]:
            raise ConfigError(
                f"timesteps must be strictly decreasing, but timesteps[{i}] = {values[i]!r} and "
                f"timesteps[{i + 1}] = {values[i + 1]!r}; list them from high noise to low noise "
                "without repeats, e.g. [1000, 750, 500, 250]"
            )
    return np.asarray(out, dtype=np.float64)


def closest_name(name: str, choices: Sequence[str]) -> Optional[str]:
    """The entry of ``choices`` closest to ``name`` (or None when nothing is close)."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.4)
    return found[0] if found else None


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------


def apply_shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow shift ``shift * s / (1 + (shift - 1) * s)`` (float64, elementwise).

    shift > 1 spends more of the steps at high noise; shift = 1 is the identity.
    """
    s = np.asarray(sigmas, dtype=np.float64)
    return shift * s / (1 + (shift - 1) * s)


def training_sigma_range(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """(sigma_max, sigma_min) of the official training schedule, as the official class derives them.

    The official scheduler builds ``1 - linspace(1, 1/T, T)[::-1]`` (0.999 ... 0), stores it as
    float32 and reads its ends back, so sigma_max = float32(0.999) = 0.9990000128746033.
    """
    train = (1.0 - np.linspace(1, 1 / num_train_timesteps, num_train_timesteps)[::-1]).astype(
        np.float32
    )
    return float(train[0]), float(train[-1])


def unipc_sigmas(steps: int, shift: float) -> np.ndarray:
    """The official FlowUniPCMultistepScheduler schedule for ``steps`` steps (float64, no final 0)."""
    steps = check_steps(steps)
    shift = check_shift(shift)
    sigma_max, sigma_min = training_sigma_range()
    s = np.linspace(sigma_max, sigma_min, steps + 1)[:-1]
    return apply_shift(s, shift)


def sampling_sigmas(steps: int, shift: float) -> np.ndarray:
    """The official ``get_sampling_sigmas`` (dpm++ path): shifted ``linspace(1, 0, N+1)[:N]``."""
    steps = check_steps(steps)
    shift = check_shift(shift)
    s = np.linspace(1, 0, steps + 1)[:steps]
    return apply_shift(s, shift)


def sigmas_from_timesteps(timesteps: Sequence[float], shift: float) -> np.ndarray:
    """Sigmas of an explicit timestep list: ``shift`` applied to ``t / 1000``."""
    t = check_timesteps(timesteps)
    shift = check_shift(shift)
    return apply_shift(t / NUM_TRAIN_TIMESTEPS, shift)


def timesteps_from_sigmas(sigmas: np.ndarray) -> np.ndarray:
    """Model timesteps ``int64(sigma * 1000)`` (truncation toward zero, as the official cast)."""
    return (np.asarray(sigmas, dtype=np.float64) * NUM_TRAIN_TIMESTEPS).astype(np.int64)
