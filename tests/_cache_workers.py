"""Multi-process workers of tests/test_cache.py (spawned by torch.multiprocessing, so importable).

One launch per world size runs several layouts in sequence: the process group is started once
and every layout's pipeline is built on it (a pipeline that did not start the group leaves it up),
which keeps the suite's process start-ups to one per world size."""

from __future__ import annotations

import json

import torch

from _parallel_workers import dist_env

#: the tiny run every cached layout repeats (small: 1 frame, 3 steps)
BASE = ["sample.size=80*48", "sample.frame_num=1", "sample.steps=3", "precision=fp32", "output.name=cache",
        "parallel.timeout_s=60"]
#: first-block cache: on this tiny run only the unconditional branch of step 1 is reused (block 0's
#: relative change: cond 0.81 at step 1, uncond 0.68 at step 1 and 0.89 at step 2: far from 0.75)
FIRST_BLOCK = {"method": "first_block", "threshold": 0.75}
#: TeaCache with the identity polynomial: step 1 reused in both branches (0.90 < 1.5; step 2 is
#: the cut-off)
TEACACHE = {"method": "teacache", "coefficients": [1.0, 0.0], "threshold": 1.5}


def skewed_shards(rank: int, partial: torch.Tensor) -> torch.Tensor:
    """Make the shards' own statistics disagree: rank 0's difference is zeroed (alone it would
    reuse every step), the others' kept (alone they compute where their change is large). The
    combined statistic (about half the real one) reuses steps 1 and 2 in both branches."""
    return torch.stack([partial[0] * (0.0 if rank == 0 else 1.0), partial[1]])


def layouts_worker(rank: int, world: int, port: int, ckpt: str, layouts, out: str, dit_ulysses: bool = False):
    """``layouts``: [(name, overrides, [(label, cache section, skewed shards), ...])]: one pipeline
    per layout on one process group, one call per entry; every rank saves the calls' reports,
    rank 0 the videos. ``dit_ulysses``: then :func:`dit_cache_run` under ulysses = world."""
    import torch.distributed as dist

    from wanport import Pipeline
    from wanport.cache.runner import FeatureCache
    from wanport.parallel.mesh import shutdown

    dist_env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    saved = {}
    try:
        for _name, overrides, calls in layouts:
            # a layout's own checkpoint_dir (e.g. the 4-head one for ulysses 4) comes later and wins
            pipe = Pipeline.from_recipe(None, overrides=BASE + ["checkpoint_dir=%s" % ckpt] + list(overrides),
                                        progress=False)
            with pipe:
                for label, cache, skew in calls:
                    FeatureCache.statistic_hook = skewed_shards if skew else None
                    result = pipe.generate(video_tensor=True, cache=cache)
                    report = json.loads(json.dumps(pipe.last_report, default=str))
                    saved[label] = {"report": report, "video": result.video if result is not None else None}
        if dit_ulysses:
            from wanport.parallel.mesh import init_mesh

            FeatureCache.statistic_hook = None
            saved["dit"] = dit_cache_run(init_mesh(1, world, 1, "gloo", 60))
        torch.save(saved, "%s.rank%d" % (out, rank))
    finally:
        FeatureCache.statistic_hook = None
        shutdown()


def dit_cache_run(mesh=None):
    """Five 'steps' of one branch through a cached DiT; returns (outputs, report rows)."""
    from _parallel_workers import dit_case
    from wanport.cache.config import CacheSettings
    from wanport.cache.runner import FeatureCache, ShardSums
    from wanport.models.dit import WanDiT
    from wanport.models.dit.requirements import dit_requirements
    from wanport.parallel.mesh import CommClock
    from wanport.parallel.sequence import wrap_self_attention
    from wanport.precision import PRESETS
    from wanport.registry import discover, resolve_ops

    cfg, x, t, ctx = dit_case(False)
    reg = discover()
    sp = mesh is not None and mesh.sp_degree > 1
    table = resolve_ops(reg, reg.backends["reference"], dit_requirements(cfg, PRESETS["fp32"], "cpu",
                                                                         padded_keys=sp))
    if sp:
        table = wrap_self_attention(table, mesh, CommClock())
    model = WanDiT.random(cfg, PRESETS["fp32"], torch.device("cpu"), seed=11).bind_ops(table)
    # block 0's relative change here: 0.40, 0.38, 0.43, 0.38 -> computed, reused, computed, reused
    settings = CacheSettings("first_block", 0.39, 1, 0, None, True, None)
    cache = FeatureCache(settings, ["dit"] * 5, ShardSums(mesh))
    g = torch.Generator().manual_seed(9)
    outs = []
    with torch.no_grad(), cache.attach([model]):
        for step in range(5):  # small changes of the input: some steps reuse
            xs = x + 0.02 * step * torch.randn(x.shape, generator=g)
            cache.enter(step, "cond", "dit")
            outs.append(model(xs, t - 10 * step, ctx))
    return outs, cache.rows
