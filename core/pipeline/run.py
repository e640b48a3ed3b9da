"""``wanport run``: one entry point, routed by the model's task.

* ``t2v`` -- :func:`wanport.pipeline.t2v.run_t2v` (Wan2.1 T2V, Wan2.2 T2V-A14B);
* ``i2v`` -- :func:`wanport.pipeline.i2v.run_i2v` (Wan2.1 I2V-14B, Wan2.2 I2V-A14B);
* ``ti2v`` -- :func:`wanport.pipeline.ti2v.run_ti2v` (Wan2.2 TI2V-5B, with or without an image).

An unknown model goes to the T2V path, whose recipe validation names it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ..config import MODELS, RunConfig
from ..registry import Registry


def run(cfg: RunConfig, raw: Mapping[str, Any], registry: Optional[Registry] = None, progress: bool = True,
        source: str = "recipe", observer=None, weights=None) -> Dict[str, Any]:
    """``observer``: a :class:`~.sampling.LoopObserver` of the denoising loop and the decoded
    video (``wanport dump``); ``weights``: where the models come from (:mod:`.weights`; default
    the recipe's checkpoint)."""
    preset = MODELS.get(cfg.model)
    task = preset.task if preset is not None else "t2v"
    if task == "i2v":
        from .i2v import run_i2v as runner
    elif task == "ti2v":
        from .ti2v import run_ti2v as runner
    else:
        from .t2v import run_t2v as runner
    try:
        return runner(cfg, raw, registry=registry, progress=progress, source=source, observer=observer,
                      weights=weights)
    finally:
        from ..parallel.mesh import shutdown

        shutdown()  # a no-op for one process


__all__ = ["run"]
