"""``wanport plan`` counts the feature cache's stored tensors (core/plan/cache.py): exact bytes
from the shapes, per rank, in the denoise stage only, and one line of the plan's text."""

from __future__ import annotations

import pytest
from _plans import plan_for

from wanport.plan import predict
from wanport.plan.arch import for_plan
from wanport.plan.cli import format_plan
from wanport.plan.memory import Layout


def _plan(model, cache=None, **extra):
    return plan_for(model, "832*480", **(dict(extra, cache=cache) if cache else extra))


def _den(mem, rank=0):
    return {s.name: s for s in mem.ranks[rank].stages}["denoise"].device


TOKENS, DIM = 21 * 30 * 52, 5120  # 14B at 832x480, 81 frames: 32760 tokens of 5120


def test_teacache_residuals_exact_bytes_and_their_own_line():
    exact = _plan("wan2.1-t2v-14b")
    tea = _plan("wan2.1-t2v-14b", {"method": "teacache"})
    arch = for_plan(exact)
    off, on = predict(exact, arch), predict(tea, arch)
    # official: float32 residual stream; cond + uncond states; e [1, 5120] float32 each
    want = 2 * TOKENS * DIM * 4 + 2 * DIM * 4
    assert _den(on)["cache_residuals"] == want == 1_341_890_560
    assert "cache_residuals" not in _den(off) and on.peak - off.peak == want  # the denoise stage is the peak
    assert all("cache_residuals" not in s.device for s in on.ranks[0].stages if s.name != "denoise")
    assert on.feature_cache == {"method": "teacache", "states": 2, "residuals": 2 * TOKENS * DIM * 4,
                                "inputs": 2 * DIM * 4}
    assert on.to_dict()["feature_cache"]["residuals"] == 1_341_849_600 and off.to_dict()["feature_cache"] == {}
    text = format_plan(on)
    assert ("feature cache (teacache): 1.25 GiB per rank while denoising (cache_residuals): 2 state(s), "
            "residuals 1341849600 bytes, statistic inputs 40960 bytes") in text
    assert "feature cache" not in format_plan(off)


@pytest.mark.parametrize("model,cache,extra,layout,want", [
    # Ulysses 4: each rank its 8190-token shard; first block: block 0's residual too (2 per state)
    ("wan2.1-t2v-14b", {"method": "first_block"}, {}, Layout(ulysses=4), 2 * 2 * (TOKENS // 4) * DIM * 4),
    # CFG parallel: one branch per rank; MagCache stores no statistic input
    ("wan2.1-t2v-14b", {"method": "magcache"}, {}, Layout(cfg=2), 1 * TOKENS * DIM * 4),
    # e0 [1, 6, 5120]; bf16: the stream and the modulation in 2 bytes
    ("wan2.1-t2v-14b", {"method": "teacache", "input": "e0"}, {"precision": "bf16"}, Layout(),
     2 * TOKENS * DIM * 2 + 2 * 6 * DIM * 2),
    # Wan2.2 A14B: per expert, the high-noise expert's states stay after the switch
    ("wan2.2-t2v-a14b", {"method": "first_block"}, {}, Layout(park_inactive_expert=True),
     2 * 2 * 2 * TOKENS * DIM * 4),
    ("wan2.2-t2v-a14b", {"method": "first_block", "per_expert": False}, {}, Layout(park_inactive_expert=True),
     2 * 2 * TOKENS * DIM * 4),
])
def test_residual_bytes_per_layout_method_and_expert(model, cache, extra, layout, want):
    plan = _plan(model, cache, **extra)
    mem = predict(plan, for_plan(plan), layout)
    assert all(_den(mem, r)["cache_residuals"] == want for r in range(len(mem.ranks)))
    base = predict(_plan(model, None, **extra), for_plan(plan), layout)
    assert _den(mem)["forward_activations"] == _den(base)["forward_activations"]
    assert sum(_den(mem).values()) - sum(_den(base).values()) == want
