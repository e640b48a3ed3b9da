"""FP8 attention (``quant.attention: fp8``) on one Hopper GPU, in about two minutes:

1. the cuda kernel (``cuda.fp8_triton``) through the conformance kit (contract, shapes, dtypes,
   refusals, within its declared tolerance of float64 attention);
2. the kernel against the float32 emulation of the same scheme (``reference.emulate_fp8``, run on
   the GPU) at moderate shapes, with padded keys and the log-sum-exp;
3. at Wan self-attention shapes (14B: 40 heads, 1.3B: 12 heads, D = 128; 480p x 81 frames: S =
   32760, 720p: S = 75600): latency (median of timed runs after warm-up) and TFLOP/s
   (4 B N S^2 D / t) of bf16 cuDNN attention (SDPA), of the FP8 attention end to end (quantizers +
   kernel) and of the kernel alone; accuracy on a slice (the first 1024 queries of two heads, all
   keys) of FP8 and of bf16 cuDNN against float64 attention (relative L2, cosine), and of the kernel
   against the emulation.

Random q, k, v (k with a per-channel offset, which the scheme's smoothing removes): the scores of
real Wan activations are not Gaussian; the accuracy of real checkpoints is measured with
``wanport dump`` / ``compare`` of an exact and an FP8-attention recipe. Each case records its
error instead of stopping the script; cases past ``--budget-s`` are skipped, not run.

    python3 benchmarks/fp8_attention_check.py --out out/fp8-attention
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch

WAN_SHAPES = (  # name, B, S, N, D
    ("wan2.1-14b 480p", 1, 32760, 40, 128),
    ("wan2.1-1.3b 480p", 1, 32760, 12, 128),
    ("wan2.1-14b 720p", 1, 75600, 40, 128),
    ("wan2.1-1.3b 720p", 1, 75600, 12, 128),
)


def rel_l2(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def cosine(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-300))


#: --smoke: the script's own logic on a CPU (Triton's interpreter, float32 operands on e4m3's grid,
#: tiny shapes, plain SDPA for cuDNN); set in main
SMOKE = False


def sync():
    if not SMOKE:
        torch.cuda.synchronize()


def median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        if SMOKE:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _interpreter_numpy_fix():
    """Triton 3.6's interpreter takes int() of 1-element arrays, which numpy >= 2.4 refuses."""
    import numpy as np
    import triton.runtime.interpreter as interp

    orig = interp._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interp._patch_lang_tensor = patched


def kernel_fns():
    """(attention, quantize, launch) of the cuda FP8 attention (emulated operands under --smoke)."""
    import functools

    from wanport_cuda.fp8_attention import launch, make_fp8_attention, quantize

    if SMOKE:
        return (make_fp8_attention(emulate=True), functools.partial(quantize, emulate=True),
                functools.partial(launch, emulate=True))
    return make_fp8_attention(), quantize, launch


def make_qkv(b, s, n, d, seed, dev):
    g = torch.Generator(device=dev).manual_seed(seed)
    q = torch.randn(b, s, n, d, device=dev, generator=g, dtype=torch.bfloat16)
    k = torch.randn(b, s, n, d, device=dev, generator=g, dtype=torch.bfloat16)
    k += 0.5 * torch.randn(1, 1, n, d, device=dev, generator=g, dtype=torch.bfloat16)
    v = torch.randn(b, s, n, d, device=dev, generator=g, dtype=torch.bfloat16)
    return q, k, v


def cudnn_attention(q, k, v, scale):
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with (contextlib.nullcontext() if SMOKE else sdpa_kernel([SDPBackend.CUDNN_ATTENTION])):
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def case_conformance(res):
    from wanport.registry import discover
    from wanport.testing.checks import check_impl

    impl = next(i for i in discover().impls if i.qualified_name == "cuda.fp8_triton")
    ok, why = impl.available()
    res["available"], res["why"] = ok, why
    if not ok and not SMOKE:
        raise RuntimeError("cuda.fp8_triton unavailable: %s" % why)
    if SMOKE:
        res["ok"], res["note"] = True, "not run under --smoke (the kit checks the real kernel on the GPU)"
        return
    problems = check_impl(impl, torch.device("cuda"))
    res["problems"] = problems
    res["ok"] = not problems


