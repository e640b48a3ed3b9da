"""``wanport plan``: device and host memory of a recipe predicted before anything loads, the
layouts that fit, and the run's gate (docs/plan.md).

* :mod:`.weights` -- bytes of every model by dtype, counted on the meta device under the policy;
* :mod:`.activations` -- one DiT forward, the encoders, the VAE's chunked encode/decode;
* :mod:`.memory` -- the stage timeline per rank and the host, :class:`Layout`, :func:`predict`;
* :mod:`.suggest` -- layouts of today's knobs that fit, by predicted step time;
* :mod:`.check` -- :func:`refuse_if_unfit`, the run's hook; :class:`PlanError`;
* :mod:`.constants` -- every factor of the model, with what it stands for.
"""

from .check import PlanError, check_fits, refuse_if_unfit
from .memory import Layout, MemoryPlan, predict

__all__ = ["PlanError", "check_fits", "refuse_if_unfit", "Layout", "MemoryPlan", "predict"]
