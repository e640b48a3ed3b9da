"""The architectures a recipe loads, known without reading a weight.

From the recipe's checkpoint folder when it exists (config.json and tensor headers: exactly what
will load), else from the model preset's official numbers (what ``wanport bench`` builds with
random weights), so ``wanport plan`` answers before the weights are downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional

from ..models.dit import DiTConfig


@dataclass(frozen=True)
class Architecture:
    dit: DiTConfig
    #: DiT weight sets: 2 for the Wan2.2 A14B experts, else 1
    experts: int
    #: UMT5 numbers as ``t5_config_from_shapes`` returns them
    t5: Dict[str, int]
    #: CLIP vision tower numbers (Wan2.1 I2V) or None
    clip: Optional[Dict[str, int]]
    vae_kind: str
    vae_config: Dict[str, int]
    #: "checkpoint" (read from the folder) or "preset" (the official numbers)
    source: str


def from_checkpoints(ckpts, source: str = "checkpoint") -> Architecture:
    """From a :class:`~wanport.checkpoints.layout.CheckpointSet` (``prepare`` has one)."""
    return Architecture(dit=ckpts.dit.config, experts=len(ckpts.experts) if ckpts.experts else 1,
                        t5=dict(ckpts.t5_config), clip=dict(ckpts.clip_config) if ckpts.clip_config else None,
                        vae_kind=ckpts.vae_kind, vae_config=dict(ckpts.vae_config), source=source)


def for_plan(plan, use_checkpoint: bool = True) -> Architecture:
    """The recipe's checkpoint when its folder exists (headers only), else the preset's numbers."""
    if use_checkpoint and os.path.isdir(plan.checkpoint_dir):
        from ..checkpoints.layout import inspect_checkpoint

        return from_checkpoints(inspect_checkpoint(plan.checkpoint_dir, plan.preset, plan.policy))
    from ..bench.random_weights import RandomWeights

    return from_checkpoints(RandomWeights().inspect(plan), source="preset")