def case_vs_emulation(res, dev):
    from wanport.reference.attention import attention_math
    from wanport.reference.fp8_attention import fp8_attention as emulated

    kern = kernel_fns()[0]
    rows = []
    shapes = ((1, 4096, 4096, 4, 128, None), (2, 3001, 3001, 3, 128, [3001, 1777]), (1, 1000, 2500, 2, 64, None))
    if SMOKE:
        shapes = ((1, 130, 130, 1, 64, None), (2, 100, 200, 1, 64, [200, 77]))
    for b, s, skv, n, d, lens in shapes:
        q, k, v = make_qkv(b, max(s, skv), n, d, 11, dev)
        q = q[:, :s].contiguous()
        scale = d ** -0.5
        o, lse = kern(q, k, v, scale=scale, kv_lens=lens, return_lse=True)
        sync()
        r, rl = emulated(q, k, v, scale=scale, kv_lens=lens, return_lse=True)
        ex, exl = attention_math(q.double(), k.double(), v.double(), scale=scale, kv_lens=lens, return_lse=True)
        rows.append({"shape": [b, s, skv, n, d], "kv_lens": lens, "dtype": str(o.dtype),
                     "kernel_vs_emulation_rel_l2": rel_l2(o, r),
                     "kernel_vs_emulation_lse_max_abs": float((lse - rl).abs().max()),
                     "kernel_vs_float64_rel_l2": rel_l2(o, ex), "kernel_vs_float64_cosine": cosine(o, ex),
                     "emulation_vs_float64_rel_l2": rel_l2(r, ex),
                     "kernel_lse_vs_float64_max_abs": float((lse.double() - exl).abs().max()),
                     "finite": bool(torch.isfinite(o).all())})
    res["cases"] = rows
    # the kernel and the emulation differ by summation order and exp2 vs exp (a P element may move
    # one e4m3 step): expect ~1e-3 or below, far under the scheme's own error (a few 1e-2)
    res["ok"] = all(r["finite"] and r["kernel_vs_emulation_rel_l2"] < 1e-2 for r in rows)


