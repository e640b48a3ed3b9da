"""CFG parallelism: the conditional and unconditional forwards of a step on two rank groups.

Ranks with ``cfg_index`` 0 run the conditional branch, ``cfg_index`` 1 the unconditional one; the
two predictions are exchanged (all-gather within each pair of corresponding ranks) and combined
with the official formula on every rank, so all ranks step the scheduler identically.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.distributed as dist

from .mesh import CommClock, Mesh


class CfgParallel:
    def __init__(self, mesh: Mesh, comm: CommClock) -> None:
        if mesh.cfg != 2:
            raise ValueError("CFG parallel needs cfg = 2, got %d" % mesh.cfg)
        self.mesh = mesh
        self.comm = comm

    @property
    def branch(self) -> str:
        return "cond" if self.mesh.cfg_index == 0 else "uncond"

    def guided(self, model, latent: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any],
               uncond: Mapping[str, Any], scale: float) -> torch.Tensor:
        """v_u + scale * (v_c - v_u), each branch computed on its own rank group."""
        mine = model(latent, t, **(cond if self.mesh.cfg_index == 0 else uncond))
        parts = [torch.empty_like(mine) for _ in range(2)]
        self.comm.sent(mine.numel() * mine.element_size())
        with self.comm:
            dist.all_gather(parts, mine.contiguous(), group=self.mesh.cfg_group)
        v_cond, v_uncond = parts
        return v_uncond + scale * (v_cond - v_uncond)
