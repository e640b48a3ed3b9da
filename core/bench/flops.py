"""FLOP counts of a Wan DiT forward, as docs/measurements.md §1 counts them."""

from __future__ import annotations

from typing import Dict


def dit_forward_flops(dim: int, ffn_dim: int, num_layers: int, video_tokens: int, text_tokens: int = 512) -> Dict[str, float]:
    """layers x [linear: 2(4Sd^2 + 2Sd^2 + 2Ld^2 + 2Sd*ffn) + attention: 4S^2 d + 4SLd]."""
    s, l, d = float(video_tokens), float(text_tokens), float(dim)
    linear = 2 * (4 * s * d * d + 2 * s * d * d + 2 * l * d * d + 2 * s * d * ffn_dim)
    attention = 4 * s * s * d + 4 * s * l * d
    return {"linear": num_layers * linear, "attention": num_layers * attention,
            "total": num_layers * (linear + attention)}


def attention_flops(batch: int, heads: int, sq: int, skv: int, head_dim: int) -> float:
    """4 * Sq * Skv * D * N * B (two matmuls)."""
    return 4.0 * batch * heads * sq * skv * head_dim
