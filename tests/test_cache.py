"""Feature caching (docs/caching.md): the recipe checks, the published rules decision by
decision, threshold 0 bit for bit, the per-expert state of a two-expert model, compare and bench,
and every parallel layout deciding as one process does (also when the shards' own statistics
disagree)."""

from __future__ import annotations

import math
import os

import _cache_workers as CW
import pytest
import torch
import torch.multiprocessing as mp

import _parallel_workers as W
from wanport.cache import published as P
from wanport.cache.config import CacheSettings
from wanport.cache.runner import FeatureCache, _poly
from wanport.config import load_recipe
from wanport.config.validate import plan_run
from wanport.errors import ConfigError


def plan(*overrides, model=None):
    extra = ["model=%s" % model, "checkpoint_dir=unused"] if model else []
    cfg, _ = load_recipe(None, extra + list(overrides))
    return plan_run(cfg)


# ---------------------------------------------------------------- recipe checks and defaults
@pytest.mark.parametrize("overrides,fix", [
    (["cache.threshold=0.1"], "choose cache.method: teacache, magcache or first_block"),
    (["cache.method=teacach"], "did you mean 'teacache'"),
    (["cache.method=teacache", "cache.threshold=-1"], "must be a number >= 0"),
    (["cache.method=magcache", "cache.coefficients=[1, 0]"], "only for cache.method: teacache"),
    (["cache.method=first_block", "cache.schedule=[0, 2]"], "step 0 has nothing cached"),
    (["cache.method=first_block", "cache.warmup_steps=99"], "the run has 8 steps"),
    (["cache.method=teacache", "cache.coefficients=[.nan]"], "finite"),
])
def test_bad_cache_sections_are_one_error_naming_the_fix(overrides, fix):
    with pytest.raises(ConfigError) as err:
        plan(*overrides)
    assert fix in str(err.value)


def test_teacache_without_a_published_fit_names_the_way_out():
    with pytest.raises(ConfigError) as err:
        plan("cache.method=teacache", "task=ti2v", model="wan2.2-ti2v-5b")
    assert "cache.coefficients" in str(err.value) and "magcache" in str(err.value)
    ok = plan("cache.method=teacache", "task=ti2v", "cache.coefficients=[1.0, 0.0]", model="wan2.2-ti2v-5b")
    assert ok.cache.coefficients == (1.0, 0.0) and ok.cache.source == "recipe"


def test_published_defaults_per_method():
    assert plan().cache.method == "none" and not plan().cache.enabled  # exact is the default
    tea = plan("cache.method=teacache", model="wan2.1-t2v-14b").cache
    assert (tea.threshold, tea.warmup_steps, tea.cutoff_steps, tea.input) == (0.2, 1, 1, "e")
    assert tea.coefficients == P.TEACACHE_COEFFICIENTS["wan2.1-t2v-14b"]["e"]
    ret = plan("cache.method=teacache", "cache.input=e0", model="wan2.1-t2v-14b").cache
    assert (ret.warmup_steps, ret.cutoff_steps) == (5, 0) and ret.coefficients[0] == -3.03318725e+05
    mag = plan("cache.method=magcache", model="wan2.1-t2v-14b").cache
    assert (mag.threshold, mag.max_reuse, mag.retention, mag.warmup_steps) == (0.24, 6, 0.2, None)
    a14b = plan("cache.method=teacache", model="wan2.2-t2v-a14b").cache
    assert a14b.source == "wan2.1-t2v-14b" and a14b.per_expert  # borrowed fit, named in the report
    fb = plan("cache.method=first_block", "cache.schedule=[3, 1]").cache
    assert fb.schedule == (1, 3) and fb.threshold == 0.08


