"""Kernel-level profile of one real-size DiT forward under Ulysses sequence parallelism (random
weights), every rank profiled, against the same forward on one GPU of the same machine.

    torchrun --standalone --nproc_per_node 2 benchmarks/profile_ulysses.py \
        --model wan2.1-t2v-14b [--exchange collective|copy_engine] [--overlap on|off] [--out prof.json]

Why: ``bench scaling`` says how long a u2 step takes and how long the compute stream waited for
the all-to-alls; this says what the rest of the extra time is. Every kernel is grouped (attention,
GEMM, the exchange's layout copies, the collective library's kernels, the fused Triton kernels,
the rest) and the copy engines' transfers are counted apart. It first profiles the whole
forward alone on each GPU in turn (the others wait), so each rank's ``ideal_ms`` (its own GPU's
one-GPU kernel time per group over the world size) is measured on the same chip: two H200s of
one host need not run at one speed. Per rank: the compute stream's kernel time per group, the
compute stream's span (first kernel to last) and its idle time, the kernel time on other streams
(collectives overlapping compute) and the copy engines' busy time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List

import torch
import torch.distributed as dist
from profile_dit import union_length  # benchmarks/ is on the path when a script runs
from torch.profiler import ProfilerActivity, profile

from wanport.bench.dit import dit_config_for
from wanport.models.dit import WanDiT
from wanport.models.dit.requirements import dit_requirements
from wanport.parallel.exchange import make_exchange
from wanport.parallel.mesh import CommClock, init_mesh, shutdown
from wanport.parallel.sequence import wrap_self_attention
from wanport.pipeline.session import choose_backend, start_session
from wanport.precision import policy_from_config
from wanport.registry import resolve_ops


def group(name: str) -> str:
    n = name.lower()
    if "nccl" in n:
        return "collective"
    if "fmha" in n or "flash" in n or "attention" in n or ("cudnn" in n and "gemm" not in n and "nhwc" not in n):
        return "attention"
    if "gemm" in n or "cutlass" in n or "sm90_xmma" in n or "nvjet" in n or "cublas" in n:
        return "gemm"
    if "copy" in n or "cat" in n.split("<")[0]:
        return "layout copy"
    if n.startswith("_") or "triton" in n:
        return "fused (triton)"
    return "other"


def _trace(prof) -> List[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f).get("traceEvents", [])


def summarize(prof) -> Dict[str, object]:
    """Kernel time per group on the stream that ran the most kernel time (the compute stream), the
    kernel time on the other streams, the copy engines' busy time, and the compute stream's span."""
    events = [e for e in _trace(prof) if "ts" in e and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    per_stream: Dict[object, float] = {}
    for e in events:
        if e["cat"] == "kernel":
            per_stream[e.get("tid")] = per_stream.get(e.get("tid"), 0.0) + float(e.get("dur", 0))
    main = max(per_stream, key=per_stream.get) if per_stream else None
    groups: Dict[str, float] = {}
    side: Dict[str, float] = {}
    main_spans, copies = [], []
    for e in events:
        a, d = float(e["ts"]), float(e.get("dur", 0))
        if e["cat"] == "gpu_memcpy":
            copies.append((a, a + d))
            continue
        if e["cat"] != "kernel":
            continue
        g = group(e.get("name", ""))
        if e.get("tid") == main:
            groups[g] = groups.get(g, 0.0) + d / 1e3
            main_spans.append((a, a + d))
        else:
            side[g] = side.get(g, 0.0) + d / 1e3
    span = (max(b for _, b in main_spans) - min(a for a, _ in main_spans)) / 1e3 if main_spans else 0.0
    busy = union_length(main_spans) / 1e3
    return {"compute_stream_ms": {k: round(v, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "compute_stream_kernel_ms": round(sum(groups.values()), 2),
            "compute_stream_span_ms": round(span, 2), "compute_stream_idle_ms": round(span - busy, 2),
            "other_streams_kernel_ms": {k: round(v, 2) for k, v in side.items()},
            "copy_engine_busy_ms": round(union_length(copies) / 1e3, 2), "copy_engine_transfers": len(copies)}


def _profiled(fn, sync) -> tuple:
    fn()
    sync()
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        sync()
        walls.append(time.perf_counter() - t0)
    acts = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]  # CPU: a dry run
    with profile(activities=acts) as prof:
        fn()
        sync()
    return sorted(walls)[1], summarize(prof)


def add_setup_args(ap: argparse.ArgumentParser) -> None:
    """The model and size arguments the u2 probes share."""
    ap.add_argument("--model", default="wan2.1-t2v-14b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--backend", default="cuda")


class U2Setup:
    """Backend session, the Ulysses mesh over every launched process, the random-weight DiT and one
    input (seeded on the host): what the u2 probes (this one, ulysses_chunks_probe.py) start from."""

    def __init__(self, args) -> None:
        self.cfg = dit_config_for(args.model, args.layers)
        self.policy = policy_from_config("official")
        self.registry, self.spec = choose_backend(args.backend)
        self.runtime = start_session(self.registry, self.spec, {}).runtime
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.mesh = init_mesh(1, self.world, 1, self.spec.dist_backend, 600, set_device=self.runtime.set_device,
                              device=self.runtime.device)
        dev = self.runtime.device()
        self.model = WanDiT.random(self.cfg, self.policy, dev, seed=0)
        g = torch.Generator().manual_seed(1)
        lat = (1, self.cfg.in_dim, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
        self.x = torch.randn(*lat, generator=g).to(dev)
        self.ctx = torch.randn(1, 512, self.cfg.text_dim, generator=g).to(dev).bfloat16()
        self.t = torch.tensor([999])

    def table(self, comm, overlap: bool, exchange):
        """The op table with its self-attention wrapped for this mesh (padded keys allowed)."""
        reqs = dit_requirements(self.cfg, self.policy, self.spec.device_type, padded_keys=True)
        return wrap_self_attention(resolve_ops(self.registry, self.spec, reqs), self.mesh, comm, overlap, exchange)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_setup_args(ap)
    ap.add_argument("--exchange", default="collective", choices=("collective", "copy_engine"))
    ap.add_argument("--overlap", default="on", choices=("on", "off"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    su = U2Setup(args)
    cfg, policy, registry, spec, runtime, world, mesh, model, x, ctx, t = (
        su.cfg, su.policy, su.registry, su.spec, su.runtime, su.world, su.mesh, su.model, su.x, su.ctx, su.t)
    out: Dict[str, object] = {"model": args.model, "layers": cfg.num_layers, "world": world,
                              "size": [args.width, args.height, args.frames],
                              "exchange": args.exchange, "overlap": args.overlap == "on",
                              "device": runtime.describe()}
    try:
        with torch.no_grad():
            one = None
            for r in range(mesh.world):  # the one-GPU forward on each GPU in turn, the others idle
                if mesh.rank == r:
                    model.bind_ops(resolve_ops(registry, spec, dit_requirements(cfg, policy, spec.device_type)))
                    wall, one = _profiled(lambda: model(x, t, ctx), runtime.synchronize)
                    one = dict(one, wall_ms_unprofiled=round(1e3 * wall, 2))
                dist.barrier()
            overlap = args.overlap == "on"
            ex = make_exchange(args.exchange, runtime, mesh.ulysses_group) if overlap else None
            model.bind_ops(su.table(CommClock(runtime), overlap, ex))

            def forward():
                model(x, t, ctx)
                dist.barrier()

            wall, mine = _profiled(forward, runtime.synchronize)
            mine = dict(mine, rank=mesh.rank, wall_ms_unprofiled=round(1e3 * wall, 2), one_gpu=one,
                        ideal_ms={k: round(v / world, 2) for k, v in one["compute_stream_ms"].items()},
                        ideal_wall_ms=round(one["wall_ms_unprofiled"] / world, 2))
            ranks: List[object] = [None] * mesh.world
            dist.all_gather_object(ranks, mine)
    finally:
        shutdown()
    if mesh.rank != 0:
        return 0
    out["ranks"] = ranks
    print(json.dumps(out, indent=1))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
