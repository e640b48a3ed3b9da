"""``wanport bench pipeline``: the real pipeline of a recipe, timed stage by stage after a warm-up.

One :class:`wanport.Pipeline` (models loaded once; under torchrun one process group for the whole
benchmark, ended once at exit) and two ``generate`` calls: a warm-up of ``warmup_steps`` steps
(kernel compilation and autotuning, allocator growth, first-call costs), then the measured call.
Reported: the load time of the pipeline, the time of every stage of the measured call (text
encode, image encode, VAE encode, denoise, VAE decode, total), the time from the ``generate()``
call to its first denoising step, each denoising step and the DiT forward it implies, peak memory
(per rank under torchrun, with the communication time), and the published reference numbers of
the same model beside them (labelled published). Only rank 0 returns a result (prints, writes).

Weights: the recipe's checkpoint, or -- when its folder does not exist, or with
``weights="random"`` -- the real architectures with random weights
(:class:`~wanport.bench.random_weights.RandomWeights`); timings do not depend on weight values.
"""

from __future__ import annotations

import datetime
import os
import statistics
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..config import load_recipe
from ..config.validate import plan_run
from ..errors import ConfigError
from ..pipeline.weights import CHECKPOINT
from . import published
from .memory import out_of_memory_as_error

GIB = 2.0 ** 30
#: stages of a run report, in pipeline order; "compute" is their sum without load and write
STAGES = ("load", "text_encode", "image_encode", "vae_encode", "denoise", "vae_decode", "write")
COMPUTE = ("text_encode", "image_encode", "vae_encode", "denoise", "vae_decode")


def choose_weights(weights: str, checkpoint_dir: str, seed: int):
    """(weight source, description) for ``weights`` in auto / checkpoint / random."""
    from .random_weights import RandomWeights

    if weights not in ("auto", "checkpoint", "random"):
        raise ConfigError("bench pipeline: --weights must be auto, checkpoint or random, got %r" % weights)
    if weights == "auto":
        weights = "checkpoint" if os.path.isdir(checkpoint_dir) else "random"
    if weights == "random":
        source = RandomWeights(seed)
        return source, source.describe()
    return CHECKPOINT, {"source": "checkpoint", "checkpoint_dir": os.path.abspath(checkpoint_dir)}


def _guides_per_step(report: Mapping[str, Any]) -> List[float]:
    experts = report.get("experts")
    if experts:
        return list(experts["guide_scale_per_step"])
    g = report["sampling"]["guide_scale"]
    return [float(g)] * len(report["stages"]["steps_s"])


def summarize(report: Mapping[str, Any], weights: Mapping[str, Any], warmup_steps: int,
              recipe: Optional[str], load_s: Optional[float] = None) -> Dict[str, Any]:
    """The bench result from the measured call's report (``load_s``: the pipeline's load, when
    the models were loaded before the call rather than in it)."""
    st = dict(report["stages"])
    if load_s is not None and not st.get("load_s"):
        st["load_s"] = load_s
    steps = list(st["steps_s"])
    uncond = report.get("negative_prompt") is not None
    forwards = [2 if uncond and g != 1.0 else 1 for g in _guides_per_step(report)]
    per_forward = [s / f for s, f in zip(steps, forwards)]
    stages = {k: st.get(k + "_s") for k in STAGES if st.get(k + "_s") is not None}
    stages["total"] = st["total_s"]
    compute = sum(stages.get(k, 0.0) for k in COMPUTE)
    peak = report["peak_memory"]["bytes"]
    return {
        "kind": "wanport.bench.pipeline",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "recipe": recipe,
        "recipe_hash": report["recipe_hash"],
        "model": report["model"],
        "task": report["task"],
        "size": report["size"],
        "weights": dict(weights),
        "backend": report["backend"]["name"],
        "device": report["backend"]["device_name"],
        "precision": report["precision"]["name"],
        "ops": {site: v["impl"] for site, v in report["ops"].items()},
        "warmup_steps": warmup_steps,
        "steps": len(steps),
        "forwards_per_step": forwards,
        "stages_s": stages,
        "compute_s": round(compute, 4),
        "steps_s": steps,
        "step_median_s": round(statistics.median(steps), 4) if steps else None,
        "dit_forward_median_s": round(statistics.median(per_forward), 4) if per_forward else None,
        "peak_memory_gib": round(peak / GIB, 3) if peak else None,
        "peak_memory_kind": report["peak_memory"]["kind"],
        "time_to_first_step_s": (report.get("pipeline") or {}).get("time_to_first_step_s"),
        "parallel": report.get("parallel"),
        "experts": (report.get("experts") or {}).get("per_step"),
        "published": published.published_rows([report["model"]]),
        "versions": report["versions"],
        "run_report": dict(report),
    }


def _step_values(plan, steps: int) -> Dict[str, Any]:
    """generate() values that make a call take ``steps`` steps (a distill recipe: the first
    entries of its list)."""
    if plan.denoising_step_list:
        return {"denoising_step_list": list(plan.denoising_step_list[:steps])}
    return {"steps": steps}


