"""Probe: is an FP8 attention kernel's error noise or bias? On one GPU, for each FP8 attention
implementation the backend has (``cuda.fp8_cudnn``, ``cuda.fp8_triton``) and its float32 emulation,
at a Wan head shape with attention from flat to peaked: relative L2 against float64, the regression
slope ``<o, x> / <x, x>`` (1 for unbiased rounding; a systematic shrink or growth compounds over a
DiT's 40 blocks where noise averages out), the mean error, and the distance kernel-emulation.

Why: on the 14B DiT with random weights, FP8 Linears + ``cuda.fp8_cudnn`` gave cosine 0.9835 to the
exact forward where FP8 Linears + ``cuda.fp8_triton`` gave 0.99848, while both attentions are about
0.06 from float64 on Gaussian inputs and the two emulations on a small random DiT differ far less
(docs/quantization.md, "fp8_tensor").

    python3 benchmarks/fp8_attention_bias_probe.py --out out/fp8-bias.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def stats(o: torch.Tensor, x: torch.Tensor) -> dict:
    d = o - x
    return {"rel_l2": float(d.norm() / x.norm()), "slope": float((o * x).sum() / (x * x).sum()),
            "mean_err_over_rms": float(d.mean() / x.pow(2).mean().sqrt()),
            "per_head_slope": [float((o[:, :, h] * x[:, :, h]).sum() / (x[:, :, h] ** 2).sum())
                               for h in range(x.shape[2])]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args(argv)
    from wanport.reference.fp8_attention import fp8_attention, fp8_tensor_attention
    from wanport.registry import discover

    reg = discover()
    kernels = {}
    for impl in reg.impls:
        if impl.backend == "cuda" and impl.kind == "attention" and impl.constraints.schemes:
            ok, why = impl.available()
            kernels[impl.qualified_name] = (impl.load() if ok else None, sorted(impl.constraints.schemes)[0], why)
    emulations = {"fp8": fp8_attention, "fp8_tensor": fp8_tensor_attention}
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for sharpness in (0.5, 1.0, 2.0, 4.0):  # score std about `sharpness` (q.k / sqrt(D) of unit vectors)
        q, k, v = [torch.randn(1, args.tokens, args.heads, 128, device=dev, generator=g) for _ in range(3)]
        q = q * sharpness
        v = v + 0.5 * torch.randn(1, 1, args.heads, 128, device=dev, generator=g)  # a per-channel offset
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        scale = 128 ** -0.5
        w = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", qb.double(), kb.double()) * scale, -1)
        exact = torch.einsum("bhqk,bkhd->bqhd", w, vb.double())
        row = {"sharpness": sharpness, "tokens": args.tokens, "heads": args.heads}
        for name, (fn, scheme, why) in kernels.items():
            if fn is None:
                row[name] = {"unavailable": why}
                continue
            out = fn(qb, kb, vb, scale=scale).double()
            emu = emulations[scheme](qb.cpu(), kb.cpu(), vb.cpu(), scale=scale).double().to(dev)
            row[name] = {"kernel": stats(out, exact), "emulation": stats(emu, exact),
                         "kernel_vs_emulation_rel_l2": float((out - emu).norm() / emu.norm())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
