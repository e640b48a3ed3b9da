"""The ``wanport`` command line.

    wanport run [RECIPE] [key.path=value ...]   run a recipe (no recipe: the embedded tiny one)
    wanport check RECIPE [key.path=value ...]   validate recipe, backend, ops and checkpoint files; load nothing
    wanport backends                            discovered backends, availability, implementations per op
    wanport models                              known model presets and their official defaults
    wanport make-tiny DIR --model LAYOUT        tiny random checkpoint in the official layout (wan2.1-t2v,
                                                wan2.1-i2v, wan2.2-t2v-a14b, wan2.2-i2v-a14b, wan2.2-ti2v-5b)
    wanport nproc [RECIPE] [overrides]          processes the recipe needs (used by run.sh)
    wanport plan [RECIPE] [overrides] [--device-memory 24GiB] [--devices N] [--json PATH] [--resident]
                                                predicted device/host memory per stage; layouts that fit
    wanport bench ops|dit|pipeline|merge ...    benchmarks (JSON, markdown, PNG with matplotlib)
    wanport dump [RECIPE] [overrides] --out DIR record a run for cross-backend comparison
    wanport compare A B [--out STEM]            compare two dumps: first divergent block and step
    wanport serve [RECIPE] [overrides] [--host 127.0.0.1] [--port 8000] [--ui]
                                                the recipe's pipeline behind an HTTP task API (docs/serving.md)

A user error prints one message (no traceback) and exits non-zero: 2 recipe, 3 checkpoint,
4 backend, 5 input, 6 dump, 7 output not writable, 8 out of memory or predicted not to fit the
device (``run --force`` runs anyway) (README: "Exit codes").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .errors import WanportError


def _split_recipe(args) -> None:
    """``run a=b`` (no recipe, only overrides) vs ``run recipe.yaml a=b``."""
    if args.recipe is not None and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.recipe)
        args.recipe = None
    args.overrides = list(args.overrides) + list(args.set or [])


def _load(args):
    from .config import load_recipe

    _split_recipe(args)
    cfg, raw = load_recipe(args.recipe, args.overrides)
    source = "recipe %s" % args.recipe if args.recipe else "the embedded tiny recipe"
    return cfg, raw, source


def cmd_run(args) -> int:
    from .pipeline.run import run

    if getattr(args, "force", False):  # skip the memory plan's refusal (wanport plan)
        args.set = list(args.set or []) + ["memory_check=false"]
    cfg, raw, source = _load(args)
    report = run(cfg, raw, progress=not args.no_progress, source=source)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 wrote anything
        return 0
    st = report["stages"]
    print("wrote %s (%d frames %dx%d) in %.2f s [load %.2f, text %.2f, denoise %.2f, decode %.2f]; report %s"
          % (report["output"]["video"], report["size"]["frames"], report["size"]["width"],
             report["size"]["height"], st["total_s"], st.get("load_s", 0), st.get("text_encode_s", 0),
             st.get("denoise_s", 0), st.get("vae_decode_s", 0), report["output"]["report"]))
    return 0


def cmd_plan(args) -> int:
    from .plan.cli import run_plan

    cfg, raw, source = _load(args)
    return run_plan(cfg, source, args.device_memory, args.devices, args.json,
                    resident=getattr(args, "resident", False))


def cmd_check(args) -> int:
    from .pipeline.common import check_run, resolve_dit_ops
    from .pipeline.session import start_session

    cfg, raw, source = _load(args)
    plan, image, size, registry, spec, ckpts = check_run(cfg, source)
    from .io.video import require_encoder

    require_encoder(source)
    extra = ""
    if plan.world > 1:  # validated here, launched by run.sh / torchrun
        from .errors import ConfigError
        from .parallel.config import check_heads

        problems = check_heads(plan.parallel, ckpts.dit.config.num_heads, plan.preset.name)
        if problems:
            raise ConfigError(problems[0])
        extra += ", %d processes (cfg %d x ulysses %d x ring %d)" % (
            plan.world, plan.parallel.cfg, plan.parallel.ulysses, plan.parallel.ring)
    session = start_session(registry, spec, cfg.env)
    ops = resolve_dit_ops(registry, spec, ckpts, plan, cfg.ops)
    if image is not None:
        extra += ", image %s (%dx%d) -> video %dx%d" % (plan.image_path, image.width, image.height, size[0], size[1])
    if ckpts.experts:
        extra += ", experts %s (boundary %g)" % ("+".join(ckpts.experts), plan.boundary)
    print("ok: %s on backend %s (%s), %dx%d x %d frames, %d steps%s; ops: %s"
          % (plan.preset.name, spec.name, session.device, plan.width, plan.height, plan.frame_num,
             plan.num_steps, extra, json.dumps(ops.describe())))
    return 0


def cmd_backends(args) -> int:
    from .ops.contracts import OP_KINDS
    from .registry import discover

    registry = discover()
    if getattr(args, "markdown", False):
        from .registry.listing import backends_markdown

        sys.stdout.write(backends_markdown(registry))
        return 0
    for name, spec in sorted(registry.backends.items(), key=lambda kv: (kv[0] != "reference", kv[0])):
        ok, why = spec.availability()
        print("%s  [%s]  device=%s dist=%s plugin=%s" % (
            name, "available" if ok else "unavailable: " + why, spec.device_type, spec.dist_backend,
            registry.plugin_of.get(name)))
        if spec.description:
            print("    %s" % spec.description)
        for kind in OP_KINDS:
            impls = sorted(registry.impls_for(name, kind), key=lambda i: -i.priority)
            if not impls:
                from .ops.contracts import COMPOSABLE, composed_from

                how = composed_from(kind) if kind in COMPOSABLE else "reference fallback"
                print("    %-20s (%s)" % (kind, how))
                continue
            cells = []
            for impl in impls:
                iok, iwhy = impl.available()
                tag = "" if iok else " (unavailable: %s)" % iwhy
                if not impl.exact:
                    tag += " (lossy, opt-in)"
                elif impl.default_sites is not None:
                    tag += " (default at %s)" % ", ".join(sorted(impl.default_sites))
                cells.append(impl.name + tag)
            print("    %-20s %s" % (kind, ", ".join(cells)))
    orphans = [i for i in registry.impls if i.backend not in registry.backends]
    for impl in orphans:
        print("note: %s implements %s for unknown backend %r" % (impl.name, impl.kind, impl.backend))
    for f in registry.failures:
        print("plugin %s (%s) failed to load: %s" % (f.plugin, f.target, f.error))
    return 0


def cmd_models(args) -> int:
    from .config import MODELS

    for name, p in sorted(MODELS.items()):
        extra = ""
        if p.shift_by_size:
            extra += " (%s)" % ", ".join("%g at %s" % (v, k) for k, v in sorted(p.shift_by_size.items()))
        if p.experts:
            extra += ", boundary %g" % p.boundary
        if p.image != "none":
            extra += ", image %s" % p.image
        print("%-21s %s %s: %s, steps %d, shift %g%s, guide %s, %d frames @ %d fps%s" % (
            name, p.family, p.task, p.size, p.steps, p.shift, extra, p.describe_guide(), p.frame_num, p.fps,
            ("; " + p.notes) if p.notes else ""))
    from .config.distilled import DISTILLED_RECIPES

    print("\nstep-distilled (4 steps, no CFG; sample.solver: distill):")
    for recipe, model, what in DISTILLED_RECIPES:
        print("  recipes/%-40s %-21s %s" % (recipe, model, what))
    return 0


def cmd_make_tiny(args) -> int:
    from .checkpoints.tiny import make_tiny

    wrote = make_tiny(args.dir, args.model, seed=args.seed, if_missing=args.if_missing, heads=args.heads)
    print("%s tiny %s checkpoint in %s" % ("wrote" if wrote else "kept existing", args.model, args.dir))
    if args.lora:
        from .lora.tiny import make_tiny_loras

        for path in make_tiny_loras(args.dir, args.model, seed=args.seed, if_missing=args.if_missing,
                                    heads=args.heads).values():
            print("tiny LoRA %s" % path)
    return 0


def _emit(args, module, result) -> int:
    """Print a bench/compare result's markdown; with --out, write its JSON, markdown and PNGs."""
    from .io.results import write_results

    text = module.markdown(result)
    print(text)
    if args.out:
        write_results(args.out, result, text, module.plots(result))
    return 0


