"""UniPC multistep sampler for flow matching (Wan's default ``--sample_solver unipc``).

Written from the UniPC method (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework
for fast sampling of diffusion models") in the variant the official Wan code runs (docs/wan-model.md §6.1):
data prediction (``predict_x0``), ``B(h) = expm1(-h)`` ("bh2"), solver order 2, lower order on the
final step, the corrector on every step after the first, final sigma 0.

Notation. In flow matching ``x = alpha * x0 + sigma * noise`` with ``alpha = 1 - sigma``; the model
predicts the velocity ``v ~ noise - x0``, so the data prediction is ``x0 = x - sigma * v``. With the
log signal-to-noise ratio ``lambda = log(alpha) - log(sigma)``, moving from noise level ``s`` to
``t`` (``h = lambda_t - lambda_s > 0``) the exact solution of the probability-flow ODE is

    x_t = (sigma_t / sigma_s) x_s + alpha_t * integral_0^h e^{-(h - u)} x0(lambda_s + u) du.

Freezing ``x0`` at its value ``m0`` at ``s`` gives the first-order (DDIM) update
``x_t = (sigma_t / sigma_s) x_s - alpha_t * expm1(-h) * m0``. UniPC adds a correction built from
divided differences ``D_i = (m_i - m0) / r_i`` of earlier (or, for the corrector, the new) data
predictions, ``r_i = (lambda_{s_i} - lambda_s) / h``:

    x_t = (sigma_t / sigma_s) x_s - alpha_t * expm1(-h) * m0 - alpha_t * B(h) * sum_i rho_i D_i

The weights solve ``sum_i rho_i * r_i^(k-1) = b_k`` (k = 1 .. number of differences) with
``b_k = k! * g_k / B(h)`` and ``g_k = (-h) * phi_{k+1}(-h)`` (``phi_j`` the exponential-integrator
phi functions), evaluated by the recursion ``g_1 = expm1(-h) / (-h) - 1``,
``g_{k+1} = g_k / (-h) - 1 / (k+1)!``. The corrector's last difference uses the new data
prediction (``r = 1``). Special cases, as in the official method: a second-order predictor uses
``rho = 1/2`` and a first-order corrector uses ``rho = 1/2`` instead of solving.

One call of :meth:`FlowUniPCScheduler.step` at step ``k`` (sigma ``s_k``):

1. data prediction ``x0_k = sample - s_k * v``;
2. for ``k > 0``, UniC: redo the previous update ``s_{k-1} -> s_k`` from the sample that update
   started from, now also using ``x0_k`` (order = the order of the previous predictor); the
   result replaces ``sample`` (``x0_k`` itself stays the one computed in 1.);
3. push ``x0_k`` into the history (the last ``solver_order`` data predictions);
4. UniP: predict the sample at ``s_{k+1}`` with order ``min(solver_order, k + 1, N - k)``
   (warm-up, then lower order at the end); at the final step (``s_N = 0``) the result is
   exactly ``x0_k``.

All scalar coefficients are computed once on the CPU in float32 from the float32 sigmas, in the
same arithmetic the official implementation uses, so float32 latents follow it closely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from .base import FlowScheduler
from .sigmas import check_shift, check_steps, unipc_sigmas

SUPPORTED_ORDERS = (1, 2, 3)


@dataclass(frozen=True)
class _Update:
    """Coefficients of one UniP or UniC update from noise level ``s`` to ``t`` (Python floats).

    result = x_scale * x_s - x0_scale * m0 - res_scale * (sum_i rhos[i] * D_i [+ rhos[-1] * D_new])
    with ``D_i = (m_i - m0) / rks[i]`` over the older data predictions.
    """

    order: int
    x_scale: float  # sigma_t / sigma_s
    x0_scale: float  # alpha_t * expm1(-h)
    res_scale: float  # alpha_t * B(h), B(h) = expm1(-h)
    rks: Tuple[float, ...]  # one per older data prediction (order - 1 of them)
    rhos: Tuple[float, ...]  # predictor: order - 1 weights; corrector: order weights


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha) - log(sigma), alpha = 1 - sigma (float32 0-dim in, float32 out)."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _update_coefficients(
    sigmas: torch.Tensor, source: int, target: int, older: Sequence[int], corrector: bool
) -> _Update:
    """Coefficients for moving from ``sigmas[source]`` to ``sigmas[target]`` (> 0).

    ``older`` lists the sigma indices of the earlier data predictions m_1, m_2, ... (newest
    first); the update order is ``len(older) + 1``. float32 CPU arithmetic throughout.
    """
    order = len(older) + 1
    sigma_t, sigma_s = sigmas[target], sigmas[source]
    alpha_t = 1 - sigma_t
    lam_s = _log_snr(sigma_s)
    h = _log_snr(sigma_t) - lam_s
    neg_h = -h
    h_phi_1 = torch.expm1(neg_h)  # (-h) * phi_1(-h) = e^{-h} - 1
    b_h = torch.expm1(neg_h)  # bh2

    rks = [(_log_snr(sigmas[i]) - lam_s) / h for i in older]

    # right-hand side b_k = g_k * k! / B(h), g_1 = h_phi_1 / (-h) - 1, g_{k+1} = g_k / (-h) - 1/(k+1)!
    rhs: List[torch.Tensor] = []
    g = h_phi_1 / neg_h - 1
    fact = 1
    for k in range(1, order + 1):
        rhs.append(g * fact / b_h)
        fact *= k + 1
        g = g / neg_h - 1 / fact

    # Vandermonde-like system: row k (k = 0 .. order-1) holds r_i^k, with r = 1 for the new point
    r_all = torch.stack(rks + [torch.ones((), dtype=sigmas.dtype)])
    system = torch.stack([torch.pow(r_all, k) for k in range(order)])
    rhs_t = torch.stack(rhs)

    if corrector:
        if order == 1:
            rhos = (0.5,)
        else:
            rhos = tuple(float(v) for v in torch.linalg.solve(system, rhs_t))
    else:
        if order == 1:
            rhos = ()
        elif order == 2:
            rhos = (0.5,)
        else:
            sol = torch.linalg.solve(system[:-1, :-1], rhs_t[:-1])
            rhos = tuple(float(v) for v in sol)

    return _Update(
        order=order,
        x_scale=float(sigma_t / sigma_s),
        x0_scale=float(alpha_t * h_phi_1),
        res_scale=float(alpha_t * b_h),
        rks=tuple(float(r) for r in rks),
        rhos=rhos,
    )


class FlowUniPCScheduler(FlowScheduler):
    """The official Wan UniPC sampler (bh2, data prediction, lower order at the end).

    ``FlowUniPCScheduler(steps, shift)`` builds the official schedule (docs/wan-model.md §6.1): sigmas from a
    linspace starting at 0.999, shifted, float32, final 0; timesteps ``int(sigma * 1000)``.
    ``solver_order`` may be 1, 2 (the official value) or 3.
    """

    name = "unipc"

    def __init__(self, steps: int, shift: float = 1.0, solver_order: int = 2) -> None:
        steps = check_steps(steps)
        shift = check_shift(shift)
        if isinstance(solver_order, bool) or solver_order not in SUPPORTED_ORDERS:
            raise ConfigError(
                f"solver_order must be one of {SUPPORTED_ORDERS}, got {solver_order!r}; "
                "the official Wan sampler uses 2"
            )
        self.shift = shift
        self.solver_order = int(solver_order)
        self._set_schedule(unipc_sigmas(steps, shift))
        self._plan()
        self._history: List[torch.Tensor] = []
        self._last_sample: Optional[torch.Tensor] = None

    # ---------------------------------------------------------------- plan (CPU, once)

    def _plan(self) -> None:
        n = self._num_steps
        p = self.solver_order
        # warm-up (only k earlier predictions exist) and lower order at the end
        self._orders = tuple(min(p, k + 1, n - k) for k in range(n))
        sig = self._sigmas  # float32, CPU
        predictors: List[Optional[_Update]] = []
        correctors: List[Optional[_Update]] = [None]
        for k in range(n):
            if self._sigma_values[k + 1] == 0.0:
                predictors.append(None)  # final step: the data prediction itself
            else:
                older = [k - i for i in range(1, self._orders[k])]
                predictors.append(_update_coefficients(sig, k, k + 1, older, corrector=False))
            if k > 0:
                # the corrector repeats step k-1 with that step's order
                older = [k - 1 - i for i in range(1, self._orders[k - 1])]
                correctors.append(_update_coefficients(sig, k - 1, k, older, corrector=True))
        self._predictors = tuple(predictors)
        self._correctors = tuple(correctors)

    @property
    def predictor_orders(self) -> Tuple[int, ...]:
        """Order of the UniP update at each step (official order 2: ``(1, 2, ..., 2, 1)``)."""
        return self._orders

    @property
    def corrector_orders(self) -> Tuple[Optional[int], ...]:
        """Order of the UniC correction at each step (None at step 0, where there is none)."""
        return tuple(None if c is None else c.order for c in self._correctors)

    # ---------------------------------------------------------------- stepping

    def _clear_history(self) -> None:
        self._history = []
        self._last_sample = None

    def _step(self, k: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        x0 = sample - self._sigma_values[k] * model_output
        corrector = self._correctors[k]
        if corrector is not None:
            sample = self._correct(corrector, x0)
        self._history.append(x0)
        if len(self._history) > self.solver_order:
            del self._history[0]
        self._last_sample = sample
        predictor = self._predictors[k]
        if predictor is None:
            return x0
        return self._predict(predictor, sample)

    def _differences(self, c: _Update, m0: torch.Tensor) -> Optional[torch.Tensor]:
        """sum_i rhos[i] * (m_i - m0) / rks[i] over the older data predictions (None if none)."""
        total = None
        for i, rk in enumerate(c.rks):
            term = c.rhos[i] * ((self._history[-2 - i] - m0) / rk)
            total = term if total is None else total + term
        return total

    def _predict(self, c: _Update, x: torch.Tensor) -> torch.Tensor:
        """UniP: from the current sample to the next noise level (history already holds x0_k)."""
        m0 = self._history[-1]
        out = c.x_scale * x - c.x0_scale * m0
        res = self._differences(c, m0)
        if res is not None:
            out = out - c.res_scale * res
        return out

    def _correct(self, c: _Update, x0_new: torch.Tensor) -> torch.Tensor:
        """UniC: redo the previous update with the new data prediction (before it is pushed)."""
        m0 = self._history[-1]
        out = c.x_scale * self._last_sample - c.x0_scale * m0
        res = c.rhos[-1] * (x0_new - m0)
        older = self._differences(c, m0)
        if older is not None:
            res = older + res
        return out - c.res_scale * res

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", shift={self.shift}, solver_order={self.solver_order})"