def test_published_curves_and_resampling():
    for name, ratios in P.MAGCACHE_RATIOS.items():
        assert len(ratios) in (78, 98), name  # 2 x (40 or 50) steps without the two leading 1.0
    key, curve = P.magcache_curve("wan2.1-t2v-14b", 50)
    assert key == "wan2.1-t2v-14b" and curve[0] == (1.0, 1.0) and curve[1] == (1.02504, 1.03017)
    assert P.nearest_interp([0, 1, 2, 3, 4], 3) == (0.0, 2.0, 4.0)  # round(i * (5-1)/(3-1))
    assert P.nearest_interp([0, 1, 2, 3], 3) == (0.0, 2.0, 3.0)  # 1.5 rounds half to even, as numpy
    coeff = P.TEACACHE_COEFFICIENTS["wan2.1-t2v-1.3b"]["e"]
    x = 0.123
    assert math.isclose(_poly(coeff, x), sum(c * x ** (len(coeff) - 1 - i) for i, c in enumerate(coeff)),
                         rel_tol=1e-12)
    assert P.published_reuse("wan2.1-t2v-14b", 50)[1][:3] == ("e@0.2", 0.2, 25)  # 1829 s -> 909 s
    assert P.even_schedule(50, 25)[0] == 1 and len(P.even_schedule(50, 25)) == 25
    assert max(P.even_schedule(50, 48)) == 48  # the last step stays computed


# ---------------------------------------------------------------- decisions against the published rules
class FakeBlocks:
    """run(h, start, stop): block i adds (i + 1) * 0.5; counts the blocks run."""

    def __init__(self):
        self.calls = 0

    def __call__(self, h, start=0, stop=None):
        stop = 2 if stop is None else stop
        for i in range(start, stop):
            self.calls += 1
            h = h + (i + 1) * 0.5
        return h


def drive(settings, inputs, experts=None, curve=None, branches=("cond", "uncond")):
    experts = experts or ["dit"] * len(inputs)
    cache = FeatureCache(settings, experts, curve=curve)
    run = FakeBlocks()
    outs = []
    for step, e in enumerate(inputs):
        for b in branches:
            cache.enter(step, b, experts[step])
            outs.append(cache.blocks(torch.zeros(1, 3, 4), run, e=e, e0=e.unsqueeze(1).repeat(1, 6, 1), tokens=3))
    return cache, outs, run


def official_teacache(inputs, coefficients, threshold, ret_steps, cutoff_steps):
    """TeaCache4Wan2.1's loop over cnt (even: cond, odd: uncond), written out: compute or reuse per forward."""
    out, acc, prev = [], [0.0, 0.0], [None, None]
    for cnt in range(2 * len(inputs)):
        m, k = inputs[cnt // 2], cnt % 2
        if cnt < ret_steps or cnt >= cutoff_steps:
            calc, acc[k] = True, 0.0
        else:
            rel = float((m - prev[k]).abs().mean() / prev[k].abs().mean())
            acc[k] += sum(c * rel ** (len(coefficients) - 1 - i) for i, c in enumerate(coefficients))
            calc = acc[k] >= threshold
            if calc:
                acc[k] = 0.0
        prev[k] = m
        out.append("computed" if calc else "reused")
    return out


def test_teacache_decides_forward_by_forward_as_published():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, generator=g)
    inputs = [base * (1 + 0.03 * s) + 0.01 * s * torch.randn(1, 16, generator=g) for s in range(12)]
    coeff = (1.0, 0.0)
    settings = CacheSettings("teacache", 0.1, 1, 1, None, True, None, input="e", coefficients=coeff)
    cache, outs, run = drive(settings, inputs)
    ours = [r["action"] for r in cache.rows]
    assert ours == official_teacache(inputs, coeff, 0.1, 2, 2 * 12 - 2)
    assert 0 < ours.count("reused") < len(ours) - 4
    # a reused forward adds the cached residual (1.5 = both blocks) to its input; blocks not run
    assert all(torch.allclose(o, torch.full_like(o, 1.5)) for o in outs)
    assert run.calls == 2 * ours.count("computed")


