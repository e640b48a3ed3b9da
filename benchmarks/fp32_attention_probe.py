"""Probe: do float32 attention (each PyTorch SDPA backend) and a float32 matmul on this GPU run in full
float32, or on TF32 tensor cores? Relative L2 against float64 at a tiny Wan shape (B 1, 2 heads, 48
tokens, head dim 128): ~1e-7 is float32, ~1e-3 would be TF32. Asked when the tiny checkpoint's
video under Ulysses differed from the one-GPU video by 1e-3 (benchmarks/parallel_video_check.py).

    python3 benchmarks/fp32_attention_probe.py
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def main() -> int:
    torch.manual_seed(0)
    q, k, v = [torch.randn(1, 2, 48, 128, device="cuda") for _ in range(3)]
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    out = {}
    backends = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    for name, backend in backends.items():
        try:
            with sdpa_kernel([backend]):
                out[name] = rel(F.scaled_dot_product_attention(q, k, v), ref)
        except RuntimeError as exc:  # a backend without a float32 kernel
            out[name] = str(exc)[:80]
    a, w = torch.randn(48, 512, device="cuda"), torch.randn(512, 512, device="cuda")
    out["matmul_fp32"] = rel(a @ w, a.double() @ w.double())
    out["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