def _broadcast(obj):
    """``obj`` of rank 0 on every rank (one process: unchanged)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def bench_pipeline(recipe: Optional[str], overrides: Sequence[str] = (), weights: str = "auto",
                   steps: Optional[int] = None, warmup_steps: int = 1, seed: int = 0,
                   progress: bool = False, source: str = "recipe", random_lora: Optional[int] = None,
                   lora_modes: Sequence[str] = ("merged", "unmerged"),
                   caches: Sequence[str] = (),
                   on_partial: Optional[Callable[[Dict[str, Any]], None]] = None) -> Optional[Dict[str, Any]]:
    """Load once, warm-up call, measured call, summary. ``steps`` overrides the recipe's step
    count. ``random_lora``: also measure a random LoRA of that rank, merged and/or unmerged
    (:mod:`.lora`; a pipeline each, since a LoRA is applied as the weights load), beside the run
    without it. ``caches``: feature-cache specs (:mod:`.cache`), each one more call in the same
    pipeline after the measured exact call. ``on_partial(result)``: called on rank 0 after the
    exact call and after every cached call with the result so far (``partial: true``), so a run
    stopped by a time limit keeps the finished rows (the CLI writes it to --out). Returns the
    result on rank 0, None on the other ranks of a multi-process run."""
    from ..pipeline.api import Pipeline
    from . import lora as lora_bench

    if warmup_steps < 0 or (steps is not None and steps < 1):
        raise ConfigError("bench pipeline: --warmup-steps must be >= 0 and --steps >= 1")
    if random_lora is not None and random_lora < 1:
        raise ConfigError("bench pipeline: --random-lora must be a rank >= 1")
    cfg, _ = load_recipe(recipe, list(overrides))
    plan = plan_run(cfg, source)  # every recipe problem before anything loads
    if plan.timesteps and (steps is not None or warmup_steps):
        raise ConfigError("bench pipeline: the recipe lists sample.timesteps; --steps and a warm-up need a step "
                          "count (drop sample.timesteps, or pass --warmup-steps 0 and no --steps)")
    if plan.denoising_step_list and steps is not None and steps > len(plan.denoising_step_list):
        raise ConfigError("bench pipeline: --steps %d exceeds the %d entries of sample.denoising_step_list"
                          % (steps, len(plan.denoising_step_list)))
    from . import cache as cache_bench

    cache_calls = cache_bench.parse_specs(caches, plan.preset.name, steps if steps is not None else plan.num_steps)
    if cache_calls:
        from ..config import build_config
        from ..pipeline.api import recipe_dict

        for label, section in cache_calls:  # every cache section checked before anything loads
            raw_c, source_c = recipe_dict(recipe, {"cache": section}, list(overrides))
            plan_run(build_config(raw_c, source_c), "bench pipeline --cache %s" % label)
    weight_source, described = choose_weights(weights, plan.checkpoint_dir, seed)
    cached_reports: List[Any] = []

    def with_cache_rows(report, load_s) -> Dict[str, Any]:
        """The result of the exact call, and the cached calls finished so far."""
        result = summarize(report, described, warmup_steps, recipe, load_s)
        if cache_calls:
            exact = report["stages"].get("denoise_s") or 0.0
            result["cache"] = {"exact_denoise_s": exact, "exact_forwards": sum(result["forwards_per_step"]),
                               "calls_planned": len(cache_calls),
                               "runs": [cache_bench.row(label, section, rep, exact)
                                        for (label, section), rep in zip(cache_calls, cached_reports)]}
        return result

    def measure(extra: Sequence[str], with_caches: bool = False):
        """(report of the measured call, load s, is main) of one pipeline: warm-up, then measured
        (then, ``with_caches``, one call per cache spec, whose reports go to ``cached_reports``)."""
        with Pipeline.from_recipe(recipe, overrides=list(overrides) + ["output.dir=%s" % tmp] + list(extra),
                                  weights=weight_source, progress=progress) as pipe:
            if warmup_steps:
                pipe.generate(progress=False, cache={"method": "none"}, **_step_values(plan, warmup_steps))
            count = _step_values(plan, steps) if steps is not None else {}
            pipe.generate(progress=progress, cache={"method": "none"}, **count)
            report = pipe.last_report
            if with_caches:
                for i, (_, section) in enumerate([(None, None)] + list(cache_calls)):
                    if i:
                        pipe.generate(progress=progress, cache=section, **count)
                        cached_reports.append(pipe.last_report)
                    if on_partial is not None and pipe.is_main and cache_calls:
                        on_partial(dict(with_cache_rows(report, pipe.load_s), partial=True))
            return report, pipe.load_s, pipe.is_main

    with out_of_memory_as_error(plan, lambda: weight_source.inspect(plan)), \
            tempfile.TemporaryDirectory(prefix="wanport-bench-") as tmp:  # nothing is written; output.dir must be
        report, load_s, main = measure((), with_caches=True)
        result = with_cache_rows(report, load_s) if main else None
        if random_lora is not None:
            info = lora_bench.synthesise(plan, weight_source, random_lora, seed, tmp) if main else None
            info = _broadcast(info)
            runs = {}
            for mode in lora_modes:
                report_l, load_l, _ = measure([lora_bench.lora_override(info, mode)])
                if main:
                    runs[mode] = summarize(report_l, described, warmup_steps, recipe, load_l)
            if main:
                result["lora"] = lora_bench.overhead(result, runs, info)
    if result is not None and cache_calls:
        result["partial"] = False  # every call finished (the files written on the way said true)
    return result


def markdown(result: Mapping[str, Any]) -> str:
    size = result["size"]
    w = result["weights"]
    head = ("%s %s %dx%d x %d frames, %d steps after %d warm-up step(s), backend %s on %s, precision %s, %s weights"
            % (result["model"], result["task"], size["width"], size["height"], size["frames"], result["steps"],
               result["warmup_steps"], result["backend"], result["device"], result["precision"], w["source"]))
    compute = result["compute_s"] or 0.0
    lines = [head, "", "| stage | s | % of compute |", "|---|---|---|"]
    if result.get("partial"):
        lines[:0] = ["PARTIAL RESULT: written while the bench was still running (finished calls only)", ""]
    for name, secs in result["stages_s"].items():
        pct = "%.1f" % (100.0 * secs / compute) if name in COMPUTE and compute > 0 else ""
        label = "load (random init)" if name == "load" and w["source"] == "random" else name.replace("_", " ")
        if name == "total":
            label = "total of the measured call (models already loaded)"
        lines.append("| %s | %.3f | %s |" % (label, secs, pct))
    lines.append("| compute (text + image + VAE encode + denoise + decode) | %.3f | 100 |" % compute)
    lines.append("")
    if result["steps_s"]:
        lines.append("per step: median %.4f s (min %.4f, max %.4f); DiT forward median %.4f s; peak memory %s GiB (%s)"
                     % (result["step_median_s"], min(result["steps_s"]), max(result["steps_s"]),
                        result["dit_forward_median_s"], result["peak_memory_gib"], result["peak_memory_kind"]))
    from . import lora as lora_bench

    section = lora_bench.markdown(result.get("lora"))
    if section:
        lines += ["", section]
    from . import cache as cache_bench

    section = cache_bench.markdown(result.get("cache"))
    if section:
        lines += ["", section]
    if result.get("time_to_first_step_s") is not None:
        lines.append("measured call: %.3f s from generate() to the first denoising step (models loaded once, %s "
                     "call)" % (result["time_to_first_step_s"], "after a warm-up" if result["warmup_steps"]
                                else "first"))
    par = result.get("parallel")
    if par:
        steps = result["steps"] or 0
        lines += ["", "%d ranks (cfg %d x ulysses %d x ring %d%s, vae %s, %s):" % (
            par["world"], par["cfg"], par["ulysses"], par["ring"],
            "" if par["ulysses"] == 1 else ", ulysses overlap %s" % ("on" if par.get("ulysses_overlap", True) else "off"),
            par["vae"], par["dist_backend"]),
            "", "| rank | device | peak memory GiB | comm s | comm calls | comm GB | denoise: exposed comm s/step "
                "| denoise: compute s/step |", "|---|---|---|---|---|---|---|---|"]
        for r in par["ranks"]:
            exposed = r.get("denoise_comm_s")
            per_step = exposed / steps if exposed is not None and steps else None
            compute = (result["step_median_s"] - per_step) if per_step is not None and result["step_median_s"] else None
            lines.append("| %d | %s | %.3f | %.3f | %d | %s | %s | %s |" % (
                r["rank"], r["device"], r["peak_memory_bytes"] / GIB, r["comm_s"], r["comm_calls"],
                "" if r.get("comm_bytes") is None else "%.3f" % (r["comm_bytes"] / 1e9),
                "" if per_step is None else "%.4f" % per_step, "" if compute is None else "%.4f" % compute))
        lines.append("exposed comm: time the compute waited for collectives (asynchronous ones at their wait "
                     "only); compute s/step: the median step less it")
    table = published.markdown(result.get("published") or [], "Published numbers for %s" % result["model"])
    if table:
        lines += ["", table]
    return "\n".join(lines)


def plots(result: Mapping[str, Any]):
    from ..io.plots import bar_chart, line_chart

    title = "%s on %s (%s), %s weights" % (result["model"], result["device"], result["backend"],
                                           result["weights"]["source"])
    stages = {k: v for k, v in result["stages_s"].items() if k != "total"}
    out = [("-stages", lambda path: bar_chart(path, "stage split: " + title, list(stages),
                                              {"s": list(stages.values())}, "seconds", log=False))]
    if result["steps_s"]:
        xs = list(range(len(result["steps_s"])))
        out.append(("-steps", lambda path: line_chart(path, "per-step latency: " + title, xs,
                                                      {"step (s)": result["steps_s"]}, "step", "seconds")))
    return out


__all__ = ["bench_pipeline", "summarize", "choose_weights", "markdown", "plots"]