def test_threshold_zero_never_reuses_even_with_negative_polynomials():
    coeff = P.TEACACHE_COEFFICIENTS["wan2.1-t2v-14b"]["e"]  # negative near 0: the sum can go below 0
    settings = CacheSettings("teacache", 0.0, 1, 1, None, True, None, input="e", coefficients=coeff)
    cache, _, _ = drive(settings, [torch.ones(1, 8) * (1 + 1e-4 * s) for s in range(6)])
    assert all(r["action"] == "computed" for r in cache.rows)
    assert any(r["statistic"] is not None and r["statistic"] < 0 for r in cache.rows)


def official_magcache(ratios, threshold, k, retention, steps):
    """MagCache4Wan2.1's loop (interleaved cond/uncond ratios), written out."""
    out, acc_ratio, acc_steps, acc_err = [], [1.0, 1.0], [0, 0], [0.0, 0.0]
    for cnt in range(2 * steps):
        b = cnt % 2
        skip = False
        if cnt >= int(2 * steps * retention):
            acc_ratio[b] *= ratios[cnt]
            acc_steps[b] += 1
            acc_err[b] += abs(1 - acc_ratio[b])
            if acc_err[b] < threshold and acc_steps[b] <= k:
                skip = True
            else:
                acc_ratio[b], acc_steps[b], acc_err[b] = 1.0, 0, 0.0
        out.append("reused" if skip else "computed")
    return out


def test_magcache_decides_forward_by_forward_as_published():
    steps = 50
    key, curve = P.magcache_curve("wan2.1-t2v-14b", steps)
    flat = [v for pair in curve for v in pair]
    settings = CacheSettings("magcache", 0.24, None, 0, 6, True, None, retention=0.2)
    cache, _, _ = drive(settings, [torch.ones(1, 4)] * steps, curve=curve)
    ours = [r["action"] for r in cache.rows]
    assert ours == official_magcache(flat, 0.24, 6, 0.2, steps)
    assert ours[:20] == ["computed"] * 20 and ours.count("reused") > 30


def test_first_block_cache_reuses_the_rest_of_the_blocks():
    settings = CacheSettings("first_block", 0.5, 1, 0, None, True, None)
    cache, outs, run = drive(settings, [torch.ones(1, 4)] * 4, branches=("cond",))
    assert [r["action"] for r in cache.rows] == ["computed", "reused", "reused", "reused"]
    assert run.calls == 2 + 3  # block 0 every step, block 1 once
    assert all(torch.allclose(o, torch.full_like(o, 1.5)) for o in outs)


def test_per_expert_state_never_crosses_the_switch():
    experts = ["high_noise"] * 3 + ["low_noise"] * 3
    inputs = [torch.ones(1, 4)] * 6
    per = CacheSettings("first_block", 0.5, 1, 0, None, True, (1, 2, 3, 4, 5))
    cache, _, _ = drive(per, inputs, experts=experts)
    rows = {(r["step"], r["branch"]): r for r in cache.rows}
    assert rows[(3, "cond")]["action"] == "computed" and rows[(3, "cond")]["reason"] == "nothing cached"
    assert rows[(4, "uncond")]["action"] == "reused" and rows[(2, "cond")]["action"] == "reused"
    assert set(cache.states) == {(e, b) for e in ("high_noise", "low_noise") for b in ("cond", "uncond")}
    shared = CacheSettings("first_block", 0.5, 1, 0, None, False, (1, 2, 3, 4, 5))
    cache, _, _ = drive(shared, inputs, experts=experts)
    rows = {(r["step"], r["branch"]): r for r in cache.rows}
    assert rows[(3, "uncond")]["reason"] == "expert switch" and rows[(4, "uncond")]["action"] == "reused"
    assert set(cache.states) == {("all", "cond"), ("all", "uncond")}


