"""Float32 error bounds for tests, derived from the arithmetic rather than from one machine's result.

``EPS32 = 2**-24`` is float32's unit roundoff (half an ulp at 1.0): every float32 operation rounds its
exact result by a relative error of at most EPS32. A float32 sum of K terms accumulates K such
roundings; in the worst case they add up to K·EPS32·Σ|terms|, in practice they behave like a random
walk and the norm-wise relative error of a result is ~√K·EPS32. That holds against an exact
(float64) reference and between two float32 evaluations in different orders (different BLAS blocking,
chunking, SIMD width: AVX2 and AVX-512 machines accumulate differently), which differ by about √2 as
much. ``f32_bound(k, ulps)`` is ``ulps·√k·EPS32`` where ``k`` counts every term summed along the
result's chain of reductions (a dot product of length D then a softmax over S keys: D + 2S), and
``ulps`` (2 unless a test says why) covers the element-wise roundings around the sums and the √2.
A real defect (a dropped chunk, a wrong mask, a wrong formula) moves a result by far more: 1e-3 and up.
"""

from __future__ import annotations

import math

EPS32 = 2.0 ** -24


def f32_bound(k: int, ulps: float = 2.0) -> float:
    """Norm-wise relative error bound for a float32 result built from ``k`` summed terms."""
    return ulps * math.sqrt(max(int(k), 1)) * EPS32





def chain_terms(module, attention_terms: int = 0) -> int:
    """The products summed on the way through ``module``: its convolutions' and Linears' fan-ins, plus
    ``attention_terms`` for the reductions that are no module (per attention layer: head dim + 2 x keys,
    summed over layers). That is the ``k`` of a deep float32 network, whose layers' rounding errors add
    up like one long sum (in quadrature); parallel branches (q, k, v) are all counted, which over-counts."""
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    return attention_terms + sum(m.weight[0].numel() for m in module.modules()
                                 if isinstance(m, kinds) and m.weight is not None)
__all__ = ["EPS32", "f32_bound", "chain_terms"]
