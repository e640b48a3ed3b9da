"""Probe: the cuda q/k norm + RoPE Triton kernel at the Wan 14B / 1.3B 480p shapes with 1, 2, 4 and 8
token rows per program; each variant's output must equal the one-row output bit for bit (the
per-row arithmetic is the same). Times are medians of CUDA-event timings of q and k together.

    python3 benchmarks/qk_norm_rope_rows_probe.py --out out/qk-rows.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from fa4_tiles_probe import timed  # benchmarks/ is on the path when a script runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from wanport_cuda.qk_norm_rope import _one

    dev = torch.device("cuda")
    rows = []
    for label, s, dim, heads in (("14B 480p", 32760, 5120, 40), ("1.3B 480p", 32760, 1536, 12)):
        g = torch.Generator(device=dev).manual_seed(0)
        q, k = (torch.randn(1, s, dim, device=dev, generator=g).bfloat16() for _ in range(2))
        wq, wk = (torch.rand(dim, device=dev, generator=g) + 0.5 for _ in range(2))
        d = dim // heads
        ang = torch.rand(s, d // 2, device=dev, generator=g) * 6.283
        cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
        ref = None
        for n in (1, 2, 4, 8):
            def call():
                return (_one(q, wq, cos, sin, 1e-6, heads, torch.bfloat16, n),
                        _one(k, wk, cos, sin, 1e-6, heads, torch.bfloat16, n))
            out = call()
            if ref is None:
                ref = out
            same = all(torch.equal(a, b) for a, b in zip(out, ref))
            ms = timed(call, reps=20)
            moved = 2 * 2 * s * dim * 2  # q and k, read and written, bf16
            row = {"shape": label, "rows_per_program": n, "ms_q_and_k": round(ms, 4),
                   "tb_per_s": round(moved / (ms * 1e-3) / 1e12, 2), "equal_to_one_row": same}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
