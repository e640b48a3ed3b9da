"""CPU: the FP8 attention schemes' emulations inside a small random DiT (float32, reference backend):
the DiT output with ``quant.attention`` fp8 / fp8_tensor against the exact forward, to tell the
schemes' own error from a kernel's (docs/quantization.md, "fp8_tensor").

    python3 benchmarks/fp8_attention_small_dit.py --layers 8 --latent 1,16,5,40,80 --out out/fp8-small-dit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from wanport.models.dit import WanDiT
from wanport.models.dit.config import DiTConfig
from wanport.models.dit.requirements import dit_requirements
from wanport.precision import policy_from_config
from wanport.registry import discover, resolve_ops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--latent", default="1,16,5,40,80", help="B,C,T,H,W of the latent (tokens: T*H*W/4)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = DiTConfig(dim=512, ffn_dim=1536, num_heads=4, num_layers=args.layers, in_dim=16, out_dim=16, text_dim=256,
                    freq_dim=64, patch_size=(1, 2, 2), eps=1e-6, model_type="t2v", text_len=64)
    policy = policy_from_config("fp32")
    reg = discover()
    spec = reg.backends["reference"]
    lat = tuple(int(a) for a in args.latent.split(","))
    x, ctx, t = torch.randn(lat), torch.randn(1, 64, cfg.text_dim), torch.tensor([900])
    model = WanDiT.random(cfg, policy, torch.device("cpu"))
    outs, rows = {}, {}
    for name, scheme in (("exact", None), ("fp8", "fp8"), ("fp8_tensor", "fp8_tensor")):
        ops = resolve_ops(reg, spec, dit_requirements(cfg, policy, "cpu", attention_quant=scheme))
        model.bind_ops(ops)
        t0 = time.time()
        with torch.no_grad():
            outs[name] = model(x, t, ctx).double()
        rows[name] = {"impl": ops.self_attention.impl, "seconds": round(time.time() - t0, 2)}
    exact = outs["exact"]
    for name in ("fp8", "fp8_tensor"):
        o = outs[name]
        rows[name].update(cosine=float(torch.nn.functional.cosine_similarity(o.flatten(), exact.flatten(), dim=0)),
                          rel_l2=float((o - exact).norm() / exact.norm()), slope=float((o * exact).sum() / (exact ** 2).sum()))
    res = {"config": {"dim": cfg.dim, "heads": cfg.num_heads, "layers": cfg.num_layers, "latent": list(lat),
                      "tokens": lat[2] * lat[3] * lat[4] // 4, "precision": "fp32"}, "torch": torch.__version__, "runs": rows}
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
