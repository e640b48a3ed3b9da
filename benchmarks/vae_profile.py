"""Where the VAE's time goes, and what the candidate speed-ups buy, on one device.

Random weights of the real architecture (timings do not depend on values). For each variant the
decode (and optionally the encode) of a real-size latent is timed after one warm-up call, and its
output compared with the first variant's (rel-L2, PSNR on the [-1, 1] video). ``--profile``
writes the top operators of one decode of the first variant (torch.profiler).

    python3 benchmarks/vae_profile.py --vae wan2.1 --size 832*480 --frames 81 \
        --variants fp32 fp32+bench fp32+cl fp32+bench+cl bf16+bench+cl --out vae.json

A variant is ``+``-joined flags: ``fp32`` | ``bf16`` (weights and activations), ``bench``
(the backend's autotuned convolution algorithms, if it has them), ``cl`` (channels-last 3D
weights and input, ``CausalVideoVAE.set_memory_format``), ``fused`` (the backend's own
``channel_rms_norm`` implementation, e.g. cuda's Triton kernel; without it the reference math runs),
``composed`` (the composed PyTorch form of ``channel_rms_norm``), ``notf32`` (full fp32 convolution
math, where the device would use TF32), ``prev`` (``direct_layout`` off: channels-last data padded
by copies as before, the shortcut and the upsampling as before). Each row records the VAE's ops and
memory format.

    python3 benchmarks/vae_profile.py --vae wan2.1 --encode --profile \
        --variants fp32 fp32+cl fp32+cl+fused bf16+cl+fused --out vae21.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from types import SimpleNamespace

import torch

from wanport.bench.random_weights import (
    VAE_CLASSES,
    random_state,  # noqa: I001
)
from wanport.registry import discover


def _norm_op(reg, backend: str, flags):
    """The ``channel_rms_norm`` a variant binds (a ResolvedOp-like object), or None: reference math."""
    from wanport.ops.composites import compose_channel_rms_norm
    from wanport.ops.table import ResolvedOp

    if "composed" in flags:
        return ResolvedOp("channel_rms_norm", "channel_rms_norm", "composed(pytorch)", compose_channel_rms_norm())
    if "fused" not in flags:
        return None
    own = sorted(reg.impls_for(backend, "channel_rms_norm"), key=lambda i: -i.priority)
    usable = [i for i in own if i.available()[0]]
    if not usable:
        raise SystemExit("backend %s has no usable channel_rms_norm implementation" % backend)
    return ResolvedOp("channel_rms_norm", "channel_rms_norm", usable[0].qualified_name, usable[0].load())


def _vae(kind: str, dtype: torch.dtype, device: torch.device, cl: bool, norm_op, **arch):
    """The real architecture (or ``arch``'s sizes, e.g. ``dim=8`` for a smoke run) with random weights."""
    with torch.device("meta"):
        vae = VAE_CLASSES[kind](**arch)
    shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    vae.load_state_dict(random_state(shapes, dtype, device, 1234), strict=True, assign=True)
    vae = vae.eval().requires_grad_(False)
    if norm_op is not None:
        vae.bind_ops(SimpleNamespace(channel_rms_norm=norm_op))
    if cl:  # the conv weights, and every encode/decode input
        vae.set_memory_format(torch.channels_last_3d)
    return vae


def _flagged(vae, flags):
    vae.direct_layout = "prev" not in flags
    return vae


def _set_flags(flags, device_type: str):
    """The flags only the cuda backend understands; returns a restore function."""
    if device_type != "cuda":
        return lambda: None
    old = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = "bench" in flags
    torch.backends.cudnn.allow_tf32 = "notf32" not in flags

    def restore():
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = old
    return restore


def _time(rt, fn):
    rt.synchronize()
    t0 = time.perf_counter()
    out = fn()
    rt.synchronize()
    return out, time.perf_counter() - t0


def _compare(a: torch.Tensor, b: torch.Tensor):
    a, b = a.double(), b.double()
    err = (a - b).norm() / b.norm().clamp_min(1e-30)
    mse = float((a - b).pow(2).mean())
    psnr = float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)  # peak-to-peak 2 on [-1, 1]
    return {"rel_l2": float(err), "psnr_db": psnr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--vae", default="wan2.1", choices=sorted(VAE_CLASSES))
    ap.add_argument("--size", default="832*480", help="W*H of the video")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--variants", nargs="+", default=["fp32", "fp32+bench", "fp32+cl", "fp32+bench+cl"])
    ap.add_argument("--encode", action="store_true", help="also time the encode of a video of that size")
    ap.add_argument("--profile", nargs="?", const="", default=None, metavar="VARIANT",
                    help="profile one decode of VARIANT (default: the first variant)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    reg = discover()
    backend = reg.backends[args.backend]
    rt = backend.start()
    dev = rt.device()
    w, h = (int(v) for v in args.size.split("*"))
    probe = VAE_CLASSES[args.vae]
    with torch.device("meta"):
        meta = probe()
    s, sp, z = meta.temporal_stride, meta.spatial_stride, meta.z_dim
    t = 1 + (args.frames - 1) // s
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, z, t, h // sp, w // sp, generator=g)
    video = torch.rand(1, 3, args.frames, h, w, generator=g) * 2 - 1 if args.encode else None
    result = {"vae": args.vae, "size": args.size, "frames": args.frames, "latent": list(latent.shape),
              "device": rt.describe(), "torch": torch.__version__, "variants": []}
    ref_dec = ref_enc = None
    for name in args.variants:
        flags = set(name.split("+"))
        dtype = torch.bfloat16 if "bf16" in flags else torch.float32
        restore = _set_flags(flags, rt.device_type)
        try:
            vae = _flagged(_vae(args.vae, dtype, dev, "cl" in flags, _norm_op(reg, args.backend, flags)), flags)
            zin = latent.to(dev)
            vae.decode(zin[:, :, :2])  # warm-up (and the autotuner's first pass)
            rt.reset_peak_memory()
            dec, sec = _time(rt, lambda v=vae, x=zin: v.decode(x))
            row = {"variant": name, "vae": dict(vae.report(), direct_layout=vae.direct_layout), "decode_s": round(sec, 4),
                   "decode_peak_gib": round((rt.peak_memory_bytes() or 0) / 2 ** 30, 3)}
            dec = dec.float().cpu()
            if ref_dec is None:
                ref_dec = dec
            row["decode_vs_first"] = _compare(dec, ref_dec)
            del dec
            if video is not None:
                vin = video.to(dev, dtype)
                vae.encode(vin[:, :, :5])
                enc, sec = _time(rt, lambda v=vae, x=vin: v.encode(x))
                row["encode_s"] = round(sec, 4)
                enc = enc.float().cpu()
                if ref_enc is None:
                    ref_enc = enc
                row["encode_vs_first"] = {"rel_l2": float((enc.double() - ref_enc.double()).norm()
                                                          / ref_enc.double().norm())}
                del vin, enc
            if args.profile is not None and name == (args.profile or args.variants[0]):
                from torch.profiler import ProfilerActivity, profile
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device_type == "cuda" else [])
                with profile(activities=acts) as prof:
                    vae.decode(zin)
                    rt.synchronize()
                key = "self_cuda_time_total" if rt.device_type == "cuda" else "self_cpu_time_total"
                table = prof.key_averages().table(sort_by=key, row_limit=25)
                row["profile_top"] = table
                print(table, flush=True)
            print(json.dumps({k: v for k, v in row.items() if k != "profile_top"}), flush=True)
            result["variants"].append(row)
            del vae, zin
            rt.empty_cache()
        finally:
            restore()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
