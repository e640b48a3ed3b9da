"""The CUDA backend's DiT output against the reference backend's, same weights, same GPU.

    python benchmarks/accuracy_dit.py --model wan2.1-t2v-1.3b [--layers N] [--out result.json]

Random real-size weights (official precision policy), one 480p x 81-frame forward with the
resolved cuda op table and one with every op forced to its reference implementation (explicit
float32-softmax attention, composed q/k norm + RoPE); prints cosine similarity and relative L2.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from wanport.bench.dit import dit_config_for
from wanport.models.dit import WanDiT
from wanport.models.dit.requirements import dit_requirements
from wanport.pipeline.session import choose_backend, start_session
from wanport.precision import policy_from_config
from wanport.registry import resolve_ops

REFERENCE = {"attention": "reference.math", "rotary": "reference.real_tables", "rms_norm": "reference.torch",
             "layer_norm": "reference.torch", "layer_norm_modulate": "reference.torch",
             "gated_residual": "reference.torch", "linear_gelu": "reference.torch", "qk_norm_rope": "composed",
             "add_layer_norm_modulate": "composed"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="wan2.1-t2v-1.3b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = dit_config_for(args.model, args.layers)
    policy = policy_from_config("official")
    registry, spec = choose_backend("cuda")
    session = start_session(registry, spec, {})
    dev = session.device
    reqs = dit_requirements(cfg, policy, spec.device_type)
    fast = resolve_ops(registry, spec, reqs)
    ref = resolve_ops(registry, spec, reqs, REFERENCE)
    model = WanDiT.random(cfg, policy, dev, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 21, 60, 104, generator=g).to(dev)
    ctx = torch.randn(1, 512, cfg.text_dim, generator=g).to(dev).bfloat16()
    t = torch.tensor([900])
    with torch.no_grad():
        a = model.bind_ops(fast)(x, t, ctx).double()
        b = model.bind_ops(ref)(x, t, ctx).double()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    rel = ((a - b).norm() / b.norm()).item()
    result = {"model": args.model, "layers": cfg.num_layers, "device": session.runtime.describe(),
              "cuda_ops": fast.describe(), "reference_ops": ref.describe(), "cosine": cos, "rel_l2": rel}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
