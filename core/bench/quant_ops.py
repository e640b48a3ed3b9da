"""``wanport bench ops`` for the quantized Linears: each scheme the backend declares, at the Wan
shapes of the DiT blocks (q/k/v/o, the FFN up- and down-projection, the cross-attention's k/v over
512 text tokens), timed from an already quantized activation (the GEMM alone: what a block pays
when the producer emits the 8-bit activation) and from a bf16 one (quantization + GEMM), against
the bf16 matmul ceiling and the 8-bit GEMM ceiling of the same kernels at n x n x n, both measured
in the same run (docs/quantization.md)."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..config.models import MODELS
from ..io.atomic import finite_or_none
from ..ops.impl import Requirements
from ..registry.resolver import _pool, _usable
from .dit import time_forward


def _sig(x: float, digits: int = 4) -> float:
    return float("%.*g" % (digits, x))


def quant_kernels(registry, backend: str, device_type: str) -> List[Tuple[str, Any]]:
    """(qualified name, kernels) of every usable quant_linear implementation of the backend."""
    out = []
    for impl in _pool(registry, backend, "quant_linear"):
        for scheme in sorted(impl.constraints.schemes):
            ok, _ = _usable(impl, Requirements(device_type=device_type, quant_scheme=scheme))
            if ok:
                out.append((impl.qualified_name, impl.load()))
                break
    return out


def linear_shapes(model: str, tokens: int) -> List[Tuple[str, int, int, int]]:
    """(label, M, K, N) of the blocks' Linears."""
    arch = MODELS[model].arch
    c, f = arch["dim"], arch["ffn_dim"]
    return [("q/k/v/o %dx%d" % (c, c), tokens, c, c), ("ffn up %dx%d" % (c, f), tokens, c, f),
            ("ffn down %dx%d" % (f, c), tokens, f, c), ("cross k/v 512 tokens", 512, c, c)]


def fp8_ceiling(kernels, device, runtime, n: int) -> float:
    """TFLOP/s of the kernels' GEMM at n x n x n from a quantized activation."""
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    w, s = kernels.quantize_weight(torch.randn(n, n, device=device) / n ** 0.5)
    qa = kernels.quantize_activation(a)
    t = statistics.median(time_forward(lambda: kernels.linear(qa, w, s, None, out_dtype=torch.bfloat16),
                                       runtime, 2, 5))
    return _sig(2.0 * n ** 3 / t / 1e12)


def bench_quant_linears(registry, spec, runtime, device, pairs: Sequence[Tuple[str, Any]], token_counts,
                        warmup: int, repeats: int, quick: bool) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
    """(rows, {impl: 8-bit GEMM ceiling TFLOP/s})."""
    rows: List[Dict[str, Any]] = []
    ceilings: Dict[str, float] = {}
    kits = quant_kernels(registry, spec.name, spec.device_type)
    dtype = torch.bfloat16 if spec.device_type != "cpu" else torch.float32
    for name, kernels in kits:
        ceilings[name] = fp8_ceiling(kernels, device, runtime, 256 if quick else 8192)
        for (model, size), tokens in zip(pairs, token_counts):
            for label, m, k, n in linear_shapes(model, tokens)[:1 if quick else None]:
                x = torch.randn(1, m, k, device=device).to(dtype)
                w = torch.randn(n, k, device=device) / k ** 0.5
                bias = (0.1 * torch.randn(n, device=device)).to(dtype)
                wq, ws = kernels.quantize_weight(w)
                qa = kernels.quantize_activation(x)
                exact = torch.nn.functional.linear(x.double(), w.double(), bias.double())
                out = kernels.linear(qa, wq, ws, bias, out_dtype=dtype)
                err = float((out.double() - exact).norm() / exact.norm().clamp_min(1e-300))
                flops = 2.0 * m * k * n
                tag = "%s %s %s S=%d" % (model.rsplit("-", 1)[-1], size, label, m)
                for mode, fn in (("8-bit activation in", lambda: kernels.linear(qa, wq, ws, bias, out_dtype=dtype)),
                                 ("bf16 activation in (quantized unfused)",
                                  lambda: kernels.linear(x, wq, ws, bias, out_dtype=dtype))):
                    med = statistics.median(time_forward(fn, runtime, warmup, repeats))
                    rows.append({"kind": "quant_linear", "case": "%s, %s" % (tag, mode),
                                 "impl": "%s [%s]" % (name, kernels.scheme.name), "median_ms": _sig(med * 1e3),
                                 "tflops": _sig(flops / med / 1e12, 3),
                                 "pct_of_8bit_ceiling": round(100 * flops / med / 1e12 / ceilings[name], 1)
                                 if ceilings[name] > 0 else None,
                                 "rel_err_vs_f64": finite_or_none(float("%.3g" % err))})
                del x, w, wq, ws, qa, exact, out
                runtime.empty_cache()
    return rows, ceilings


__all__ = ["bench_quant_linears", "fp8_ceiling", "linear_shapes", "quant_kernels"]
