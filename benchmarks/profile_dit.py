"""Kernel-level profile of one real-size DiT forward on a CUDA GPU (random weights).

    python benchmarks/profile_dit.py --model wan2.1-t2v-14b [--layers 4] [--out prof.json]

Prints the top kernels by GPU time and their share; groups them into attention / GEMM /
the rest, which is what the CUDA backend's kernel work is steered by.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from wanport.bench.dit import dit_config_for
from wanport.models.dit import WanDiT
from wanport.models.dit.requirements import dit_requirements
from wanport.pipeline.session import choose_backend, start_session
from wanport.precision import policy_from_config
from wanport.registry import resolve_ops


def group(name: str) -> str:
    n = name.lower()
    if "fmha" in n or "flash" in n or "attention" in n or "cudnn" in n and "gemm" not in n:
        return "attention"
    if "gemm" in n or "cutlass" in n or "sm90_xmma" in n or "nvjet" in n or "cublas" in n:
        return "gemm"
    if "triton" in n:
        return "triton"
    return "other"


def union_length(spans) -> float:
    """Length of the union of (start, end) intervals (the time some kernel ran)."""
    busy, end = 0.0, None
    for a, b in sorted(spans):
        if end is None or a >= end:
            busy += b - a
            end = b
        elif b > end:
            busy += b - end
            end = b
    return busy


def kernel_timeline(prof) -> dict:
    """Span from the first kernel's start to the last one's end, the time some kernel ran (union of
    the kernel intervals) and the idle rest, from the profiler's Chrome trace."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
                   if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "ts" in e)
    busy = union_length(spans)
    span = (spans[-1][1] - spans[0][0]) if spans else 0.0
    return {"kernels": len(spans), "span_ms": span / 1e3, "busy_ms": busy / 1e3, "idle_ms": (span - busy) / 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="wan2.1-t2v-14b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = dit_config_for(args.model, args.layers)
    policy = policy_from_config("official")
    registry, spec = choose_backend("cuda")
    session = start_session(registry, spec, {})
    dev = session.device
    ops = resolve_ops(registry, spec, dit_requirements(cfg, policy, spec.device_type))
    model = WanDiT.random(cfg, policy, dev).bind_ops(ops)
    lat = (1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    x = torch.randn(lat, device=dev)
    ctx = torch.randn(1, 512, cfg.text_dim, device=dev).bfloat16()
    t = torch.tensor([999])
    with torch.no_grad():
        model(x, t, ctx)
        torch.cuda.synchronize()
        walls = []
        for _ in range(3):  # the forward's wall time, no profiler attached
            t0 = time.perf_counter()
            model(x, t, ctx)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x, t, ctx)
            torch.cuda.synchronize()
    timeline = kernel_timeline(prof)
    timeline["wall_ms_unprofiled"] = 1e3 * sorted(walls)[1]
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if us > 0:
            rows.append((e.key, us / 1e3, e.count))
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    groups = {}
    for name, ms, _ in rows:
        groups[group(name)] = groups.get(group(name), 0.0) + ms
    print("total GPU time %.1f ms (%d layers)" % (total, cfg.num_layers))
    print("timeline: first kernel to last %.1f ms, GPU busy %.1f ms, idle between kernels %.1f ms; "
          "forward wall time without the profiler %.1f ms" % (timeline["span_ms"], timeline["busy_ms"],
                                                              timeline["idle_ms"], timeline["wall_ms_unprofiled"]))
    for g, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print("  %-10s %8.1f ms  %5.1f%%" % (g, ms, 100 * ms / total))
    print("top kernels:")
    for name, ms, count in rows[:18]:
        print("  %8.2f ms %5.1f%% x%-4d %s" % (ms, 100 * ms / total, count, name[:110]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"total_ms": total, "groups_ms": groups, "timeline": timeline,
                       "kernels": [{"name": n, "ms": m, "count": c} for n, m, c in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