# ---------------------------------------------------------------- the tiny pipeline, one process
@pytest.fixture(scope="module")
def tiny_pipe(tiny_ckpt):
    from wanport import Pipeline

    with Pipeline.from_recipe(None, overrides=CW.BASE + ["checkpoint_dir=%s" % tiny_ckpt], progress=False) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def single(tiny_pipe):
    """One-process videos and reports: exact, first-block cached, TeaCache cached; and the bytes
    of the tensors each cache held at the end of its call."""
    out = {}
    held = {}
    original = FeatureCache.report

    def report(self):
        held["bytes"] = sum(t.numel() * t.element_size() for st in self.states.values()
                            for t in (st.residual, st.prev_first, st.prev_input) if t is not None)
        return original(self)

    FeatureCache.report = report
    try:
        for name, cache in (("exact", None), ("first_block", CW.FIRST_BLOCK), ("teacache", CW.TEACACHE)):
            held.clear()
            r = tiny_pipe.generate(video_tensor=True, cache=cache)
            out[name] = {"video": r.video, "report": r.report, "held_bytes": held.get("bytes")}
    finally:
        FeatureCache.report = original
    return out


def actions(report):
    return [(r["step"], r["branch"], r["action"]) for r in report["cache"]["per_step"]]


def test_threshold_zero_gives_the_exact_video_bit_for_bit(tiny_pipe, single):
    assert single["exact"]["report"]["cache"] == {"method": "none", "lossy": False}
    for method in ("teacache", "first_block"):  # (magcache: its statistic is data-free; unit-tested above)
        r = tiny_pipe.generate(video_tensor=True, cache={"method": method, "threshold": 0.0})
        assert torch.equal(r.video, single["exact"]["video"]), method
        assert r.report["cache"]["reused"] == 0 and r.report["cache"]["lossy"] is True


def test_a_cached_run_reuses_reports_and_changes_the_video(single):
    fb = single["first_block"]["report"]["cache"]
    assert actions(single["first_block"]["report"]) == [
        (0, "cond", "computed"), (0, "uncond", "computed"), (1, "cond", "computed"), (1, "uncond", "reused"),
        (2, "cond", "computed"), (2, "uncond", "computed")]
    assert fb["reused"] == 1 and fb["forwards"] == 6 and fb["per_step"][3]["statistic"] < 0.75
    assert fb["per_step"][2]["statistic"] > 0.75 and fb["data_from"] == "ParaAttention default"
    tea = single["teacache"]["report"]["cache"]
    assert [r["action"] for r in tea["per_step"]] == ["computed"] * 2 + ["reused"] * 2 + ["computed"] * 2
    for name in ("first_block", "teacache"):
        assert not torch.equal(single[name]["video"], single["exact"]["video"])


def test_the_memory_plan_counts_exactly_what_the_cache_stores(tiny_ckpt, single):
    """The plan's cache_residuals (core/plan/cache.py) equal the bytes of the tensors the real
    cache held at the end of the tiny calls (15 tokens x 256, float32: first block, both
    branches' residuals and block-0 residuals; TeaCache, the residuals and the time embeddings)."""
    from wanport.plan import predict
    from wanport.plan.arch import for_plan

    for name, section in (("first_block", ["cache.method=first_block", "cache.threshold=0.75"]),
                          ("teacache", ["cache.method=teacache", "cache.coefficients=[1.0, 0.0]",
                                        "cache.threshold=1.5"])):
        plan = plan_run(load_recipe(None, CW.BASE + ["checkpoint_dir=%s" % tiny_ckpt] + section)[0])
        den = {s.name: s for s in predict(plan, for_plan(plan)).ranks[0].stages}["denoise"].device
        assert den["cache_residuals"] == single[name]["held_bytes"] > 0, name
    assert single["first_block"]["held_bytes"] == 2 * 2 * 15 * 256 * 4


