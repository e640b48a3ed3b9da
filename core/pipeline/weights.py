"""Where a run's models come from.

A weight source has five methods, the signatures of the checkpoint loaders: ``inspect(plan)``
(a :class:`~wanport.checkpoints.layout.CheckpointSet`: every file, key and shape checked, nothing
loaded), ``load_text_encoder``, ``load_dit``, ``load_vae`` and ``load_clip``. The task modules
(:mod:`.t2v`, :mod:`.i2v`, :mod:`.ti2v`) load through ``prep.weights``, so a benchmark can hand
them models of the real architecture with random weights
(:class:`wanport.bench.random_weights.RandomWeights`) and time the real pipeline without a
checkpoint.
"""

from __future__ import annotations

from typing import Any, Dict

from ..checkpoints.layout import CheckpointSet, inspect_checkpoint, load_clip, load_dit, load_vae
from ..config.validate import RunPlan
from ..models.t5 import WanTextEncoder


class CheckpointWeights:
    """The official checkpoint folder of the recipe (what ``wanport run`` uses)."""

    def inspect(self, plan: RunPlan) -> CheckpointSet:
        return inspect_checkpoint(plan.checkpoint_dir, plan.preset, plan.policy)

    def describe(self) -> Dict[str, Any]:
        return {"source": "checkpoint"}

    load_text_encoder = staticmethod(WanTextEncoder.load)
    load_dit = staticmethod(load_dit)
    load_vae = staticmethod(load_vae)
    load_clip = staticmethod(load_clip)


CHECKPOINT = CheckpointWeights()

__all__ = ["CheckpointWeights", "CHECKPOINT"]
