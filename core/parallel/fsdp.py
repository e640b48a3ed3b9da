"""FSDP for the DiT and the T5 encoder: parameters sharded across all ranks, each block one unit
(gathered for its forward, released after it). Memory, not numerics: the sharded model computes
the same function.

Uses FSDP2 (``fully_shard``: per-parameter sharding, so a block may mix bf16 Linear weights and
float32 modulation/norm parameters as the official precision policy requires); torch < 2.4 has
no FSDP2 and gets a clear error.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..errors import ConfigError


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # torch 2.4, 2.5
        except ImportError:
            return None
    return fully_shard


def check_available(what: str) -> None:
    if _fully_shard() is None:
        raise ConfigError("parallel.%s needs FSDP2 (torch >= 2.4); this is torch %s — turn it off or upgrade torch"
                          % (what, torch.__version__))


def shard(root: torch.nn.Module, units: Iterable[torch.nn.Module], device_type: str, world: int) -> torch.nn.Module:
    """Shard each unit, then the root (its remaining parameters), across ``world`` ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = _fully_shard()
    mesh = init_device_mesh(device_type, (world,))
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    fully_shard(root, mesh=mesh, reshard_after_forward=True)
    return root


def shard_dit(model, device_type: str, world: int):
    check_available("dit_fsdp")
    return shard(model, list(model.blocks), device_type, world)


def shard_t5(encoder, device_type: str, world: int):
    """``encoder``: a WanTextEncoder; its transformers UMT5 stack's blocks are the units."""
    check_available("t5_fsdp")
    model = encoder.model
    shard(model, list(model.encoder.block), device_type, world)
    return encoder


class ShardedWeights:
    """A weight source (see ``wanport.pipeline.weights``) whose DiT and/or text encoder come out
    sharded across all ranks; everything else is the wrapped source's."""

    def __init__(self, base, dit: bool, t5: bool, device_type: str, world: int) -> None:
        self.base, self.dit, self.t5 = base, dit, t5
        self.device_type, self.world = device_type, world

    def __getattr__(self, name):
        return getattr(self.base, name)

    def describe(self):
        out = dict(self.base.describe())
        out["fsdp"] = {"dit": self.dit, "t5": self.t5, "world": self.world}
        return out

    def load_dit(self, *args, **kwargs):
        model = self.base.load_dit(*args, **kwargs)
        return shard_dit(model, self.device_type, self.world) if self.dit else model

    def load_text_encoder(self, *args, **kwargs):
        encoder = self.base.load_text_encoder(*args, **kwargs)
        return shard_t5(encoder, self.device_type, self.world) if self.t5 else encoder