def cmd_bench_dit(args) -> int:
    from .bench import dit
    from .bench.dit import bench_dit

    def overrides(items, flag):
        ops = {}
        for item in items or []:
            if "=" not in item:
                raise WanportError("%s %r must look like kind=impl (e.g. attention=sdpa_cudnn)" % (flag, item))
            k, _, v = item.partition("=")
            ops[k.strip()] = v.strip()
        return ops

    quant_ops = overrides(args.quant_ops, "--quant-ops")
    if quant_ops and not args.quant:
        raise WanportError("--quant-ops overrides ops of the quantized run: give --quant too")
    result = bench_dit(args.model, args.size, args.frames, backend=args.backend, ops=overrides(args.ops, "--ops"),
                       precision=args.precision, peer=args.peer, warmup=args.warmup, repeats=args.repeats,
                       layers=args.layers, compile=args.compile, quant=args.quant,
                       quant_keep=args.quant_keep, quant_ops=quant_ops)
    return _emit(args, dit, result)


def cmd_bench_scaling(args) -> int:
    from .bench import scaling

    result = scaling.bench_scaling(args.model, args.size, args.frames, args.layouts, backend=args.backend,
                                   precision=args.precision, warmup=args.warmup, repeats=args.repeats,
                                   layers=args.layers, ulysses_overlap=args.ulysses_overlap,
                                   ulysses_exchange=args.ulysses_exchange)
    if os.environ.get("RANK", "0") != "0":
        return 0
    return _emit(args, scaling, result)


