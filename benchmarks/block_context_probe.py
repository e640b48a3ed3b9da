"""Probe: do the 14B block's big kernels run as fast inside the block's sequence as alone?

    python3 benchmarks/block_context_probe.py --out out/block-context.json

The full 14B forward's profile shows flash-attn-4 at about 34 ms per call where the same call alone
takes about 32.5 ms. This times, at the 14B 480p shapes (S 32 760, dim 5120, 40 heads, FFN 13 824,
bf16), each kernel alone (back to back) and in the block's order (q, k, v projections, attention,
output projection, cross-attention's q/o projections, FFN up with GELU, FFN down), with CUDA
events around every call, while ``nvidia-smi`` samples the SM clock and the board power every
50 ms. It also times q/k/v as one GEMM of N = 3 x 5120 against three: whether a fused QKV weight
would pay. Random values; timings do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

S, DIM, HEADS, FFN, D = 32760, 5120, 40, 13824, 128


class Sampler:
    """nvidia-smi sampling the SM clock (MHz) and power (W) of the visible GPU every 50 ms."""

    def __enter__(self):
        idx = (torch.cuda.current_device() if not _visible() else int(_visible().split(",")[0]))
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "-i", str(idx), "--query-gpu=clocks.sm,power.draw",
                                          "--format=csv,noheader,nounits", "-lms", "50"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
        return self

    def __exit__(self, *exc):
        self.samples = []
        if self.proc is None:
            return False
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            try:
                clk, pw = (float(v) for v in line.split(","))
                self.samples.append((clk, pw))
            except ValueError:
                continue
        return False

    def summary(self) -> Dict[str, float]:
        if not self.samples:
            return {}
        clk = [c for c, _ in self.samples]
        pw = [p for _, p in self.samples]
        return {"sm_clock_mhz_median": statistics.median(clk), "sm_clock_mhz_min": min(clk),
                "power_w_median": statistics.median(pw), "power_w_max": max(pw), "samples": len(clk)}


def _visible() -> str:
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def time_calls(calls: List[tuple], rounds: int) -> Dict[str, List[float]]:
    """Runs the named calls in order ``rounds`` times; ms per call from CUDA events."""
    marks = []
    for _ in range(rounds):
        for name, fn in calls:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            marks.append((name, a, b))
    torch.cuda.synchronize()
    out: Dict[str, List[float]] = {}
    for name, a, b in marks:
        out.setdefault(name, []).append(a.elapsed_time(b))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from flash_attn.cute import flash_attn_func

    dev, bf = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, device=dev, generator=g, dtype=bf) * scale

    x = rnd(1, S, DIM)
    w = {n: rnd(DIM, DIM, scale=DIM ** -0.5) for n in ("q", "k", "v", "o", "cq", "co")}
    b = {n: rnd(DIM, scale=0.02) for n in w}
    w_qkv, b_qkv = torch.cat([w["q"], w["k"], w["v"]]), torch.cat([b["q"], b["k"], b["v"]])
    w_up, b_up = rnd(FFN, DIM, scale=DIM ** -0.5), rnd(FFN, scale=0.02)
    w_dn, b_dn = rnd(DIM, FFN, scale=FFN ** -0.5), rnd(DIM, scale=0.02)
    h = rnd(1, S, FFN)
    q, k, v = (rnd(1, S, HEADS, D) for _ in range(3))

    def attention():
        return flash_attn_func(q, k, v, softmax_scale=D ** -0.5)

    def lin(n):
        return lambda: F.linear(x, w[n], b[n])

    flops = {"attention": 4.0 * S * S * D * HEADS, "gemm 5120x5120": 2.0 * S * DIM * DIM,
             "qkv fused (N 15360)": 2.0 * S * DIM * 3 * DIM, "ffn up + gelu": 2.0 * S * DIM * FFN,
             "ffn down": 2.0 * S * DIM * FFN}
    block = [("gemm 5120x5120", lin("q")), ("gemm 5120x5120", lin("k")), ("gemm 5120x5120", lin("v")),
             ("attention", attention), ("gemm 5120x5120", lin("o")), ("gemm 5120x5120", lin("cq")),
             ("gemm 5120x5120", lin("co")),
             ("ffn up + gelu", lambda: torch._addmm_activation(b_up, x[0], w_up.t(), use_gelu=True)),  # cuda.linear_gelu
             ("ffn down", lambda: F.linear(h, w_dn, b_dn))]
    for _, fn in block:  # compile flash-attn-4's kernel, pick cuBLAS's algorithms
        fn()
    F.linear(x, w_qkv, b_qkv)
    torch.cuda.synchronize()

    phases = {}
    alone = {"attention": [("attention", attention)], "gemm 5120x5120": [("gemm 5120x5120", lin("q"))],
             "qkv fused (N 15360)": [("qkv fused (N 15360)", lambda: F.linear(x, w_qkv, b_qkv))],
             "ffn up + gelu": block[7:8], "ffn down": block[8:9]}
    for name, calls in alone.items():
        time_calls(calls, 3)
        with Sampler() as smp:
            ms = time_calls(calls, max(args.rounds, 8))
        phases["alone: " + name] = {"ms": {n: round(statistics.median(v), 3) for n, v in ms.items()},
                                    "clock": smp.summary()}
    time_calls(block, 2)
    with Sampler() as smp:
        ms = time_calls(block, args.rounds)
    phases["in the block's order"] = {"ms": {n: round(statistics.median(v), 3) for n, v in ms.items()},
                                      "clock": smp.summary()}
    rows = []
    for name, f in flops.items():
        a = phases.get("alone: " + name, {}).get("ms", {}).get(name)
        c = phases["in the block's order"]["ms"].get(name)
        row = {"kernel": name, "alone_ms": a, "in_block_ms": c}
        for key, val in (("alone_tflops", a), ("in_block_tflops", c)):
            if val:
                row[key] = round(f / (val * 1e-3) / 1e12, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": {
        "tokens": S, "dim": DIM, "heads": HEADS, "ffn": FFN, "head_dim": D}, "rows": rows, "phases": phases}
    print(json.dumps(phases, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
