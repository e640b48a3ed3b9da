"""FP8 quantized Linears on a CUDA GPU: the cuda kernels against the reference emulation (same
quantized inputs), the fused producers against the unfused path, and GEMM / quantizer timings at
Wan 14B shapes (bf16 GEMM, FP8 GEMM, unfused and fused activation quantization).

    python benchmarks/quant_gpu_check.py [--tokens 32760] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def timed(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters  # ms


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32760)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from wanport.ops.quant import QuantizedActivation
    from wanport.reference.quant_linear import EmulatedKernels
    from wanport.reference.layer_norm_modulate import layer_norm_modulate as ln_ref
    from wanport_cuda.quant_linear import Fp8Kernels

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "checks": {}, "timings_ms": {}}
    # ---- correctness at a moderate shape
    m, k, n = 1000, 1536, 8960
    x = torch.randn(1, m, k, device=dev, generator=g).bfloat16()
    w = (torch.randn(n, k, device=dev, generator=g) / k ** 0.5)
    bias = (0.1 * torch.randn(n, device=dev, generator=g)).bfloat16()
    for scheme in ("fp8_rowwise", "fp8_tensor"):
        cu, ref = Fp8Kernels(scheme), EmulatedKernels(scheme)
        wq, ws = cu.quantize_weight(w)
        wq_r, ws_r = ref.quantize_weight(w)
        c = out["checks"][scheme] = {}
        c["weight_bits_equal"] = bool(torch.equal(wq.view(torch.uint8), wq_r.view(torch.uint8)))
        qa, qa_r = cu.quantize_activation(x), ref.quantize_activation(x)
        c["act_scale_rel"] = rel_l2(qa.scale.expand_as(qa_r.scale) if qa.scale.numel() == 1 else qa.scale, qa_r.scale)
        c["act_values_equal_frac"] = float((qa.data.float() == qa_r.data.float()).float().mean())
        y = cu.linear(qa, wq, ws, bias, out_dtype=torch.bfloat16)
        y_r = ref.linear(qa, wq, ws, bias, out_dtype=torch.float32)  # same quantized inputs
        c["linear_vs_emulation_rel_l2"] = rel_l2(y.float(), y_r)
        exact = F.linear(x.float(), w, bias.float())
        c["linear_vs_exact_rel_l2"] = rel_l2(y.float(), exact)
        # fused adaLN norm + quantization vs norm then quantize
        shift = 0.1 * torch.randn(1, 1, k, device=dev, generator=g)
        sc = 0.1 * torch.randn(1, 1, k, device=dev, generator=g)
        xr = torch.randn(1, m, k, device=dev, generator=g)
        fused = cu.layer_norm_modulate(xr, shift, sc, 1e-6, out_dtype=torch.bfloat16, fallback=ln_ref)
        unf = ref.quantize_activation(ln_ref(xr, shift, sc, 1e-6, out_dtype=torch.bfloat16))
        c["ln_quant_vs_unfused_rel_l2"] = rel_l2(fused.dequantize(), unf.dequantize())
        c["ln_quant_values_equal_frac"] = float((fused.data.float() == unf.data.float()).float().mean())
        a_f = cu.linear_gelu(qa, wq, ws, bias, out_dtype=torch.bfloat16, quantize_output=True)
        a_u = ref.quantize_activation(F.gelu(cu.linear(qa, wq, ws, bias, out_dtype=torch.bfloat16), approximate="tanh"))
        c["gelu_quant_vs_unfused_rel_l2"] = rel_l2(a_f.dequantize(), a_u.dequantize())
        assert isinstance(a_f, QuantizedActivation)
        print(scheme, json.dumps(c), flush=True)
    # ---- timings at Wan 14B shapes
    s = args.tokens
    shapes = {"qkvo 5120->5120": (5120, 5120), "ffn_up 5120->13824": (5120, 13824), "ffn_down 13824->5120": (13824, 5120)}
    cu = Fp8Kernels("fp8_rowwise")
    for name, (kk, nn_) in shapes.items():
        xa = torch.randn(s, kk, device=dev, generator=g).bfloat16()
        wb = (torch.randn(nn_, kk, device=dev, generator=g) / kk ** 0.5).bfloat16()
        bb = torch.zeros(nn_, device=dev, dtype=torch.bfloat16)
        wq, ws = cu.quantize_weight(wb.float())
        qa = cu.quantize_activation(xa)
        flop = 2.0 * s * kk * nn_
        t_bf16 = timed(lambda: F.linear(xa, wb, bb))
        t_fp8 = timed(lambda: cu.linear(qa, wq, ws, bb, out_dtype=torch.bfloat16))
        t_q = timed(lambda: cu.quantize_activation(xa))
        from wanport.ops.quant import quantize_reference, FP8_E4M3

        def torch_quant():
            sc = xa.abs().amax(-1, keepdim=True).float().clamp(min=1e-12) / 448.0
            return (xa.float() / sc).clamp(-448, 448).to(torch.float8_e4m3fn), sc

        t_tq = timed(torch_quant)
        row = {"bf16_ms": t_bf16, "fp8_gemm_ms": t_fp8, "bf16_tflops": flop / t_bf16 / 1e9,
               "fp8_tflops": flop / t_fp8 / 1e9, "triton_row_quant_ms": t_q, "torch_row_quant_ms": t_tq}
        out["timings_ms"][name] = row
        print(name, json.dumps(row), flush=True)
    xa = torch.randn(1, s, 5120, device=dev, generator=g).bfloat16()
    shift = 0.1 * torch.randn(1, 1, 5120, device=dev, generator=g)
    sc = 0.1 * torch.randn(1, 1, 5120, device=dev, generator=g)
    from wanport_cuda.layer_norm_modulate import layer_norm_modulate as ln_cu

    out["timings_ms"]["ln_modulate_bf16"] = timed(lambda: ln_cu(xa.float(), shift, sc, 1e-6, out_dtype=torch.bfloat16))
    out["timings_ms"]["ln_modulate_fp8_fused"] = timed(
        lambda: cu.layer_norm_modulate(xa.float(), shift, sc, 1e-6, out_dtype=torch.bfloat16, fallback=ln_cu))
    y = torch.randn(s, 13824, device=dev, generator=g).bfloat16()
    from wanport_cuda.quant_rows import gelu_quant_fp8

    out["timings_ms"]["gelu_bf16"] = timed(lambda: F.gelu(y, approximate="tanh"))
    out["timings_ms"]["gelu_fp8_fused"] = timed(lambda: gelu_quant_fp8(y))
    print(json.dumps({k: v for k, v in out["timings_ms"].items() if not isinstance(v, dict)}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
