"""Probe: flash-attn-4's Hopper forward at Wan shapes with other tile shapes and pipelining flags than
its default for head dim 128 (128 x 128, P·V from registers, intra-warpgroup overlap), through its
internal ``_flash_attn_fwd`` (the public ``flash_attn_func`` does not take them). Each variant is
checked against the default's output; times are medians of CUDA-event timings.

    python3 benchmarks/fa4_tiles_probe.py --out out/fa4-tiles.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def timed(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


VARIANTS = [
    ("default", {}),
    ("128x176", {"tile_mn": (128, 176)}),
    ("128x160", {"tile_mn": (128, 160)}),
    ("128x192", {"tile_mn": (128, 192)}),
    ("128x144", {"tile_mn": (128, 144)}),
    ("128x112", {"tile_mn": (128, 112)}),
    ("128x128 noRS", {"tile_mn": (128, 128), "mma_pv_is_rs": False}),
    ("128x176 noRS", {"tile_mn": (128, 176), "mma_pv_is_rs": False}),
    ("128x128 noOL", {"tile_mn": (128, 128), "intra_wg_overlap": False}),
    ("192x128", {"tile_mn": (192, 128)}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from flash_attn.cute.interface import _flash_attn_fwd

    dev = torch.device("cuda")
    rows = []
    for label, s, n in (("14B 480p", 32760, 40), ("14B 720p", 75600, 40), ("1.3B 480p", 32760, 12)):
        d = 128
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = [torch.randn(1, s, n, d, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(3)]
        flops = 4.0 * s * s * d * n
        ref = None
        for name, kw in VARIANTS:
            row = {"shape": label, "variant": name}
            try:
                t0 = time.time()
                out = _flash_attn_fwd(q, k, v, softmax_scale=d ** -0.5, **kw)[0]
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.time() - t0, 2)
                if ref is None:
                    ref = out.float()
                row["rel_vs_default"] = float((out.float() - ref).norm() / ref.norm())
                ms = timed(lambda: _flash_attn_fwd(q, k, v, softmax_scale=d ** -0.5, **kw))
                row["ms"] = round(ms, 3)
                row["tflops"] = round(flops / (ms * 1e-3) / 1e12, 1)
            except Exception as exc:  # noqa: BLE001 - a variant the kernel does not support
                row["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            print(json.dumps(row), flush=True)
            rows.append(row)
        del q, k, v, ref
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
