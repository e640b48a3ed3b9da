"""Probe: cuDNN's FP8 flash attention (nvidia-cudnn-frontend ``sdpa_fp8``) at Wan shapes on one Hopper
GPU, against bf16 cuDNN and flash-attn-4 in the same run. Per-tensor e4m3 Q/K/V, P scaled by 448,
O in e4m3 (Hopper has no bf16 output for FP8 SDPA). Times one call over all heads and one call per
head (per-head scales); error against float64 attention on a slice of heads and queries.

    python3 benchmarks/cudnn_fp8_probe.py --out out/cudnn-fp8.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

E4M3 = torch.float8_e4m3fn
FMAX = 448.0


def timed(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    for _ in range(reps):
        fn()
    ev[1].record()
    torch.cuda.synchronize()
    return ev[0].elapsed_time(ev[1]) / reps


def build(cudnn, handle, shape, strides, scale):
    e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    tq, tk, tv = [g.tensor(name=n, dim=shape, stride=strides, data_type=e4m3) for n in ("q", "k", "v")]
    sc = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
    dq, dk, dv, ds, ss, so = [g.tensor(name=n, **sc) for n in ("dq", "dk", "dv", "ds", "ss", "so")]
    o, _, amax_s, amax_o = g.sdpa_fp8(q=tq, k=tk, v=tv, descale_q=dq, descale_k=dk, descale_v=dv, descale_s=ds,
                                      scale_s=ss, scale_o=so, attn_scale=scale, use_causal_mask=False,
                                      generate_stats=False)
    o.set_output(True).set_dim(shape).set_stride(strides).set_data_type(e4m3)
    for a in (amax_s, amax_o):
        a.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return g, (tq, tk, tv, dq, dk, dv, ds, ss, so, o, amax_s, amax_o)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import cudnn

    dev = torch.device("cuda")
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    rows = []
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as e:  # noqa: BLE001
        flash_attn_func = None
        print("flash-attn-4 unavailable:", e)
    for label, s, n in (("14B 480p", 32760, 40), ("1.3B 480p", 32760, 12), ("14B 720p", 75600, 40)):
        d = 128
        scale = d ** -0.5
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = [torch.randn(1, s, n, d, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(3)]
        flops = 4.0 * s * s * d * n
        row = {"shape": label, "S": s, "N": n, "D": d}
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def cudnn_bf16():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                      scale=scale).transpose(1, 2)
        row["bf16_cudnn_ms"] = timed(cudnn_bf16)
        if flash_attn_func is not None:
            row["fa4_ms"] = timed(lambda: flash_attn_func(q, k, v, softmax_scale=scale))
        # per-tensor quantizers (torch ops), one call over all heads
        one = torch.ones(1, 1, 1, 1, device=dev)

        def quant(x):
            amax = torch.linalg.vector_norm(x, float("inf"), dtype=torch.float32).clamp(min=1e-12)
            return (x.float() * (FMAX / amax)).to(E4M3), (amax / FMAX).reshape(1, 1, 1, 1)
        row["quant_ms"] = timed(lambda: (quant(q), quant(k), quant(v)))
        (q8, sq), (k8, sk), (v8, sv) = quant(q), quant(k), quant(v)
        shape, strides = (1, n, s, d), (s * n * d, d, n * d, 1)
        t0 = time.time()
        gr, ts = build(cudnn, handle, shape, strides, scale)
        row["build_s"] = time.time() - t0
        o8 = torch.empty(1, s, n, d, device=dev, dtype=E4M3)
        amax_s = torch.empty(1, 1, 1, 1, device=dev)
        amax_o = torch.empty(1, 1, 1, 1, device=dev)
        ws = torch.empty(gr.get_workspace_size(), device=dev, dtype=torch.uint8)
        scale_o = (1.0 / sv).reshape(1, 1, 1, 1)  # |O| <= amax(V): O * 448 / amax(V) fits e4m3
        pack = dict(zip(ts, (q8, k8, v8, sq, sk, sv, one / FMAX, one * FMAX, scale_o, o8, amax_s, amax_o)))
        row["fp8_cudnn_ms"] = timed(lambda: gr.execute(pack, ws, handle=handle))
        out = (o8.float() * sv.reshape(())).bfloat16()
        row["dequant_ms"] = timed(lambda: (o8.float() * sv.reshape(())).bfloat16())
        # per-head calls (per-head scales), strided views, no copies
        hshape, hstrides = (1, 1, s, d), (s * n * d, d, n * d, 1)
        gh, tsh = build(cudnn, handle, hshape, hstrides, scale)
        wsh = torch.empty(gh.get_workspace_size(), device=dev, dtype=torch.uint8)

        def per_head():
            for h in range(n):
                p = dict(zip(tsh, (q8[:, :, h:h + 1], k8[:, :, h:h + 1], v8[:, :, h:h + 1], sq, sk, sv, one / FMAX,
                                   one * FMAX, scale_o, o8[:, :, h:h + 1], amax_s, amax_o)))
                gh.execute(p, wsh, handle=handle)
        row["fp8_cudnn_per_head_ms"] = timed(per_head, reps=5)
        for key in ("bf16_cudnn_ms", "fa4_ms", "fp8_cudnn_ms", "fp8_cudnn_per_head_ms"):
            if key in row:
                row[key.replace("_ms", "_tflops")] = flops / (row[key] * 1e-3) / 1e12
        # error vs float64 on 2 heads x 512 queries
        hs, qs = slice(0, 2), slice(0, 512)
        ref = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q[:, qs, hs].double(), k[:, :, hs].double()) * scale, -1)
        ref = torch.einsum("bhqk,bkhd->bqhd", ref, v[:, :, hs].double())

        def err(x):
            x = x[:, qs, hs].double()
            return {"rel_l2": float((x - ref).norm() / ref.norm()),
                    "cosine": float(torch.nn.functional.cosine_similarity(x.flatten(), ref.flatten(), dim=0))}
        row["fp8_cudnn_err"] = err(out)
        row["bf16_cudnn_err"] = err(cudnn_bf16())
        row["amax_o_over_amax_v"] = float(amax_o.reshape(()) / FMAX)
        print(json.dumps(row))
        rows.append(row)
        del q, k, v, q8, k8, v8, o8
        torch.cuda.empty_cache()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "cudnn_frontend": getattr(cudnn, "__version__", "?"), "backend_version": cudnn.backend_version(),
           "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
