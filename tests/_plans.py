"""A checked RunPlan for a model preset without a checkpoint (the memory-plan tests)."""

from __future__ import annotations

from wanport.config import MODELS, build_config
from wanport.config.validate import plan_run


def plan_for(model, size=None, **extra):
    """The plan of ``model`` at ``size`` (default: the preset's), a placeholder image when the
    model needs one; ``extra`` sets top-level recipe keys."""
    raw = {"model": model, "checkpoint_dir": "/nonexistent-ckpt", "prompt": "p", "task": MODELS[model].task}
    if size:
        raw["sample"] = {"size": size}
    if MODELS[model].image == "required":
        raw["image"] = "in.png"
    raw.update(extra)
    return plan_run(build_config(raw))