def test_two_expert_tiny_model_keeps_one_state_per_expert(tiny_layout):
    """Wan2.2 T2V-A14B tiny, 3 steps (timesteps 999, 960, 857: the switch to the low-noise expert
    at step 2). Reusing steps 1 and 2 by schedule: step 1 reuses the high-noise expert's residual,
    step 2 finds nothing cached for the low-noise expert (per_expert) or the one state reset at
    the switch, and computes."""
    from wanport import Pipeline

    over = CW.BASE + ["model=wan2.2-t2v-a14b-tiny", "checkpoint_dir=%s" % tiny_layout("wan2.2-t2v-a14b")]
    with Pipeline.from_recipe(None, overrides=over, progress=False) as pipe:
        per = pipe.generate(cache={"method": "first_block", "schedule": [1, 2]}).report
        shared = pipe.generate(cache={"method": "first_block", "schedule": [1, 2], "per_expert": False}).report
    assert per["experts"]["per_step"] == ["high_noise", "high_noise", "low_noise"]
    for report, why in ((per, "nothing cached"), (shared, "expert switch")):
        rows = {(r["step"], r["branch"]): r for r in report["cache"]["per_step"]}
        for b in ("cond", "uncond"):
            assert rows[(1, b)]["action"] == "reused" and rows[(1, b)]["expert"] == "high_noise"
            assert (rows[(2, b)]["action"], rows[(2, b)]["reason"], rows[(2, b)]["expert"]) == (
                "computed", why, "low_noise")


# ---------------------------------------------------------------- every parallel layout decides as one process
def _launch(world, runs, tiny_ckpt, tmp_path, dit_ulysses=False):
    out = str(tmp_path / ("w%d" % world))
    mp.spawn(CW.layouts_worker, args=(world, W.free_port(), tiny_ckpt, runs, out, dit_ulysses), nprocs=world)
    return [torch.load("%s.rank%d" % (out, r)) for r in range(world)]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _check_layouts(ranks, single, layouts):
    for _, _, calls in layouts:
        for label, cache, skew in calls:
            want = "teacache" if cache == CW.TEACACHE else "first_block"
            main = ranks[0][label]
            c = main["report"]["cache"]
            assert c["ranks_agree"] is True, label  # every rank of a branch took the same decisions
            assert all(r[label]["report"]["cache"]["per_step"] == c["per_step"] for r in ranks), label
            assert all(r[label]["video"] is None for r in ranks[1:])
            if skew:  # decided from the combined statistic: every rank reuses steps 1 and 2
                assert c["reused"] == 4 and set(c["per_rank_reused"].values()) == {4}, label
                continue
            assert actions(main["report"]) == actions(single[want]["report"]), label
            assert _rel(main["video"], single[want]["video"]) <= 1e-5, label


@pytest.fixture(scope="module")
def four_heads(tmp_path_factory):
    """The tiny checkpoint with 4 heads (make-tiny --heads 4: Ulysses 4 splits the heads) and its
    one-process TeaCache run."""
    from wanport import Pipeline
    from wanport.checkpoints.tiny import make_tiny

    path = str(tmp_path_factory.mktemp("ckpt") / "tiny-wan2.1-t2v-4heads")
    make_tiny(path, "wan2.1-t2v", seed=0, heads=4)
    with Pipeline.from_recipe(None, overrides=CW.BASE + ["checkpoint_dir=%s" % path], progress=False) as pipe:
        r = pipe.generate(video_tensor=True, cache=CW.TEACACHE)
    return path, {"teacache": {"video": r.video, "report": r.report}}


def test_cached_layouts_of_two_processes_decide_and_render_as_one(tiny_ckpt, single, tmp_path):
    """cfg2, ulysses2 (also with shards whose own statistics disagree: a rank deciding from its
    shard alone would skip blocks the other runs, and the collectives would fail within
    parallel.timeout_s), ring2 with the VAE split."""
    layouts = [("cfg2", ["parallel.cfg=2"], [("cfg2", CW.FIRST_BLOCK, False)]),
               ("ulysses2", ["parallel.ulysses=2"], [("ulysses2", CW.FIRST_BLOCK, False),
                                                     ("ulysses2-skewed", CW.FIRST_BLOCK, True)]),
               ("ring2+vae", ["parallel.ring=2", "parallel.vae=true"], [("ring2+vae", CW.TEACACHE, False)])]
    _check_layouts(_launch(2, layouts, tiny_ckpt, tmp_path), single, layouts)


