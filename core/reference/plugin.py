"""pluggy hook implementations of the built-in reference backend."""

from __future__ import annotations

import torch

from ..ops.attention_quant import FP8_ATTENTION_TOLERANCE
from ..ops.impl import Constraints, OpImpl, lazy
from ..ops.quant import QUANT_TOLERANCE, SCHEMES
from ..registry.backend import BackendSpec
from ..registry.hookspecs import hookimpl

NAME = "reference"
_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def _start():
    from .runtime import HostRuntime

    return HostRuntime()


@hookimpl
def wanport_backends():
    return [
        BackendSpec(
            name=NAME,
            device_type="cpu",
            dist_backend="gloo",
            start=_start,
            priority=0,
            accelerator=False,
            description="pure PyTorch on the host CPU; its ops run on any device and are the ground truth",
        )
    ]


#: which implementation the resolver prefers where several fit, per (kind, name): the one place
#: that ranks this backend's implementations
PRIORITY = {
    ("attention", "math"): 10,  # the only one with the log-sum-exp; exact float32 statistics
    ("attention", "sdpa"): 5,
    ("attention", "emulate_fp8"): 1,  # lossy: only for quant.attention: fp8 (or when a recipe names it)
    ("attention", "emulate_fp8_tensor"): 1,  # lossy: only for quant.attention: fp8_tensor
    ("rotary", "real_tables"): 10,
    ("rms_norm", "torch"): 10,
    ("layer_norm", "torch"): 10,
    ("layer_norm_modulate", "torch"): 10,
    ("gated_residual", "torch"): 10,
    ("linear_gelu", "torch"): 10,
    ("channel_rms_norm", "torch"): 10,
}
# quant_linear: one float32 emulation per scheme, each the only one of its scheme here
PRIORITY.update({("quant_linear", "emulate_" + scheme): 10 for scheme in SCHEMES})


def _impl(kind: str, name: str, target: str, constraints: Constraints, description: str) -> OpImpl:
    return OpImpl(kind, name, NAME, lazy(target, package=__package__), constraints,
                  priority=PRIORITY[(kind, name)], description=description)


@hookimpl
def wanport_op_impls():
    any_float = Constraints(dtypes=_FLOATS, lse=True)
    norm = Constraints(dtypes=_FLOATS, out_dtype=True)
    return [
        _impl("attention", "math", ".attention:attention_math", any_float,
              "explicit softmax, query-chunked, float32 statistics, returns LSE"),
        _impl("attention", "sdpa", ".attention:attention_sdpa", Constraints(dtypes=_FLOATS, lse=False),
              "torch scaled_dot_product_attention (kernel chosen by torch)"),
        _impl("rotary", "real_tables", ".rotary:rotary", any_float,
              "interleaved-pair rotation from real cos/sin tables"),
        _impl("rms_norm", "torch", ".rms_norm:rms_norm", norm,
              "float32 statistics, rounded to x.dtype, times weight"),
        _impl("layer_norm", "torch", ".layer_norm:layer_norm", norm,
              "F.layer_norm in float32, output in x.dtype"),
        _impl("layer_norm_modulate", "torch", ".layer_norm_modulate:layer_norm_modulate", norm,
              "float32 LayerNorm then (1 + scale) * x + shift"),
        _impl("gated_residual", "torch", ".gated_residual:gated_residual", any_float,
              "x + y * gate in the promoted dtype"),
        _impl("linear_gelu", "torch", ".linear_gelu:linear_gelu", any_float,
              "F.linear then tanh GELU (the official rounding order)"),
        _impl("channel_rms_norm", "torch", ".channel_rms_norm:channel_rms_norm", any_float,
              "VAE RMS norm over the channel dim (+SiLU), the official rounding order"),
    ] + [
        # one float32 emulation per scheme: quantize -> dequantize -> matmul (the ground truth)
        OpImpl("quant_linear", "emulate_" + scheme, NAME, lazy(".quant_linear:make", scheme, package=__package__),
               Constraints(dtypes=_FLOATS, schemes=frozenset({scheme})), priority=PRIORITY[("quant_linear", "emulate_" + scheme)],
               exact=False, tolerance=QUANT_TOLERANCE[scheme],
               description="float32 emulation of %s: quantize, dequantize, matmul" % scheme)
        for scheme in SCHEMES
    ] + [
        # quant.attention: fp8, emulated in float32 (docs/quantization.md, "FP8 attention")
        OpImpl("attention", "emulate_fp8", NAME, lazy(".fp8_attention:fp8_attention", package=__package__),
               Constraints(dtypes=_FLOATS, lse=True, schemes=frozenset({"fp8"})),
               priority=PRIORITY[("attention", "emulate_fp8")], exact=False, tolerance=FP8_ATTENTION_TOLERANCE,
               description="float32 emulation of FP8 attention: smoothed K, e4m3 Q/K per 128-row block, "
                           "V per channel, P per 128-key block"),
        # quant.attention: fp8_tensor (what cuDNN's FP8 SDPA computes), emulated in float32; no LSE
        OpImpl("attention", "emulate_fp8_tensor", NAME,
               lazy(".fp8_attention:fp8_tensor_attention", package=__package__),
               Constraints(dtypes=_FLOATS, lse=False, schemes=frozenset({"fp8_tensor"})),
               priority=PRIORITY[("attention", "emulate_fp8_tensor")], exact=False, tolerance=FP8_ATTENTION_TOLERANCE,
               description="float32 emulation of FP8 attention with e4m3 Q/K/V per (sample, head), P per "
                           "128-key block, e4m3 output (cuDNN's FP8 SDPA)"),
    ]
