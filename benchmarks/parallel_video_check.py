"""Two GPUs: the tiny checkpoint's video under each parallel layout against the one-GPU video.

The issue's end-to-end check of the parallel paths on a device (the CPU tests run the same layouts
on gloo): the same recipe, seed and steps through ``wanport.Pipeline`` on one GPU, then under
torchrun with CFG-parallel, Ulysses (overlapped through the collective and through the copy
engines, and blocking), and the spatially split VAE; rank 0 compares each decoded video with the
one-GPU video (max |diff|, rel-L2, PSNR on the [-1, 1] video) and writes a JSON and a table.

    wanport make-tiny /tmp/tiny
    python3 benchmarks/parallel_video_check.py --ckpt /tmp/tiny --single --out out/pv          # one GPU
    torchrun --standalone --nproc_per_node 2 benchmarks/parallel_video_check.py --ckpt /tmp/tiny --out out/pv

Differences come only from summation order (GEMMs over other token counts per rank, a batch of 1
instead of 2 under CFG-parallel, convs over other shard shapes); in float32 they stay near 1e-6
relative, far below what any visible change needs.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch

LAYOUTS = (
    ("cfg2", {"cfg": 2}),
    ("u2 overlapped, collective", {"ulysses": 2}),
    ("u2 overlapped, copy engine", {"ulysses": 2, "ulysses_exchange": "copy_engine"}),
    ("u2 blocking", {"ulysses": 2, "ulysses_overlap": False}),
    ("u2 + VAE split", {"ulysses": 2, "vae": True}),
    ("cfg2 + VAE split", {"cfg": 2, "vae": True}),
)


def _generate(args, parallel=None):
    from wanport import Pipeline

    values = dict(checkpoint_dir=args.ckpt, backend=args.backend, precision=args.precision)
    if parallel:
        values["parallel"] = dict(parallel)
    with Pipeline.from_recipe(None, progress=False, **values) as pipe:
        result = pipe.generate(seed=args.seed, steps=args.steps, size=args.size, frames=args.frames,
                               video_tensor=True)
    return None if result is None else result.video.float().cpu()


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a64, b64 = a.double(), b.double()
    mse = float((a64 - b64).pow(2).mean())
    return {"max_abs": float((a64 - b64).abs().max()), "rel_l2": float((a64 - b64).norm() / b64.norm()),
            "psnr_db": float("inf") if mse == 0 else 10 * math.log10(4.0 / mse), "bit_identical": bool(torch.equal(a, b))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True, help="a tiny checkpoint (wanport make-tiny DIR)")
    ap.add_argument("--single", action="store_true", help="the one-GPU reference (one plain process)")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", default="64*64")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--skip", nargs="*", default=[], help="layout names to leave out (e.g. the copy engine on a CPU)")
    ap.add_argument("--out", required=True, help="stem: STEM-single.pt, STEM.json, STEM.md")
    args = ap.parse_args(argv)
    if args.single:
        torch.save(_generate(args), args.out + "-single.pt")
        return 0
    import datetime

    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    # one process group for every layout (each Pipeline reuses it and leaves it open), so no rank
    # dials a group the others have not opened yet
    if args.backend == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if args.backend == "cuda" else "gloo", timeout=datetime.timedelta(seconds=300))
    rows = []
    ref = torch.load(args.out + "-single.pt", weights_only=True) if rank == 0 else None
    for name, parallel in LAYOUTS:
        if name in args.skip:
            continue
        video = _generate(args, parallel)
        if rank == 0:
            row = {"layout": name, "parallel": parallel, **_compare(video, ref)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    dist.destroy_process_group()
    if rank == 0:
        result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "ckpt": "wanport make-tiny", "precision": args.precision,
                  "seed": args.seed, "steps": args.steps, "size": args.size, "frames": args.frames,
                  "video_shape": list(ref.shape), "rows": rows}
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        lines = ["| layout | max abs diff | rel-L2 | PSNR dB | bit-identical |", "|---|---|---|---|---|"]
        lines += ["| %s | %.3g | %.3g | %.1f | %s |" % (r["layout"], r["max_abs"], r["rel_l2"], r["psnr_db"],
                                                      r["bit_identical"]) for r in rows]
        with open(args.out + ".md", "w") as f:
            f.write("# The tiny checkpoint's video on 2 GPUs vs 1 (%s, %s, seed %d, %d steps, %s x %d)\n\n%s\n"
                    % (result["device"], args.precision, args.seed, args.steps, args.size, args.frames,
                       "\n".join(lines)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