def test_cached_layouts_of_four_processes_decide_and_render_as_one(tiny_ckpt, single, four_heads, tmp_path):
    """cfg2 x ulysses2 with the VAE split, ulysses2 x ring2; ulysses 4 with the VAE split on the
    tiny pipeline of the 4-head checkpoint (TeaCache; 15 tokens: uneven shards); then ulysses 4
    on the DiT of the parallel tests (4 heads, 45 tokens), through five inputs with a first-block
    cache."""
    layouts = [("cfg2xulysses2+vae", ["parallel.cfg=2", "parallel.ulysses=2", "parallel.vae=true"],
                [("cfg2xulysses2+vae", CW.FIRST_BLOCK, False)]),
               ("ulysses2xring2", ["parallel.ulysses=2", "parallel.ring=2"],
                [("ulysses2xring2", CW.FIRST_BLOCK, False)])]
    path4, single4 = four_heads
    ulysses4 = [("ulysses4+vae", ["checkpoint_dir=%s" % path4, "parallel.ulysses=4", "parallel.vae=true"],
                 [("ulysses4+vae", CW.TEACACHE, False)])]
    ranks = _launch(4, layouts + ulysses4, tiny_ckpt, tmp_path, dit_ulysses=True)
    _check_layouts(ranks, single, layouts)
    p4 = ranks[0]["ulysses4+vae"]["report"]["parallel"]
    assert (p4["ulysses"], p4["vae"], p4["world"]) == (4, True, 4)
    assert actions(single4["teacache"]["report"]) == [(s, b, "reused" if s == 1 else "computed")
                                                      for s in range(3) for b in ("cond", "uncond")]
    _check_layouts(ranks, single4, ulysses4)
    ref_out, ref_rows = CW.dit_cache_run()
    assert 0 < sum(r["action"] == "reused" for r in ref_rows) < len(ref_rows)
    for saved in ranks:
        outs, rows = saved["dit"]
        assert [r["action"] for r in rows] == [r["action"] for r in ref_rows]
        assert all(_rel(a, b) <= 1e-5 for a, b in zip(outs, ref_out))


# ---------------------------------------------------------------- compare and bench
def test_compare_shows_a_cached_dump_beside_the_exact_one(tiny_ckpt, tmp_path):
    """Dumps of one recipe with and without the cache compare (cache is not a recipe difference);
    the first divergence is the first forward whose blocks the cache skipped, the video differs."""
    from wanport.dump.compare import compare_dumps, markdown
    from wanport.dump.record import dump_recipe

    over = CW.BASE + ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path]
    cached, exact = str(tmp_path / "cached"), str(tmp_path / "exact")
    dump_recipe(None, over + ["cache.method=first_block", "cache.threshold=0.75"], cached, blocks="0", steps="0")
    dump_recipe(None, over, exact, blocks="0", steps="0")
    r = compare_dumps(cached, exact)
    assert r["warnings"] == [] and not r["identical"]
    assert r["cache"]["a"] == {"method": "first_block", "threshold": 0.75, "reused": [[1, "uncond"]]}
    assert r["cache"]["b"]["method"] == "none" and r["cache"]["first_reused"] == {"step": 1, "branch": "uncond",
                                                                                   "side": "a"}
    first = r["first_divergence"]
    assert (first["step"], first["branch"], first["block"], first["not_computed"]) == (1, "uncond", 1, ["a"])
    assert r["video"]["psnr_db"] is not None and r["video"]["ssim"] < 1.0
    text = markdown(r)
    assert "first reuse: step 1, uncond branch, in A" in text and "not computed in A" in text


