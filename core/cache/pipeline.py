"""The cache of one ``generate`` call: built from the call's plan, attached to its DiTs, and its
report gathered from every rank (a collective under torchrun)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

from .config import CacheSettings
from .runner import FeatureCache, ShardSums


def expert_names(experts, timesteps) -> List[str]:
    """The expert of every step, without switching anything (the switch moves weights)."""
    from ..pipeline.moe import ExpertSwitch, expert_schedule

    if isinstance(experts, ExpertSwitch):
        return expert_schedule([int(t) for t in timesteps], experts.boundary)
    return [experts.select(int(timesteps[0])).name] * len(timesteps)


def make_cache(plan, experts, scheduler, mesh=None, comm=None) -> Optional[FeatureCache]:
    """A :class:`FeatureCache` for the call, or None when ``cache.method`` is none."""
    settings: Optional[CacheSettings] = plan.cache
    if settings is None or not settings.enabled:
        return None
    steps = list(scheduler.timesteps)
    curve = None
    if settings.method == "magcache":
        from .published import magcache_curve

        _, curve = magcache_curve(plan.preset.name, len(steps), plan.image_path is not None)
    return FeatureCache(settings, expert_names(experts, steps), ShardSums(mesh, comm), curve)


def attached(cache: Optional[FeatureCache], models):
    return cache.attach(models) if cache is not None else contextlib.nullcontext()


def cache_report(cache: Optional[FeatureCache], mesh=None) -> Dict[str, Any]:
    """The report's ``cache`` section. Under torchrun every rank calls it: each rank's decisions
    are gathered, the rows of both CFG branches merged in step order, and ``ranks_agree`` says
    whether every rank of a branch took the same decisions (by construction it is true)."""
    if cache is None:
        return {"method": "none", "lossy": False}
    out = cache.report()
    if mesh is None:
        out["ranks_agree"] = True
        return out
    import torch.distributed as dist

    mine = [(r["step"], r["branch"], r["expert"], r["action"], r["statistic"]) for r in cache.rows]
    every: List[Any] = [None] * mesh.world
    dist.all_gather_object(every, {"rank": mesh.rank, "cfg_index": mesh.cfg_index, "decisions": mine,
                                   "rows": cache.rows})
    agree = True
    leaders = {}
    for item in every:
        lead = leaders.setdefault(item["cfg_index"], item)
        agree = agree and item["decisions"] == lead["decisions"]
    rows = [r for lead in leaders.values() for r in lead["rows"]]
    order = {"cond": 0, "uncond": 1}
    rows.sort(key=lambda r: (r["step"], order.get(r["branch"], 2)))
    reused = sum(r["action"] == "reused" for r in rows)
    out.update(per_step=rows, forwards=len(rows), reused=reused,
               reused_fraction=round(reused / len(rows), 4) if rows else 0.0, ranks_agree=agree,
               per_rank_reused={item["rank"]: sum(d[3] == "reused" for d in item["decisions"]) for item in every})
    return out


__all__ = ["make_cache", "attached", "cache_report", "expert_names"]