def cmd_bench_ops(args) -> int:
    from .bench import ops

    result = ops.bench_ops(backend=args.backend, models=args.models, sizes=args.sizes, kinds=args.kinds,
                           warmup=args.warmup, repeats=args.repeats, quick=args.quick)
    return _emit(args, ops, result)


def cmd_bench_pipeline(args) -> int:
    from .bench import pipeline

    _split_recipe(args)
    source = "recipe %s" % args.recipe if args.recipe else "the embedded tiny recipe"
    result = pipeline.bench_pipeline(args.recipe, args.overrides, weights=args.weights, steps=args.steps,
                                     warmup_steps=args.warmup_steps, seed=args.seed,
                                     progress=not args.no_progress, source=source, random_lora=args.random_lora,
                                     lora_modes=("merged", "unmerged") if args.lora_mode == "both"
                                     else (args.lora_mode,), caches=args.cache or (),
                                     on_partial=_partial_writer(args, pipeline))
    if result is None:  # a rank other than 0: rank 0 prints and writes
        return 0
    return _emit(args, pipeline, result)


def _partial_writer(args, module):
    """With --out: write a partial result (JSON + markdown, each atomically) as the bench goes."""
    if not args.out:
        return None
    from .io.results import write_results

    return lambda result: write_results(args.out, result, module.markdown(result), say=None)


def cmd_bench_merge(args) -> int:
    from .bench import merge

    return _emit(args, merge, merge.merge(args.inputs, labels=args.labels, notes=args.note or []))


def cmd_dump(args) -> int:
    from .dump.record import dump_recipe

    _split_recipe(args)
    source = "recipe %s" % args.recipe if args.recipe else "the embedded tiny recipe"
    manifest = dump_recipe(args.recipe, args.overrides, args.out, blocks=args.blocks, steps=args.steps,
                           fingerprint=args.fingerprint, progress=not args.no_progress, source=source)
    if manifest is None:  # under torchrun only rank 0 writes the dump
        return 0
    d = manifest["dump"]
    print("wrote dump %s: %d steps x %d blocks (%s), %d full tensors, format %s v%d"
          % (args.out, d["num_steps"], d["num_blocks"], "+".join(d["branches"]),
             len(manifest["files"]["blocks.safetensors"]), manifest["format"], manifest["version"]))
    return 0


