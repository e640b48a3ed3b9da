"""Checks of the recipe's ``parallel`` section (run before anything loads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


def world_size(p) -> int:
    return int(p.cfg) * int(p.ulysses) * int(p.ring)


@dataclass(frozen=True)
class Degrees:
    """The CFG x Ulysses x ring degrees of a process layout (the layouts of dumps, benchmarks and
    memory plans extend it)."""

    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    @property
    def world(self) -> int:
        return self.cfg * self.ulysses * self.ring

    @property
    def sp(self) -> int:
        """The sequence-parallel degree (Ulysses x ring)."""
        return self.ulysses * self.ring


def check_parallel(p, num_heads: Optional[int], model: str, needs_uncond: bool, latent_rows: int,
                   park_experts=None) -> List[str]:
    """Problems with ``parallel`` (a ParallelConfig) for this model; empty when fine.

    ``num_heads`` None: not known yet (tiny checkpoints) -- :func:`check_heads` runs again once
    the checkpoint's config.json has been read."""
    problems: List[str] = []
    for key in ("ulysses", "ring"):
        if getattr(p, key) < 1:
            problems.append("parallel.%s: must be >= 1, got %d" % (key, getattr(p, key)))
    if problems:
        return problems
    world = world_size(p)
    if p.cfg == 2 and not needs_uncond:
        problems.append("parallel.cfg: 2 splits the conditional and unconditional forwards, but guidance is off "
                        "(guide_scale 1); use cfg: 1")
    if num_heads is not None:
        problems.extend(check_heads(p, num_heads, model))
    if p.vae and world == 1:
        problems.append("parallel.vae: true needs several processes (cfg x ulysses x ring > 1)")
    if p.vae and latent_rows < world:
        problems.append("parallel.vae: %d latent rows cannot be split over %d ranks" % (latent_rows, world))
    if p.dit_fsdp and world == 1:
        problems.append("parallel.dit_fsdp: true needs several processes")
    if p.t5_fsdp and world == 1:
        problems.append("parallel.t5_fsdp: true needs several processes")
    if p.dit_fsdp and park_experts is True:
        problems.append("parallel.dit_fsdp shards the experts across ranks; offload.park_inactive_expert: true "
                        "cannot move them to the host as well (use auto or false)")
    if p.t5_fsdp and p.t5_cpu:
        problems.append("parallel.t5_fsdp and parallel.t5_cpu exclude each other (shard on the devices, or keep on the CPU)")
    if p.dit_fsdp or p.t5_fsdp:
        from .fsdp import _fully_shard

        if _fully_shard() is None:
            import torch

            problems.append("parallel.dit_fsdp/t5_fsdp need FSDP2 (torch >= 2.4); this is torch %s" % torch.__version__)
    if p.timeout_s <= 0:
        problems.append("parallel.timeout_s: must be > 0, got %d" % p.timeout_s)
    return problems


def check_heads(p, num_heads: int, model: str) -> List[str]:
    if num_heads % p.ulysses == 0:
        return []
    divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0 and d > 1]
    sp = p.ulysses * p.ring
    fits = [d for d in divisors if sp % d == 0 and d < p.ulysses]
    hint = ("use ulysses %d with ring %d for the same %d sequence ranks, or ring %d"
            % (fits[-1], sp // fits[-1], sp, sp)) if fits else "use ring %d instead" % sp
    return ["parallel.ulysses: %d does not divide the %d attention heads of %s (Ulysses splits heads); %s"
            % (p.ulysses, num_heads, model, hint)]