def case_wan(res, name, b, s, n, d, dev, runs, warmup, slice_q, slice_h):
    from wanport.reference.attention import attention_math
    from wanport.reference.fp8_attention import fp8_attention as emulated

    scale = d ** -0.5
    flops = 4.0 * b * n * s * s * d
    q, k, v = make_qkv(b, s, n, d, 0, dev)
    kern, quantize, launch = kernel_fns()
    res.update(shape={"B": b, "S": s, "N": n, "D": d}, flops=flops)
    timings = {}
    try:
        timings["bf16_cudnn_ms"] = median_ms(lambda: cudnn_attention(q, k, v, scale), runs, warmup)
    except Exception as exc:
        res["cudnn_error"] = "%s: %s" % (type(exc).__name__, exc)
    timings["fp8_end_to_end_ms"] = median_ms(lambda: kern(q, k, v, scale=scale), runs, warmup)
    ops = quantize(q, k, v)
    timings["fp8_kernel_only_ms"] = median_ms(lambda: launch(ops, s, s, scale, q.dtype, False), runs, warmup)
    timings["fp8_quantize_ms"] = median_ms(lambda: quantize(q, k, v), max(2, runs // 2), 1)
    del ops
    res["timings_ms"] = timings
    res["tflops"] = {key.replace("_ms", ""): flops / (t * 1e-3) / 1e12 for key, t in timings.items()
                     if key != "fp8_quantize_ms"}
    # accuracy on a slice: the first slice_q queries (whole 128-row blocks: the same Q scales as the
    # full call) of slice_h heads, every key, against float64
    out8 = kern(q, k, v, scale=scale)
    sl = (slice(None), slice(0, slice_q), slice(0, slice_h))
    qs, ks, vs = q[sl].contiguous(), k[:, :, :slice_h].contiguous(), v[:, :, :slice_h].contiguous()
    exact = attention_math(qs.double(), ks.double(), vs.double(), scale=scale)
    acc = {"slice": "queries [0, %d) of heads [0, %d), all %d keys" % (slice_q, slice_h, s),
           "fp8_vs_float64_rel_l2": rel_l2(out8[sl], exact), "fp8_vs_float64_cosine": cosine(out8[sl], exact)}
    try:
        ob = cudnn_attention(q, k, v, scale)
        acc.update(bf16_vs_float64_rel_l2=rel_l2(ob[sl], exact), bf16_vs_float64_cosine=cosine(ob[sl], exact),
                   fp8_vs_bf16_rel_l2=rel_l2(out8[sl], ob[sl]))
        del ob
    except Exception as exc:
        acc["bf16_error"] = "%s: %s" % (type(exc).__name__, exc)
    emu = emulated(qs, ks, vs, scale=scale)
    acc["fp8_kernel_vs_emulation_rel_l2"] = rel_l2(out8[sl], emu)
    acc["emulation_vs_float64_rel_l2"] = rel_l2(emu, exact)
    acc["finite"] = bool(torch.isfinite(out8).all())
    res["accuracy"] = acc
    res["ok"] = acc["finite"] and acc["fp8_kernel_vs_emulation_rel_l2"] < 1e-2


def run_cases(todo, report, out_dir, budget_s, t0, write_fn):
    """Run each (name, fn(result dict)) of ``todo`` into ``report["cases"]`` while the time budget
    lasts; an exception is recorded, not raised; the report is rewritten after every case (a later
    crash keeps what was measured)."""
    for name, fn in todo:
        res = report["cases"][name] = {}
        if time.time() - t0 > budget_s:
            res["skipped"] = "time budget (--budget-s %.0f) spent" % budget_s
            continue
        t = time.time()
        try:
            fn(res)
        except Exception as exc:
            res["error"] = "%s: %s" % (type(exc).__name__, exc)
            res["traceback"] = traceback.format_exc()[-4000:]
        finally:
            res["seconds"] = round(time.time() - t, 2)
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        print("[%6.1fs] %s: %s" % (time.time() - t0, name, "error: " + res["error"] if "error" in res
                                   else "ok" if res.get("ok") else "done (check the numbers)"), flush=True)
        report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_fn(out_dir, report)


def write(out_dir, report, echo=False):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "fp8_attention_check.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(tmp, path)
    lines = ["# FP8 attention check", "", "%s, torch %s, triton %s, %s" % (
        report["device"], report["torch"], report["triton"], report["finished_at"]), ""]
    conf = report["cases"].get("conformance", {})
    lines += ["Conformance kit (`cuda.fp8_triton`): %s" % ("ok" if conf.get("ok") else conf.get("error")
                                                         or "; ".join(conf.get("problems", [])[:3])), ""]
    emu = report["cases"].get("vs_emulation", {})
    if emu.get("cases"):
        lines += ["| shape B,Sq,Skv,N,D | kv_lens | kernel vs emulation | kernel vs f64 | emulation vs f64 | LSE vs f64 |",
                  "|---|---|---|---|---|---|"]
        for r in emu["cases"]:
            lines.append("| %s | %s | %.2e | %.2e | %.2e | %.2e |" % (
                r["shape"], r["kv_lens"], r["kernel_vs_emulation_rel_l2"], r["kernel_vs_float64_rel_l2"],
                r["emulation_vs_float64_rel_l2"], r["kernel_lse_vs_float64_max_abs"]))
        lines.append("")
    elif emu.get("error"):
        lines += ["vs emulation: %s" % emu["error"], ""]
    lines += ["| case | bf16 cuDNN ms (TFLOP/s) | FP8 end to end ms (TFLOP/s) | FP8 kernel ms (TFLOP/s) | quantize ms "
              "| FP8 vs f64 rel-L2 / cos | bf16 vs f64 rel-L2 / cos | kernel vs emulation |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in report["cases"].items():
        if not name.startswith("wan"):
            continue
        if "timings_ms" not in r:
            lines.append("| %s | %s |  |  |  |  |  |  |" % (name, r.get("error") or r.get("skipped")))
            continue
        t, tf, a = r["timings_ms"], r["tflops"], r.get("accuracy", {})

        def cell(key):
            return "%.2f (%.0f)" % (t[key + "_ms"], tf[key]) if key + "_ms" in t else "-"

        lines.append("| %s | %s | %s | %s | %.2f | %s | %s | %s |" % (
            name, cell("bf16_cudnn"), cell("fp8_end_to_end"), cell("fp8_kernel_only"), t.get("fp8_quantize_ms", math.nan),
            "%.4f / %.5f" % (a["fp8_vs_float64_rel_l2"], a["fp8_vs_float64_cosine"]) if "fp8_vs_float64_rel_l2" in a else "-",
            "%.4f / %.5f" % (a["bf16_vs_float64_rel_l2"], a["bf16_vs_float64_cosine"]) if "bf16_vs_float64_rel_l2" in a else "-",
            "%.1e" % a["fp8_kernel_vs_emulation_rel_l2"] if "fp8_kernel_vs_emulation_rel_l2" in a else r.get("error", "-")))
    with open(os.path.join(out_dir, "fp8_attention_check.md.tmp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(out_dir, "fp8_attention_check.md.tmp"), os.path.join(out_dir, "fp8_attention_check.md"))
    if echo:
        print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for fp8_attention_check.json and .md")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=150.0, help="skip the cases that would start after this")
    ap.add_argument("--slice-queries", type=int, default=1024)
    ap.add_argument("--slice-heads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="check this script on a CPU (Triton interpreter, tiny shapes)")
    args = ap.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    if SMOKE and os.environ.get("TRITON_INTERPRET") != "1":
        ap.error("--smoke runs Triton's interpreter: set TRITON_INTERPRET=1")
    if SMOKE:
        _interpreter_numpy_fix()
    t0 = time.time()
    try:
        import triton
        triton_version = triton.__version__
    except Exception as exc:  # recorded; the cases then say why they fail
        triton_version = "not importable: %s" % exc
    report = {"kind": "wanport.fp8_attention_check", "torch": torch.__version__, "triton": triton_version,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
              "capability": list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": {}}
    dev = torch.device("cpu" if SMOKE else "cuda")
    shapes = (("tiny", 1, 300, 2, 64), ("tiny-2", 1, 260, 1, 64)) if SMOKE else WAN_SHAPES
    wan = [("wan " + name, lambda r, b=b, s=s, n=n, d=d, name=name: case_wan(
        r, name, b, s, n, d, dev, args.runs, args.warmup, min(args.slice_queries, s), args.slice_heads))
        for name, b, s, n, d in shapes]
    # correctness first, then the shapes by importance; the conformance kit compiles several variants
    todo = [("vs_emulation", lambda r: case_vs_emulation(r, dev))] + wan[:3] + \
        [("conformance", lambda r: case_conformance(r))] + wan[3:]
    run_cases(todo, report, args.out, args.budget_s, t0, write)
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["total_s"] = round(time.time() - t0, 1)
    write(args.out, report, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