def cmd_compare(args) -> int:
    from .dump import compare

    result = compare.compare_dumps(args.a, args.b, threshold=args.threshold,
                                   allow_different_recipe=args.allow_different_recipe)
    return _emit(args, compare, result)


def cmd_nproc(args) -> int:
    from .parallel.config import world_size

    cfg, raw, source = _load(args)
    print(world_size(cfg.parallel))
    return 0


OVERRIDE_HELP = ("dotted overrides KEY=VALUE, e.g. sample.steps=4. The value is everything after the first '='. "
                 "Text fields (prompt, negative_prompt, model, checkpoint_dir, image, task, backend, sample.solver, "
                 "sample.noise, offload.dit, offload.text_encoder, offload.vae, output.dir, output.name, quant.dit, "
                 "quant.attention, cache.method, cache.input, parallel.ulysses_exchange) take it verbatim ('#', ':' "
                 "and quotes included; empty unsets an optional one); every other field reads it as one YAML value: "
                 "a number, true/false, "
                 "null, [a, list] or {a: mapping}. Relative paths resolve from the working directory.")
OUT_HELP = "result stem: writes STEM.json, STEM.md and (with matplotlib) STEM*.png"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wanport", description="Wan video diffusion on any accelerator.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def recipe_args(sp, optional: bool):
        sp.add_argument("recipe", nargs="?" if optional else None, default=None,
                        help="YAML recipe (default: the embedded tiny recipe)" if optional else "YAML recipe")
        sp.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override (repeatable)")

    sp = sub.add_parser("run", help="run a recipe end to end")
    recipe_args(sp, optional=True)
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--force", action="store_true", help="run even when the memory plan predicts it will not fit")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("plan", help="predict peak device and host memory per stage before loading; layouts that fit")
    recipe_args(sp, optional=True)
    sp.add_argument("--device-memory", metavar="SIZE", help="device memory, e.g. 24GiB or 80GB (default: asked of "
                    "the recipe's backend)")
    sp.add_argument("--devices", type=int, metavar="N", help="devices to plan layouts for (default: the recipe's)")
    sp.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    sp.add_argument("--resident", action="store_true",
                    help="plan a wanport.Pipeline that keeps every model loaded (T5 and DiT through the decode)")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("check", help="validate a recipe, its backend, ops and checkpoint files (loads no weights)")
    recipe_args(sp, optional=True)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("backends", help="list discovered backends and their op implementations")
    sp.add_argument("--markdown", action="store_true",
                    help="print the backend x op table (README's) instead: no availability, nothing machine-specific")
    sp.set_defaults(func=cmd_backends)

    sp = sub.add_parser("models", help="list known model presets")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("make-tiny", help="write a tiny random checkpoint in the official layout")
    sp.add_argument("dir")
    sp.add_argument("--model", default="wan2.1-t2v",
                    help="layout: wan2.1-t2v (default), wan2.1-i2v, wan2.2-t2v-a14b, wan2.2-i2v-a14b, wan2.2-ti2v-5b")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--if-missing", action="store_true", help="do nothing if DIR already holds it")
    sp.add_argument("--heads", type=int, default=2,
                    help="DiT attention heads, 128 wide each (default 2; 4 for Ulysses at degree 4)")
    sp.add_argument("--lora", action="store_true",
                    help="also write a tiny LoRA in each supported key format to DIR/lora/")
    sp.set_defaults(func=cmd_make_tiny)

    sp = sub.add_parser("bench", help="benchmarks")
    bench = sp.add_subparsers(dest="bench", metavar="BENCH")
    bench.required = True
    bp = bench.add_parser("dit", help="one real-size DiT forward with random weights (optionally beside diffusers)")
    bp.add_argument("--model", default="wan2.1-t2v-14b")
    bp.add_argument("--size", default="832*480", help="W*H")
    bp.add_argument("--frames", type=int, default=81)
    bp.add_argument("--backend", default="auto")
    bp.add_argument("--ops", action="append", metavar="KIND=IMPL", help="op override (repeatable)")
    bp.add_argument("--precision", default="official")
    bp.add_argument("--peer", choices=["diffusers"], default=None)
    bp.add_argument("--warmup", type=int, default=1)
    bp.add_argument("--repeats", type=int, default=3)
    bp.add_argument("--layers", type=int, default=None, help="fewer layers (quick checks)")
    bp.add_argument("--compile", action="store_true", help="torch.compile each block (the warm-up compiles)")
    bp.add_argument("--quant", default=None, metavar="SCHEME",
                    help="also run the DiT with quantized Linears (fp8_rowwise, fp8_tensor, int8_w8a8, int8_w8a16), FP8 "
                         "self-attention (fp8_attention, fp8_tensor_attention), or both (e.g. fp8_rowwise+fp8_attention): "
                         "time, peak memory, output cosine / rel L2 vs the exact forward (docs/quantization.md)")
    bp.add_argument("--quant-ops", action="append", metavar="KIND=IMPL",
                    help="with --quant: op override of the quantized run only (repeatable), e.g. "
                         "attention=reference.emulate_fp8_tensor to run a scheme's float32 emulation in its place")
    bp.add_argument("--quant-keep", nargs="+", default=None, metavar="MODULE",
                    help="with --quant: the quant.keep list (default: patch/text/time embeddings, time_projection, "
                         "head, img_emb), e.g. --quant-keep time_projection head blocks.*.cross_attn")
    bp.add_argument("--out", default=None, help=OUT_HELP)
    bp.set_defaults(func=cmd_bench_dit)
    bp = bench.add_parser("scaling", help="per-step DiT latency per parallel layout: speedup, efficiency")
    bp.add_argument("--model", default="wan2.1-t2v-14b")
    bp.add_argument("--size", default="832*480", help="W*H")
    bp.add_argument("--frames", type=int, default=81)
    bp.add_argument("--layouts", nargs="+", default=["cfg2", "u2", "u4", "u8", "cfg2xu2", "cfg2xu4"],
                    help="e.g. cfg2 u4 r2 cfg2xu4 u2xr2 (under torchrun: the layouts of that world size)")
    bp.add_argument("--backend", default="auto")
    bp.add_argument("--precision", default="official")
    bp.add_argument("--warmup", type=int, default=1)
    bp.add_argument("--repeats", type=int, default=3)
    bp.add_argument("--layers", type=int, default=None, help="fewer layers (quick checks)")
    bp.add_argument("--ulysses-overlap", default="on", choices=("on", "off", "both"),
                    help="parallel.ulysses_overlap for the Ulysses layouts; both: each measured both ways (under "
                         "torchrun), with a bit-for-bit output check")
    bp.add_argument("--ulysses-exchange", default="collective", choices=("collective", "copy_engine", "both"),
                    help="parallel.ulysses_exchange for the overlapped Ulysses layouts; both: each measured with each")
    bp.add_argument("--out", default=None, help="output stem: STEM.json, STEM.md, STEM.png")
    bp.set_defaults(func=cmd_bench_scaling)
    bp = bench.add_parser("ops", help="every op kind x implementation at Wan shapes: latency, throughput, error")
    bp.add_argument("--backend", default="auto")
    bp.add_argument("--models", nargs="+", default=["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-ti2v-5b"])
    bp.add_argument("--sizes", nargs="+", default=None,
                    help="480p, 720p, 704p (default: 480p 720p; TI2V-5B 704p); each model at those it can take")
    bp.add_argument("--kinds", nargs="+", default=None, help="only these op kinds")
    bp.add_argument("--warmup", type=int, default=2)
    bp.add_argument("--repeats", type=int, default=10)
    bp.add_argument("--quick", action="store_true", help="tiny shapes (CI smoke run)")
    bp.add_argument("--out", default=None, help=OUT_HELP)
    bp.set_defaults(func=cmd_bench_ops)
    bp = bench.add_parser("pipeline", help="a recipe's real pipeline after a warm-up: stage split, per-step "
                                           "latency, peak memory (random weights when there is no checkpoint)")
    recipe_args(bp, optional=True)
    bp.add_argument("--weights", choices=["auto", "checkpoint", "random"], default="auto",
                    help="auto: the checkpoint when its folder exists, else real-size random weights")
    bp.add_argument("--steps", type=int, default=None, help="denoising steps (default: the recipe's)")
    bp.add_argument("--warmup-steps", type=int, default=1, help="steps of the warm-up run (0: none)")
    bp.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    bp.add_argument("--random-lora", type=int, default=None, metavar="RANK",
                    help="also run with a random LoRA of this rank (e.g. 64) on every block Linear and the head, "
                         "merged and unmerged, and report the overhead against the run without it")
    bp.add_argument("--lora-mode", choices=["merged", "unmerged", "both"], default="both",
                    help="with --random-lora: which way(s) to apply it (default both)")
    bp.add_argument("--cache", action="append", default=None, metavar="SPEC",
                    help="also run the measured call with a feature cache, in the same pipeline (repeatable): "
                         "published (the published TeaCache skip counts as schedules), reuse=N, or "
                         "key=value,... of the cache: section, e.g. method=teacache,threshold=0.2 (docs/caching.md)")
    bp.add_argument("--no-progress", action="store_true", help="no progress bar")
    bp.add_argument("--out", default=None, help=OUT_HELP)
    bp.set_defaults(func=cmd_bench_pipeline)
    bp = bench.add_parser("merge", help="bench results of one or more machines: per-backend and combined tables")
    bp.add_argument("inputs", nargs="+", help="JSON files of bench ops/dit/pipeline (or earlier merges)")
    bp.add_argument("--out", default=None, help=OUT_HELP)
    bp.add_argument("--labels", nargs="+", default=None, help="one label per input file (default: backend @ device)")
    bp.add_argument("--note", action="append", help="a note for the report (repeatable)")
    bp.set_defaults(func=cmd_bench_merge)

    sp = sub.add_parser("dump", help="run a recipe and record per-block statistics, latents, chosen tensors, video")
    recipe_args(sp, optional=True)
    sp.add_argument("--out", required=True, help="dump folder (new, empty, or an earlier dump)")
    sp.add_argument("--blocks", default=None, help="blocks whose full outputs are kept: 0,39 or 0-3,-1 or all "
                                                    "(default: none; statistics cover every block)")
    sp.add_argument("--steps", default=None, help="steps at which those are kept: 0,49 or all (default: none)")
    sp.add_argument("--fingerprint", type=int, default=256, help="values per block output in the fingerprint")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_dump)

    sp = sub.add_parser("compare", help="compare two dumps: per-block divergence, latents, tensors, video")
    sp.add_argument("a", help="dump folder A (e.g. the port)")
    sp.add_argument("b", help="dump folder B (the reference)")
    sp.add_argument("--threshold", type=float, default=0.05,
                    help="relative L2 error that counts as divergence (default 0.05)")
    sp.add_argument("--allow-different-recipe", action="store_true",
                    help="compare dumps of different recipes (warns instead of refusing)")
    sp.add_argument("--out", default=None, help=OUT_HELP)
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("nproc", help="number of processes the recipe needs")
    recipe_args(sp, optional=True)
    sp.set_defaults(func=cmd_nproc)

    sp = sub.add_parser("serve", help="load a recipe's pipeline once and serve it: HTTP task API, optional "
                                      "Gradio page (docs/serving.md)")
    from .serve.main import add_arguments, cmd_serve

    add_arguments(sp)
    sp.set_defaults(func=cmd_serve)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options too: `wanport run recipe.yaml --no-progress sample.steps=4`
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error("unrecognized arguments: %s" % " ".join(stray))
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        if getattr(args, "out", None):  # an unwritable --out fails now, not after the work
            from .io.location import prove_out_option

            prove_out_option(args.out, folder=args.command == "dump")
        return args.func(args)
    except WanportError as exc:
        print("wanport: error: %s" % exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wanport: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
