"""FP8 attention ``quant.attention: fp8_tensor`` through cuDNN (``cuda.fp8_cudnn``) on one Hopper GPU,
in a few minutes:

1. ``cuda.fp8_cudnn`` through the conformance kit (contract, shapes, dtypes, padded keys, refusals,
   within its declared tolerance of float64 attention);
2. the implementation against the float32 emulation of the scheme (``reference.emulate_fp8_tensor``,
   run on the GPU) at moderate shapes, padded keys included;
3. at Wan self-attention shapes (14B: 40 heads, 1.3B: 12 heads, D = 128; 480p x 81 frames: S = 32760,
   720p: S = 75600): latency (median of timed runs after warm-up) and TFLOP/s (4 B N S^2 D / t) of
   the whole call, of cuDNN alone on quantized operands, of the three quantizers, of the output's
   dequantization; beside bf16 cuDNN attention (SDPA) and flash-attn-4 (when importable). Accuracy
   on two heads (all queries, all keys; the scales are per (sample, head), so those heads of the full
   call are what the emulation computes on the two heads alone): fp8_cudnn vs the emulation, each
   and bf16 cuDNN vs float64 (relative L2, cosine), and the share of the e4m3 output among e4m3's
   subnormals (|O| << amax(V), where O's rounding is coarse).

Random q, k, v (k with a per-channel offset): real Wan activations give peakier scores (measure real
checkpoints with ``wanport dump`` / ``compare`` of an exact and an fp8_tensor recipe). Each case records
its error instead of stopping the script; cases past ``--budget-s`` are skipped.

    python3 benchmarks/fp8_cudnn_attention_check.py --out out/fp8-cudnn
    python3 benchmarks/fp8_cudnn_attention_check.py --smoke --out /tmp/fp8-cudnn-smoke   # the script's logic on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fp8_attention_check as base  # noqa: E402  (timing, inputs, bf16 cuDNN, error measures)

WAN_SHAPES = (  # name, B, S, N, D
    ("wan2.1-14b 480p", 1, 32760, 40, 128),
    ("wan2.1-1.3b 480p", 1, 32760, 12, 128),
    ("wan2.1-14b 720p", 1, 75600, 40, 128),
)


def parts():
    """(attention, quantize(q, k, v) -> ops, run(ops, scale) -> o8, dequantize(o8, ops, dtype)).
    Under --smoke: the float32 emulation stands in (cuDNN does not run on a CPU)."""
    if base.SMOKE:
        from wanport.ops.attention_quant import quantize_heads, to_e4m3_grid
        from wanport.reference.fp8_attention import fp8_tensor_attention

        held = {}

        def quantize(q, k, v):
            held["qkv"] = (q, k, v)
            return [quantize_heads(x, to_e4m3_grid) for x in (q, k, v)]

        def run(ops, scale):
            return fp8_tensor_attention(*held["qkv"], scale=scale)

        return fp8_tensor_attention, quantize, run, lambda o8, ops, dtype: o8.to(dtype)
    from wanport_cuda.fp8_cudnn_attention import make_cudnn_fp8_attention

    fn = make_cudnn_fp8_attention()
    st = fn.parts
    return fn, st.quantize, st.run, st.dequantize


def fa4():
    if base.SMOKE:
        return None
    try:
        from flash_attn.cute import flash_attn_func
    except Exception:
        return None
    return flash_attn_func


def case_conformance(res):
    from wanport.registry import discover
    from wanport.testing.checks import check_impl

    impl = next(i for i in discover().impls if i.qualified_name == "cuda.fp8_cudnn" and i.kind == "attention")
    ok, why = impl.available()
    res["available"], res["why"] = ok, why
    if base.SMOKE:
        res["ok"], res["note"] = True, "not run under --smoke (the kit checks cuDNN on the GPU)"
        return
    if not ok:
        raise RuntimeError("cuda.fp8_cudnn unavailable: %s" % why)
    problems = check_impl(impl, torch.device("cuda"))
    res["problems"] = problems
    res["ok"] = not problems


def case_vs_emulation(res, dev):
    from wanport.reference.attention import attention_math
    from wanport.reference.fp8_attention import fp8_tensor_attention as emulated

    fn = parts()[0]
    rows = []
    shapes = ((1, 4096, 4096, 4, 128, None), (2, 3001, 3001, 3, 128, [3001, 1777]), (1, 1000, 2500, 2, 64, None),
              (1, 777, 777, 2, 80, None))
    if base.SMOKE:
        shapes = ((1, 130, 130, 1, 64, None), (2, 100, 200, 1, 64, [200, 77]))
    for b, s, skv, n, d, lens in shapes:
        q, k, v = base.make_qkv(b, max(s, skv), n, d, 11, dev)
        q = q[:, :s].contiguous()
        scale = d ** -0.5
        try:
            o = fn(q, k, v, scale=scale, kv_lens=lens)
            base.sync()
        except Exception as exc:  # one shape cuDNN refuses does not hide the others
            rows.append({"shape": [b, s, skv, n, d], "kv_lens": lens, "error": "%s: %s" % (type(exc).__name__, exc)})
            continue
        r = emulated(q, k, v, scale=scale, kv_lens=lens)
        ex = attention_math(q.double(), k.double(), v.double(), scale=scale, kv_lens=lens)
        rows.append({"shape": [b, s, skv, n, d], "kv_lens": lens, "dtype": str(o.dtype),
                     "kernel_vs_emulation_rel_l2": base.rel_l2(o, r),
                     "kernel_vs_float64_rel_l2": base.rel_l2(o, ex), "kernel_vs_float64_cosine": base.cosine(o, ex),
                     "emulation_vs_float64_rel_l2": base.rel_l2(r, ex), "finite": bool(torch.isfinite(o).all())})
    res["cases"] = rows
    # cuDNN's own P blocking and summation order may move an element of P or O one e4m3 step away from
    # the emulation: they should agree far better than either agrees with float64
    res["ok"] = all("error" not in r and r["finite"]
                    and r["kernel_vs_emulation_rel_l2"] < 0.5 * r["emulation_vs_float64_rel_l2"] for r in rows)


def case_wan(res, name, b, s, n, d, dev, runs, warmup, heads):
    from wanport.reference.attention import attention_math
    from wanport.reference.fp8_attention import fp8_tensor_attention as emulated

    scale = d ** -0.5
    flops = 4.0 * b * n * s * s * d
    q, k, v = base.make_qkv(b, s, n, d, 0, dev)
    fn, quantize, run, dequantize = parts()
    res.update(shape={"B": b, "S": s, "N": n, "D": d}, flops=flops)
    t = {}
    try:
        t["bf16_cudnn_ms"] = base.median_ms(lambda: base.cudnn_attention(q, k, v, scale), runs, warmup)
    except Exception as exc:
        res["cudnn_error"] = "%s: %s" % (type(exc).__name__, exc)
    fa = fa4()
    if fa is not None:
        try:
            t["fa4_ms"] = base.median_ms(lambda: fa(q, k, v, softmax_scale=scale), runs, warmup)
        except Exception as exc:
            res["fa4_error"] = "%s: %s" % (type(exc).__name__, exc)
    else:
        res["fa4_error"] = "flash_attn.cute not importable"
    t0 = time.time()
    fn(q, k, v, scale=scale)  # builds the graph
    base.sync()
    res["first_call_s"] = round(time.time() - t0, 3)
    t["fp8_cudnn_whole_call_ms"] = base.median_ms(lambda: fn(q, k, v, scale=scale), runs, warmup)
    ops = quantize(q, k, v)
    t["fp8_cudnn_kernel_only_ms"] = base.median_ms(lambda: run(ops, scale), runs, warmup)
    t["fp8_quantize_ms"] = base.median_ms(lambda: quantize(q, k, v), runs, warmup)
    o8 = run(ops, scale)
    t["fp8_dequantize_ms"] = base.median_ms(lambda: dequantize(o8, ops, q.dtype), runs, warmup)
    res["timings_ms"] = t
    res["tflops"] = {key[:-3]: flops / (ms * 1e-3) / 1e12 for key, ms in t.items()
                     if key in ("bf16_cudnn_ms", "fa4_ms", "fp8_cudnn_whole_call_ms", "fp8_cudnn_kernel_only_ms")}
    # accuracy on `heads` heads, every query and key
    out = dequantize(o8, ops, q.dtype)[:, :, :heads]
    if not base.SMOKE:
        sub = (o8[:, :, :heads].float().abs() < 2.0 ** -6) & (o8[:, :, :heads].float() != 0)
        res["o8_subnormal_fraction"] = float(sub.float().mean())
    del ops, o8
    qs, ks, vs = (x[:, :, :heads].contiguous() for x in (q, k, v))
    exact = attention_math(qs.double(), ks.double(), vs.double(), scale=scale)
    emu = emulated(qs, ks, vs, scale=scale)
    acc = {"slice": "heads [0, %d), all %d queries and keys" % (heads, s),
           "fp8_cudnn_vs_emulation_rel_l2": base.rel_l2(out, emu),
           "fp8_cudnn_vs_float64_rel_l2": base.rel_l2(out, exact), "fp8_cudnn_vs_float64_cosine": base.cosine(out, exact),
           "emulation_vs_float64_rel_l2": base.rel_l2(emu, exact), "finite": bool(torch.isfinite(out).all())}
    del emu
    try:
        ob = base.cudnn_attention(q, k, v, scale)[:, :, :heads]
        acc.update(bf16_cudnn_vs_float64_rel_l2=base.rel_l2(ob, exact), bf16_cudnn_vs_float64_cosine=base.cosine(ob, exact))
        del ob
    except Exception as exc:
        acc["bf16_error"] = "%s: %s" % (type(exc).__name__, exc)
    if fa is not None:
        try:
            of = fa(q, k, v, softmax_scale=scale)
            of = of[0] if isinstance(of, tuple) else of
            acc.update(fa4_vs_float64_rel_l2=base.rel_l2(of[:, :, :heads], exact))
            del of
        except Exception as exc:
            acc["fa4_accuracy_error"] = "%s: %s" % (type(exc).__name__, exc)
    res["accuracy"] = acc
    res["ok"] = acc["finite"] and acc["fp8_cudnn_vs_emulation_rel_l2"] < 0.5 * acc["emulation_vs_float64_rel_l2"]


def write(out_dir, report, echo=False):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "fp8_cudnn_attention_check.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
    lines = ["# FP8 attention fp8_tensor (cuda.fp8_cudnn) check", "", "%s, torch %s, cudnn-frontend %s, %s" % (
        report["device"], report["torch"], report["cudnn_frontend"], report.get("finished_at")), ""]
    conf = report["cases"].get("conformance", {})
    verdict = ("ok" + (" (%s)" % conf["note"] if "note" in conf else "") if conf.get("ok")
               else conf.get("error") or conf.get("skipped") or "; ".join(conf.get("problems", [])[:3]))
    lines += ["Conformance kit (`cuda.fp8_cudnn`): %s" % verdict, ""]
    emu = report["cases"].get("vs_emulation", {})
    if emu.get("cases"):
        lines += ["| shape B,Sq,Skv,N,D | kv_lens | fp8_cudnn vs emulation | fp8_cudnn vs f64 | emulation vs f64 |",
                  "|---|---|---|---|---|"]
        lines += ["| %s | %s | %s |" % (r["shape"], r["kv_lens"], r["error"]) if "error" in r else
                  "| %s | %s | %.2e | %.2e | %.2e |" % (r["shape"], r["kv_lens"], r["kernel_vs_emulation_rel_l2"],
                                                       r["kernel_vs_float64_rel_l2"], r["emulation_vs_float64_rel_l2"])
                  for r in emu["cases"]]
        lines.append("")
    elif emu.get("error"):
        lines += ["vs emulation: %s" % emu["error"], ""]
    lines += ["| case | bf16 cuDNN ms (TFLOP/s) | FA4 ms (TFLOP/s) | fp8_cudnn call ms (TFLOP/s) | cuDNN FP8 alone ms "
              "(TFLOP/s) | quantize ms | dequantize ms | fp8 vs f64 rel-L2 / cos | bf16 vs f64 | fp8 vs emulation "
              "| O subnormal |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["cases"].items():
        if not name.startswith("wan"):
            continue
        if "timings_ms" not in r:
            lines.append("| %s | %s |" % (name, r.get("error") or r.get("skipped")) + "  |" * 9)
            continue
        t, tf, a = r["timings_ms"], r["tflops"], r.get("accuracy", {})

        def cell(key):
            return "%.2f (%.0f)" % (t[key + "_ms"], tf[key]) if key + "_ms" in t else "-"

        def num(key, fmt="%.4f"):
            return fmt % a[key] if key in a else "-"

        lines.append("| %s | %s | %s | %s | %s | %.2f | %.2f | %s / %s | %s | %s | %s |" % (
            name, cell("bf16_cudnn"), cell("fa4"), cell("fp8_cudnn_whole_call"), cell("fp8_cudnn_kernel_only"),
            t["fp8_quantize_ms"], t["fp8_dequantize_ms"], num("fp8_cudnn_vs_float64_rel_l2"),
            num("fp8_cudnn_vs_float64_cosine", "%.5f"), num("bf16_cudnn_vs_float64_rel_l2"),
            num("fp8_cudnn_vs_emulation_rel_l2", "%.1e"),
            "%.3f" % r["o8_subnormal_fraction"] if "o8_subnormal_fraction" in r else "-"))
    with open(os.path.join(out_dir, "fp8_cudnn_attention_check.md.tmp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(out_dir, "fp8_cudnn_attention_check.md.tmp"),
               os.path.join(out_dir, "fp8_cudnn_attention_check.md"))
    if echo:
        print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for fp8_cudnn_attention_check.json and .md")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip the cases that would start after this")
    ap.add_argument("--heads", type=int, default=2, help="heads of the accuracy slice")
    ap.add_argument("--smoke", action="store_true", help="check this script on a CPU (the emulation stands in, tiny shapes)")
    args = ap.parse_args(argv)
    base.SMOKE = args.smoke
    t0 = time.time()
    try:
        import importlib.metadata as md

        frontend = md.version("nvidia-cudnn-frontend")
    except Exception as exc:  # recorded; the cases then say why they fail
        frontend = "not installed: %s" % exc
    report = {"kind": "wanport.fp8_cudnn_attention_check", "torch": torch.__version__, "cudnn_frontend": frontend,
              "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
              "capability": list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": {}}
    dev = torch.device("cpu" if args.smoke else "cuda")
    shapes = (("tiny", 1, 300, 2, 64), ("tiny-2", 1, 260, 1, 64)) if args.smoke else WAN_SHAPES
    wan = [("wan " + name, lambda r, b=b, s=s, n=n, d=d, name=name: case_wan(
        r, name, b, s, n, d, dev, args.runs, args.warmup, min(args.heads, n))) for name, b, s, n, d in shapes]
    todo = [("vs_emulation", lambda r: case_vs_emulation(r, dev))] + wan + [("conformance", case_conformance)]
    base.run_cases(todo, report, args.out, args.budget_s, t0, write)
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["total_s"] = round(time.time() - t0, 1)
    write(args.out, report, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
