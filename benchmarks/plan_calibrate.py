"""Measured vs predicted memory of the parts `wanport plan` models (docs/plan.md), on one device.

For each model/size: the DiT weights (allocated after loading random weights of the real
architecture), one DiT forward's peak above what was allocated before it, the T5 weights and one
prompt's encode, and the VAE decode's peak above the VAE weights and the latent. Writes a JSON
list of {what, predicted, measured, ratio}.

    python3 benchmarks/plan_calibrate.py --backend cuda --out calib.json [--models ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from wanport.bench.random_weights import RandomWeights
from wanport.config import MODELS, build_config
from wanport.pipeline.common import prepare
from wanport.plan import activations as A
from wanport.plan.arch import from_checkpoints
from wanport.plan.weights import dit_tensors, t5_tensors, vae_tensors

CASES = {"1.3b-480p": ("wan2.1-t2v-1.3b", "832*480"), "14b-480p": ("wan2.1-t2v-14b", "832*480"),
         "14b-720p": ("wan2.1-t2v-14b", "1280*720"), "5b-704p": ("wan2.2-ti2v-5b", "1280*704")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--skip-vae", action="store_true")
    args = ap.parse_args()
    rows = []

    def add(what, predicted, measured):
        row = {"what": what, "predicted": int(predicted), "measured": int(measured),
               "ratio": round(measured / predicted, 4) if predicted else None}
        rows.append(row)
        print(json.dumps(row), flush=True)

    done_t5 = set()
    for name in args.cases:
        model, size = CASES[name]
        raw = {"model": model, "checkpoint_dir": "/nonexistent", "prompt": "a corgi surfing a wave at sunset",
               "task": MODELS[model].task, "backend": args.backend, "sample": {"size": size, "steps": 2}}
        weights = RandomWeights(0)
        prep = prepare(build_config(raw), weights=weights)
        plan, rt, dev, ckpts = prep.plan, prep.runtime, prep.device, prep.ckpts
        arch = from_checkpoints(ckpts)
        pol = plan.policy
        rt.synchronize()
        with torch.no_grad():
            if "t5" not in done_t5:
                done_t5.add("t5")
                base = _alloc(rt)
                enc = weights.load_text_encoder(None, dtype=pol.text_encoder, device=dev, text_len=512)
                add("t5 weights", t5_tensors(arch.t5, pol.text_encoder).bytes, _alloc(rt) - base)
                before = _alloc(rt)
                rt.reset_peak_memory()
                enc.encode([plan.prompt])
                add("t5 encode activations", A.t5_activation_bytes(arch.t5, pol.text_encoder), rt.peak_memory_bytes() - before)
                del enc
                rt.empty_cache()
            base = _alloc(rt)
            dit = weights.load_dit(ckpts.dit, pol, dev).bind_ops(prep.ops)
            add("%s dit weights" % name, dit_tensors(arch.dit, pol).bytes, _alloc(rt) - base)
            lat = plan.latent_shape
            x = torch.randn((1,) + tuple(lat), device=dev)
            ctx = torch.randn(1, 512, arch.t5["d_model"], device=dev, dtype=pol.text_encoder)
            t = torch.tensor([999], device=dev)
            tok = A.tokens(lat, arch.dit.patch_size, 1)
            pred = A.dit_forward_peak(arch.dit, pol, tok)
            dit(x, t, context=ctx)  # warm-up (kernel autotuning, rope cache)
            rt.synchronize()
            before = _alloc(rt)
            rt.reset_peak_memory()
            dit(x, t, context=ctx)
            rt.synchronize()
            add("%s dit forward (tokens %d)" % (name, tok.total), pred["peak"], rt.peak_memory_bytes() - before)
            del dit, x, ctx
            rt.empty_cache()
            if not args.skip_vae:
                vae = weights.load_vae(ckpts, pol, dev)
                add("%s vae weights" % name, vae_tensors(arch.vae_kind, arch.vae_config, pol.vae).bytes,
                    sum(p.numel() * p.element_size() for p in vae.parameters()))
                z = torch.randn((1,) + tuple(lat), device=dev).to(pol.vae)
                before = _alloc(rt)
                rt.reset_peak_memory()
                vae.decode(z)
                rt.synchronize()
                st, sh, sw = plan.preset.vae_stride
                p = A.vae_peak(arch.vae_kind, arch.vae_config, "decode", plan.frame_num, plan.height, plan.width, sh,
                               pol.vae)
                add("%s vae decode (work %d cache %d video %d)" % (name, p["work"], p["cache"], p["video"]), p["peak"],
                    rt.peak_memory_bytes() - before)
                del vae, z
                rt.empty_cache()
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


def _alloc(rt) -> int:
    rt.synchronize()
    return int(torch.cuda.memory_allocated())  # the calibration script runs on CUDA only


if __name__ == "__main__":
    main()
