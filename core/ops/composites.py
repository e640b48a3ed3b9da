"""Op implementations the resolver builds from others: composed fused kinds, out_dtype casts."""

from __future__ import annotations

from typing import Callable


def with_out_dtype(fn: Callable) -> Callable:
    """Give an implementation without ``out_dtype`` support the keyword, as a cast after it."""

    def wrapped(*args, out_dtype=None, **kwargs):
        y = fn(*args, **kwargs)
        return y if out_dtype is None or y.dtype == out_dtype else y.to(out_dtype)

    wrapped.__name__ = "%s+cast" % getattr(fn, "__name__", "op")
    return wrapped


def compose_qk_norm_rope(rms_norm: Callable, rotary: Callable) -> Callable:
    """``qk_norm_rope`` from a backend's own rms_norm and rotary (contract in ops/contracts.py)."""

    def qk_norm_rope(q, k, q_weight, k_weight, eps, cos, sin, num_heads, out_dtype):
        b, s, c = q.shape
        heads = (b, s, num_heads, c // num_heads)
        qn = rms_norm(q, q_weight, eps).view(heads)
        kn = rms_norm(k, k_weight, eps).view(heads)
        qr, kr = rotary(qn, kn, cos, sin)
        return qr.to(out_dtype), kr.to(out_dtype)

    return qk_norm_rope


COMPOSERS = {"qk_norm_rope": compose_qk_norm_rope}
