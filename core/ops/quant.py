"""Quantized DiT linears: the schemes a recipe can ask for, the quantized tensors, and the kernel
set (``QuantKernels``) that a backend's ``quant_linear`` implementation returns.

The core never names what only one vendor has: a recipe asks for a *scheme* (``quant.dit``), a
backend declares ``OpImpl("quant_linear", ..., Constraints(schemes=frozenset({...})))`` for the
schemes it implements, and the resolver picks one implementation per run (docs/quantization.md).

Canonical layout of a quantized Linear (the same on every backend, and the layout of
pre-quantized checkpoints: ``<module>.weight`` + ``<module>.weight_scale``):

- ``weight``: ``[N, K]`` (out, in) row-major, in the scheme's weight storage dtype
  (``torch.float8_e4m3fn`` for ``fp8_e4m3``, ``torch.int8`` for ``int8``);
- ``weight_scale``: float32 ``[N, 1]`` (per output channel) or ``[1, 1]`` (per tensor), so that
  ``weight.float() * weight_scale`` is the dequantized weight;
- ``bias``: ``[N]`` in the precision policy's matmul dtype (never quantized).

Quantization is symmetric, scale = amax / format max (448 for e4m3, 127 for int8), values
rounded to nearest (ties to even) on the format's grid and clamped to ± max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- number formats


@dataclass(frozen=True)
class NumberFormat:
    """An 8-bit number format a scheme stores weights or activations in."""

    name: str  # "fp8_e4m3" | "int8"
    max: float  # largest finite magnitude (the symmetric scale maps amax onto it)
    integer: bool
    mantissa_bits: int = 0  # floating formats: explicit mantissa bits (e4m3: 3)
    min_normal_exp: int = 0  # floating formats: exponent of the smallest normal (e4m3: -6)

    @property
    def storage_dtype(self) -> torch.dtype:
        """The torch dtype holding this format (float8_e4m3fn needs torch >= 2.1)."""
        if self.integer:
            return torch.int8
        dt = getattr(torch, "float8_e4m3fn", None)
        if dt is None:  # pragma: no cover - torch < 2.1
            raise RuntimeError("torch %s has no float8_e4m3fn dtype (needs >= 2.1)" % torch.__version__)
        return dt

    @property
    def unit_roundoff(self) -> float:
        """Largest relative rounding error of a value in the normal range (floats: 2^-(m+1))."""
        return 2.0 ** -(self.mantissa_bits + 1) if not self.integer else 0.0

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_normal_exp - self.mantissa_bits) if not self.integer else 1.0


FP8_E4M3 = NumberFormat("fp8_e4m3", max=448.0, integer=False, mantissa_bits=3, min_normal_exp=-6)
INT8 = NumberFormat("int8", max=127.0, integer=True)
FORMATS = {f.name: f for f in (FP8_E4M3, INT8)}

# ---------------------------------------------------------------- schemes


@dataclass(frozen=True)
class QuantScheme:
    """What a recipe's ``quant.dit`` names: how weights and activations of a Linear are quantized.

    ``weight_granularity``: ``channel`` (one scale per output row) or ``tensor``.
    ``activation``: the activation format, or None (weight-only: activations stay in the matmul
    dtype and the backend dequantizes the weight on the fly).
    ``activation_granularity``: ``token`` (one dynamic scale per row of x) or ``tensor`` (one
    dynamic scale per call).
    """

    name: str
    weight: NumberFormat
    weight_granularity: str
    activation: Optional[NumberFormat]
    activation_granularity: Optional[str]
    description: str = ""

    @property
    def weight_only(self) -> bool:
        return self.activation is None


SCHEMES = {
    s.name: s
    for s in (
        QuantScheme("fp8_rowwise", FP8_E4M3, "channel", FP8_E4M3, "token",
                    "FP8 e4m3 weights with per-output-channel scales, FP8 activations with per-token dynamic scales"),
        QuantScheme("fp8_tensor", FP8_E4M3, "tensor", FP8_E4M3, "tensor",
                    "FP8 e4m3 weights and activations, one scale per tensor (activation scale dynamic per call)"),
        QuantScheme("int8_w8a8", INT8, "channel", INT8, "token",
                    "INT8 weights with per-output-channel scales, INT8 activations with per-token dynamic scales"),
        QuantScheme("int8_w8a16", INT8, "channel", None, None,
                    "INT8 weights with per-output-channel scales, activations in the matmul dtype"),
    )
}

#: values of the recipe's ``quant.dit`` and ``quant.attention``
DIT_CHOICES = ("none",) + tuple(SCHEMES)
ATTENTION_CHOICES = ("none", "fp8", "fp8_tensor")

#: what stays in the precision policy's dtype by default (the peers' choice: embeddings, the time
#: projection that makes the modulation, the head; Wan2.1 i2v's image embedding). Norms are never
#: quantized (they are not Linears). Names are module paths of the DiT (official key prefixes).
DEFAULT_KEEP = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head", "img_emb")


def get_scheme(name: str) -> QuantScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError("unknown quantization scheme %r (known: %s)" % (name, ", ".join(SCHEMES))) from None


# ---------------------------------------------------------------- quantized activations


@dataclass
class QuantizedActivation:
    """An activation ready for a quantized Linear; produced once, fed to every Linear that reads it
    (self-attention's q, k and v share one).

    ``data``: ``[..., K]``; in the scheme's activation storage dtype, or -- weight-only schemes --
    the activation itself, unquantized. ``scale``: float32 broadcastable to ``data``
    (``[..., 1]`` per token, all-ones shape per tensor), None when ``data`` is unquantized.
    ``dtype``: the dtype the activation had before quantization (the matmul dtype).
    """

    data: torch.Tensor
    scale: Optional[torch.Tensor]
    dtype: torch.dtype
    scheme: str

    @property
    def shape(self):
        return self.data.shape

    def dequantize(self) -> torch.Tensor:
        """float32 values (for reference paths and tests)."""
        if self.scale is None:
            return self.data.float()
        return self.data.float() * self.scale


Activation = Union[torch.Tensor, QuantizedActivation]

# ---------------------------------------------------------------- reference arithmetic (float32)


def round_to_format(v: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """Round float32 ``v`` (already divided by its scale) to the nearest value of ``fmt``, ties to
    even, saturating at ± fmt.max. Returns float32 values exactly representable in ``fmt``.

    e4m3 is emulated from its definition (3 mantissa bits, smallest normal 2^-6, subnormal step
    2^-9, max 448), not through a cast, so the emulation does not depend on torch's fp8 support.
    """
    v = v.float()
    if fmt.integer:
        return torch.round(v).clamp_(-fmt.max, fmt.max)
    a = v.abs().clamp(max=fmt.max)
    # exponent of each value's leading bit, floored at the smallest normal (subnormals share its step)
    exp = torch.floor(torch.log2(a.clamp(min=2.0 ** fmt.min_normal_exp))).clamp_(min=fmt.min_normal_exp)
    step = torch.pow(2.0, exp - fmt.mantissa_bits)
    r = torch.round(a / step) * step  # a/step < 2^(m+1) is exact in float32; round is half-to-even
    return (torch.sign(v) * r.clamp_(max=fmt.max)).float()


def absmax_scale(x: torch.Tensor, fmt: NumberFormat, granularity: str) -> torch.Tensor:
    """float32 scale, ``amax / fmt.max``: per row (``channel``/``token``: shape ``[..., 1]``) or one
    for the tensor (``tensor``: shape ``[1] * x.dim()``). An all-zero row gets a tiny positive
    scale (its values quantize to 0)."""
    a = x.detach().float().abs()
    if granularity in ("channel", "token"):
        amax = a.amax(dim=-1, keepdim=True)
    elif granularity == "tensor":
        amax = a.amax().reshape([1] * x.dim())
    else:
        raise ValueError("unknown granularity %r" % granularity)
    return (amax.clamp(min=1e-12) / fmt.max).float()


def quantize_reference(x: torch.Tensor, fmt: NumberFormat, granularity: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values on ``fmt``'s grid as float32, float32 scale): ``x ≈ values * scale``."""
    scale = absmax_scale(x, fmt, granularity)
    return round_to_format(x.float() / scale, fmt), scale


# ---------------------------------------------------------------- the kernel set


class QuantKernels:
    """What ``load()`` of a ``quant_linear`` implementation returns: one scheme's kernels.

    The defaults below are the reference arithmetic (``quantize_weight`` and
    ``quantize_activation`` in float32, then stored in the format's dtype); a backend subclass
    overrides ``linear`` (required) and whichever others it has faster kernels for. Every method
    must agree with the reference emulation (``wanport.reference.quant_linear``) within the
    implementation's declared tolerance.

    The block calls, per Linear it quantizes:

    - ``quantize_weight(w)`` once at load (``w``: ``[N, K]`` float) -> ``(weight, weight_scale)``
      in the canonical layout of this module's docstring;
    - ``quantize_activation(x)`` -> :class:`QuantizedActivation` (once per input, shared by every
      Linear reading it);
    - ``layer_norm_modulate(x, shift, scale, eps, out_dtype=, fallback=)`` -> the adaLN norm's
      output already quantized (a backend fuses the quantization into its norm kernel;
      ``fallback`` is the op table's ``layer_norm_modulate`` for the default composition);
    - ``add_layer_norm_modulate(x, y, shift, scale, eps, out_dtype=, fallback=)`` -> ``(x + y, the
      quantized norm of it)`` for the FFN's norm after the cross-attention's residual add (default:
      the add, then ``layer_norm_modulate``);
    - ``linear(x, weight, weight_scale, bias, out_dtype=)`` -> ``x Wᵀ + b`` in ``out_dtype``; ``x`` is
      a tensor (quantized inside) or a :class:`QuantizedActivation` of this scheme;
    - ``linear_gelu(..., quantize_output=)`` -> ``gelu_tanh(x Wᵀ + b)``, quantized for the next
      Linear when asked (a backend fuses GELU and the quantization).
    """

    #: set by subclasses
    scheme: QuantScheme

    def __init__(self, scheme: Union[str, QuantScheme]):
        self.scheme = scheme if isinstance(scheme, QuantScheme) else get_scheme(scheme)

    def __call__(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
                 bias: Optional[torch.Tensor], *, out_dtype: torch.dtype) -> torch.Tensor:
        return self.linear(x, weight, weight_scale, bias, out_dtype=out_dtype)

    # -- weights
    def quantize_weight(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s = self.scheme
        values, scale = quantize_reference(w, s.weight, s.weight_granularity)
        return values.to(s.weight.storage_dtype), scale.reshape(-1, 1) if scale.numel() > 1 else scale.reshape(1, 1)

    # -- activations
    def quantize_activation(self, x: Activation) -> QuantizedActivation:
        if isinstance(x, QuantizedActivation):
            if x.scheme != self.scheme.name:
                raise ValueError("activation quantized for %s given to a %s Linear" % (x.scheme, self.scheme.name))
            return x
        s = self.scheme
        if s.activation is None:
            return QuantizedActivation(x, None, x.dtype, s.name)
        values, scale = quantize_reference(x, s.activation, s.activation_granularity)
        return QuantizedActivation(values.to(s.activation.storage_dtype), scale, x.dtype, s.name)

    def layer_norm_modulate(self, x, shift, scale, eps, *, out_dtype, fallback: Callable) -> QuantizedActivation:
        return self.quantize_activation(fallback(x, shift, scale, eps, out_dtype=out_dtype))

    def add_layer_norm_modulate(self, x, y, shift, scale, eps, *, out_dtype,
                                fallback: Callable) -> Tuple[torch.Tensor, QuantizedActivation]:
        """``(x + y, layer_norm_modulate(x + y, ...))``: the cross-attention's residual add and the
        FFN's norm, the norm quantized (contract of the op kind ``add_layer_norm_modulate``; the sum
        may be written into x's storage). ``fallback`` is the op table's ``layer_norm_modulate``."""
        total = x + y
        return total, self.layer_norm_modulate(total, shift, scale, eps, out_dtype=out_dtype, fallback=fallback)

    # -- matmuls
    def linear(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: Optional[torch.Tensor], *, out_dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError("%s.linear" % type(self).__name__)

    def linear_gelu(self, x: Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
                    bias: Optional[torch.Tensor], *, out_dtype: torch.dtype,
                    quantize_output: bool = False) -> Activation:
        y = F.gelu(self.linear(x, weight, weight_scale, bias, out_dtype=out_dtype), approximate="tanh")
        return self.quantize_activation(y) if quantize_output else y

    def describe(self) -> str:
        return "%s (%s)" % (self.scheme.name, type(self).__name__)


__all__ = [
    "ATTENTION_CHOICES", "Activation", "DEFAULT_KEEP", "DIT_CHOICES", "FORMATS", "FP8_E4M3", "INT8",
    "NumberFormat", "QuantKernels", "QuantScheme", "QuantizedActivation", "SCHEMES", "absmax_scale",
    "get_scheme", "quantize_reference", "round_to_format",
]


#: declared relative-L2 error of a quantized Linear vs the float64 unquantized one, per scheme: e4m3
#: rounds each operand by up to 2^-4 relative (rms about 2^-4/sqrt(3) for each of x and W, about 0.05
#: for their product), int8 by half a step of amax/127 (about 0.01 on Gaussian rows); twice that
QUANT_TOLERANCE = {"fp8_rowwise": 0.1, "fp8_tensor": 0.1, "int8_w8a8": 0.05, "int8_w8a16": 0.05}
