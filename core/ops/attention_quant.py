"""FP8 attention (the recipe's ``quant.attention``): the schemes implementations follow, their
quantizers, and the bound of their error (docs/quantization.md, "FP8 attention").

``fp8`` (SageAttention-style, e4m3 everywhere, float32 accumulation):

- **K smoothing** (exact): ``k <- k - mean_s(k)`` per (sample, head, channel) over the sample's valid
  keys. Every score of a query row shifts by the same ``q . mean``, which softmax ignores; the
  values left to quantize are centred, so the block scales fit them better.
- **Q and K**: float8_e4m3fn with one float32 scale per (sample, head, block of ``BLOCK`` = 128
  rows), ``scale = amax(block) / 448``; values rounded to nearest, ties to even.
- **V**: float8_e4m3fn with one scale per (sample, head, channel) over the whole sequence.
- **P**: the key loop runs over blocks of ``BLOCK`` keys with an online softmax (running row max
  ``m``); each block's probabilities ``p = exp(s - m) <= 1`` are multiplied by ``P_SCALE`` = 448 and
  rounded to e4m3 before the ``P V`` product. The row sum ``l`` takes the unrounded ``p``.
- Scores ``(q8 . k8) * s_q * s_k * scale`` and the accumulator in float32; the output
  ``acc * s_v / (448 * l)`` is rounded once to q's dtype; the log-sum-exp is ``m + log l``.

``wanport.reference.fp8_attention`` is the float32 emulation of exactly this (the ground truth);
a kernel may differ from it only by float32 summation order and ``exp2`` vs ``exp``, which can
move a probability across an e4m3 rounding boundary (one step, 2^-4 relative, of one element).

``fp8_tensor`` (what cuDNN's FP8 flash attention computes on Hopper; no log-sum-exp):

- **K smoothing** (exact, as in ``fp8``): ``k <- k - mean_s(k)`` per (sample, head, channel) over the
  sample's valid keys, in float32. Without it the keys' common offset (a Linear's bias, through the
  q/k RMSNorm) is quantized with every key and its rounding moves the scores.
- **V smoothing** (exact): ``v <- v - mean_s(v)`` likewise, and the mean is added back to the
  output in float32 (softmax weights sum to 1, so ``softmax . v = softmax . (v - mean) + mean``).
  Where attention averages many keys -- a DiT with random weights, and early denoising steps --
  the output is close to that mean for every query; rounded to e4m3 with it, every query of a head
  would carry the SAME rounding error (a per-channel bias that later attention, which averages
  tokens, passes on instead of averaging away). Smoothed, only the part that varies over the
  queries is rounded. On the 14B DiT with random weights (FP8 Linears + this attention) the
  unsmoothed scheme gave cosine 0.983 to the exact forward.
- **Q, K, V**: float8_e4m3fn with ONE float32 scale per (sample, head): ``x8 = round(x * (448 /
  amax))`` over that sample's head (its valid keys for K and V; K and V smoothed first), descale
  ``amax / 448``. Per (sample, head) rather than per tensor, so CFG-parallel and Ulysses (which split
  samples and heads across devices) give the same bits as one device.
- **P**: as in ``fp8`` (online softmax over ``BLOCK``-key blocks, ``exp(s - m) * 448`` rounded to
  e4m3; ``l`` sums the unrounded ``p``).
- **O**: ``acc * s_v / (448 * l)`` (the smoothed V's weighted mean) rounded to e4m3 with the scale
  ``448 / (amax(V) * O_HEADROOM)`` of its (sample, head) (:func:`output_scales`; ``|O| <= amax(V)`` as
  a convex combination of V's rows, times at most ``1 + 2^-4`` from P's rounding: never past 448),
  then dequantized (times ``amax(V) * O_HEADROOM / 448``) plus V's mean, to q's dtype. Hopper's FP8
  SDPA writes e4m3 only.

``wanport.reference.fp8_attention.fp8_tensor_attention`` emulates it in float32; a kernel differs
by its own P block order and summation (an element of P or O moving one e4m3 step) and by the
summation order of the means.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

from .checks import per_sample_keys
from .quant import FP8_E4M3, round_to_format

#: rows of Q and K sharing one scale, and keys per online-softmax step (the P rounding depends on it)
BLOCK = 128
#: P in [0, 1] times this before the e4m3 rounding (e4m3's largest finite value)
P_SCALE = FP8_E4M3.max
#: ``fp8_tensor``'s output scale is V's widened by this: P's e4m3 rounding (at most 2^-4 relative per
#: probability, the row sum taken unrounded) can carry ``|O|`` that far past ``amax(V)``
O_HEADROOM = 1.0 + 2.0 ** -4
#: the values of ``quant.attention`` with a scheme behind them
ATTENTION_SCHEMES = ("fp8", "fp8_tensor")

#: declared relative-L2 error of an FP8 attention against float64 attention, for the conformance kit
#: and the resolver's listing. Each of q, k, v, p is rounded by at most 2^-4 relative (rms about
#: 2^-4/sqrt(3) = 0.036); the V and P errors average over the keys a query attends to, the score error
#: scale*|q||k|*2^-4*sqrt(2/D) moves the weights by about that much relative: a few 1e-2 at Wan's
#: score ranges (measured: benchmarks/fp8_attention_check.py). Twice that, as for the FP8 Linears.
FP8_ATTENTION_TOLERANCE = 0.1


def padded_length(s: int, block: int = BLOCK) -> int:
    return -(-s // block) * block


def smooth_keys(kf: torch.Tensor) -> torch.Tensor:
    """``kf`` [B, N, S, D] float32 minus its mean over S (exact for softmax: every score of a row
    moves by the same amount)."""
    return kf - kf.mean(dim=2, keepdim=True)


def quantize_row_blocks(xf: torch.Tensor, cast: Callable[[torch.Tensor], torch.Tensor],
                        block: int = BLOCK) -> Tuple[torch.Tensor, torch.Tensor]:
    """``xf`` [B, N, S, D] float32 -> (values [B, N, S_pad, D], scales [B, N, S_pad // block] float32):
    rows zero-padded to a multiple of ``block``, one scale ``amax / 448`` per block of rows (an all-zero
    block gets a tiny positive scale; its values are 0). ``cast`` rounds the divided values: to
    float32 on e4m3's grid (the emulation) or to ``torch.float8_e4m3fn`` (a kernel's operand)."""
    b, n, s, d = xf.shape
    sp = padded_length(s, block)
    if sp != s:
        xf = F.pad(xf, (0, 0, 0, sp - s))
    blocks = xf.reshape(b, n, sp // block, block * d)
    scale = (blocks.abs().amax(dim=-1).clamp(min=1e-12) / FP8_E4M3.max).float()
    vals = cast((blocks / scale[..., None]).clamp(-FP8_E4M3.max, FP8_E4M3.max))
    return vals.reshape(b, n, sp, d), scale


def quantize_channels(vf: torch.Tensor, cast: Callable[[torch.Tensor], torch.Tensor],
                      block: int = BLOCK) -> Tuple[torch.Tensor, torch.Tensor]:
    """``vf`` [B, N, S, D] float32 -> (values [B, N, D, S_pad], transposed, keys zero-padded to a
    multiple of ``block``; scales [B, N, D] float32, one per channel over the sequence). The
    transposed layout is what an FP8 ``P V`` product on Hopper reads (its B operand K-major)."""
    s = vf.shape[2]
    scale = (vf.abs().amax(dim=2).clamp(min=1e-12) / FP8_E4M3.max).float()  # [B, N, D]
    vt = vf.transpose(2, 3)
    sp = padded_length(s, block)
    if sp != s:
        vt = F.pad(vt, (0, sp - s))
    vals = cast((vt / scale[..., None]).clamp(-FP8_E4M3.max, FP8_E4M3.max))
    return vals.contiguous(), scale


def to_e4m3_grid(x: torch.Tensor) -> torch.Tensor:
    """The emulation's cast: float32 values on e4m3's grid (ties to even, no fp8 dtype needed)."""
    return round_to_format(x, FP8_E4M3)


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cast: Callable[[torch.Tensor], torch.Tensor]):
    """q, k, v [B, S, N, D] (any float dtype) -> (q8, s_q, k8, s_k, v8t, s_v, k_mean) of the scheme: K
    smoothed, Q/K per row block, V per channel (transposed); ``k_mean`` [B, N, 1, D] float32 is what
    the smoothing took away (the log-sum-exp gets ``scale * q . k_mean`` back: :func:`lse_shift`).
    One sample's keys must all be valid here."""
    qf = q.float().transpose(1, 2)
    kf = k.float().transpose(1, 2)
    k_mean = kf.mean(dim=2, keepdim=True)
    q8, sq = quantize_row_blocks(qf, cast)
    k8, sk = quantize_row_blocks(kf - k_mean, cast)
    v8, sv = quantize_channels(v.float().transpose(1, 2), cast)
    return q8, sq, k8, sk, v8, sv, k_mean


def head_multipliers(xf: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``xf`` [B, S, N, D] (any float dtype) -> (multiplier ``448 / amax``, descale ``amax / 448``),
    each [B, N] float32: the ``fp8_tensor`` scale of each (sample, head). One pass over ``xf`` (an
    inf-norm, no ``|x|`` temporary); an all-zero head gets a tiny positive descale (its values are 0)."""
    # the max of |x| is exact in x's own dtype: no float32 copy of x
    amax = torch.linalg.vector_norm(xf, float("inf"), dim=(1, 3)).float().clamp(min=1e-12)
    return FP8_E4M3.max / amax, amax / FP8_E4M3.max


def quantize_heads(x: torch.Tensor, cast: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x`` [B, S, N, D] -> (values [B, S, N, D], descales [B, N] float32) of the ``fp8_tensor``
    scheme: ``cast(clamp(x * 448 / amax))`` per (sample, head), in x's layout. ``cast`` rounds to
    e4m3's grid in float32 (the emulation) or to ``torch.float8_e4m3fn``."""
    mult, descale = head_multipliers(x)
    vals = cast((x.float() * mult[:, None, :, None]).clamp(-FP8_E4M3.max, FP8_E4M3.max))
    return vals, descale


def head_means(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, S, N, D] -> its mean over S per (sample, head, channel), [B, 1, N, D] float32 (the
    caller passes one sample's valid keys)."""
    return x.float().mean(dim=1, keepdim=True)


def smooth_heads(k: torch.Tensor) -> torch.Tensor:
    """``k`` [B, S, N, D] -> float32 ``k - mean_s(k)`` per (sample, head, channel): the ``fp8_tensor``
    scheme's K and V smoothing (the caller passes one sample's valid keys)."""
    return k.float() - head_means(k)


def output_scales(v_desc: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``fp8_tensor``'s output scale from the (smoothed) V's descale ``amax / 448`` [B, N]: (multiplier
    ``448 / (amax * O_HEADROOM)``, descale ``amax * O_HEADROOM / 448``), each [B, N] float32."""
    desc = v_desc * O_HEADROOM
    return 1.0 / desc, desc


def lse_shift(q: torch.Tensor, k_mean: torch.Tensor, scale: float) -> torch.Tensor:
    """[B, N, Sq] float32: ``scale * q . k_mean``, what K smoothing removed from every score of a row
    (softmax does not see it; the log-sum-exp does)."""
    return torch.matmul(q.float().transpose(1, 2), k_mean.transpose(-1, -2))[..., 0] * scale


__all__ = ["ATTENTION_SCHEMES", "BLOCK", "FP8_ATTENTION_TOLERANCE", "P_SCALE", "head_means", "head_multipliers",
           "O_HEADROOM", "output_scales", "padded_length",
           "lse_shift", "per_sample_keys", "quantize_heads", "smooth_heads",
           "quantize_channels", "quantize_qkv", "quantize_row_blocks", "smooth_keys", "to_e4m3_grid"]