def test_bench_pipeline_measures_cached_calls_beside_the_exact_one(tiny_ckpt, tmp_path):
    """Two specs of one schedule run once (labelled with both); the JSON and markdown are written
    (atomically) after the exact call and after each cached call, marked partial until the end
    (a run killed after a cached call keeps its row)."""
    import json

    from wanport.bench.pipeline import bench_pipeline, markdown
    from wanport.io.results import write_results

    over = CW.BASE + ["checkpoint_dir=%s" % tiny_ckpt]
    out = str(tmp_path / "bench.json")
    seen = []

    def on_partial(partial):
        write_results(out, partial, markdown(partial), say=None)
        with open(out) as f:
            seen.append(json.load(f))
        seen[-1]["md"] = open(str(tmp_path / "bench.md")).read()

    result = bench_pipeline(None, over, weights="checkpoint", warmup_steps=0, on_partial=on_partial,
                            caches=["reuse=1", "method=teacache,schedule=[1]"])
    c = result["cache"]
    assert c["exact_forwards"] == 6 and c["exact_denoise_s"] > 0 and result["partial"] is False
    (tea,) = c["runs"]
    assert tea["label"] == "reuse=1 = method=teacache,schedule=[1]"
    assert tea["cache"] == {"method": "teacache", "schedule": [1]}
    assert (tea["forwards"], tea["reused"], tea["computed"]) == (6, 2, 4) and tea["speedup"] > 0
    assert "feature cache" in markdown(result) and "PARTIAL" not in markdown(result)
    # on disk after the exact call and after the cached call, before the end
    assert [len(s["cache"]["runs"]) for s in seen] == [0, 1] and all(s["partial"] is True for s in seen)
    assert seen[1]["cache"]["runs"][0]["label"] == tea["label"] and "PARTIAL: 0 of 1 cached calls" in seen[0]["md"]
    assert seen[1]["md"].startswith("PARTIAL RESULT") and not [n for n in os.listdir(str(tmp_path))
                                                               if n.startswith(".")]  # no temp files left
    with pytest.raises(ConfigError) as err:  # a bad spec: before anything loads
        bench_pipeline(None, over, weights="checkpoint", caches=["method=teacache,threshold=-1"])
    assert "cache.threshold" in str(err.value)


def test_published_settings_of_one_schedule_run_once():
    """14B at 50 steps: e@0.2 (1829 s -> 909 s) and e0@0.1 (-> 915 s) both imply 25 reused steps."""
    from wanport.bench.cache import parse_specs

    calls = parse_specs(["published"], "wan2.1-t2v-14b", 50)
    assert [len(section["schedule"]) for _, section in calls] == [16, 25, 34]
    assert calls[1][0] == "schedule 25/50 (TeaCache e@0.2 published 2.01x, e0@0.1 published 2.00x)"
    assert len({tuple(section["schedule"]) for _, section in calls}) == 3
    again = parse_specs(["published", "reuse=25"], "wan2.1-t2v-14b", 50)  # the same schedule once more
    assert len(again) == 3 and again[1][0].endswith(" = reuse=25")


def test_the_cache_runs_on_the_emulated_npu(tiny_ckpt, monkeypatch):
    """The cache lives in the core: on the ascend backend (emulated torch_npu, official precision)
    a schedule reuses what it names (one call: the emulation is slow)."""
    import wanport_ascend.plugin as plugin
    from npu_emulation import installed
    from wanport import Pipeline

    for key in list(plugin.ENV_DEFAULTS) + ["LOCAL_RANK", "ASCEND_RT_VISIBLE_DEVICES"]:
        monkeypatch.delenv(key, raising=False)
    over = CW.BASE + ["checkpoint_dir=%s" % tiny_ckpt, "backend=ascend", "precision=official", "sample.steps=2"]
    with installed("v7"), Pipeline.from_recipe(None, overrides=over, progress=False) as pipe:
        sched = pipe.generate(video_tensor=True, cache={"method": "first_block", "schedule": [1]})
    assert sched.report["backend"]["name"] == "ascend"
    assert [r["action"] for r in sched.report["cache"]["per_step"]] == ["computed", "computed", "reused", "reused"]
    assert bool(torch.isfinite(sched.video).all())
