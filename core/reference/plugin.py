"""pluggy hook implementations of the built-in reference backend."""

from __future__ import annotations

import torch

from ..ops.impl import Constraints, OpImpl
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


def _load_attention_math():
    from .attention import attention_math

    return attention_math


def _load_attention_sdpa():
    from .attention import attention_sdpa

    return attention_sdpa


def _load_rotary():
    from .rotary import rotary

    return rotary


def _load_rms_norm():
    from .rms_norm import rms_norm

    return rms_norm


def _load_layer_norm():
    from .layer_norm import layer_norm

    return layer_norm


def _load_gated_residual():
    from .gated_residual import gated_residual

    return gated_residual


def _load_linear_gelu():
    from .linear_gelu import linear_gelu

    return linear_gelu


def _load_layer_norm_modulate():
    from .layer_norm_modulate import layer_norm_modulate

    return layer_norm_modulate


def _load_channel_rms_norm():
    from .channel_rms_norm import channel_rms_norm

    return channel_rms_norm


@hookimpl
def wanport_op_impls():
    any_float = Constraints(dtypes=_FLOATS, lse=True)
    norm = Constraints(dtypes=_FLOATS, out_dtype=True)
    return [
        OpImpl("attention", "math", NAME, _load_attention_math, any_float, priority=10,
               description="explicit softmax, query-chunked, float32 statistics, returns LSE"),
        OpImpl("attention", "sdpa", NAME, _load_attention_sdpa,
               Constraints(dtypes=_FLOATS, lse=False), priority=5,
               description="torch scaled_dot_product_attention (kernel chosen by torch)"),
        OpImpl("rotary", "real_tables", NAME, _load_rotary, any_float, priority=10,
               description="interleaved-pair rotation from real cos/sin tables"),
        OpImpl("rms_norm", "torch", NAME, _load_rms_norm, norm, priority=10,
               description="float32 statistics, rounded to x.dtype, times weight"),
        OpImpl("layer_norm", "torch", NAME, _load_layer_norm, norm, priority=10,
               description="F.layer_norm in float32, output in x.dtype"),
        OpImpl("layer_norm_modulate", "torch", NAME, _load_layer_norm_modulate, norm, priority=10,
               description="float32 LayerNorm then (1 + scale) * x + shift"),
        OpImpl("gated_residual", "torch", NAME, _load_gated_residual, any_float, priority=10,
               description="x + y * gate in the promoted dtype"),
        OpImpl("linear_gelu", "torch", NAME, _load_linear_gelu, any_float, priority=10,
               description="F.linear then tanh GELU (the official rounding order)"),
        OpImpl("channel_rms_norm", "torch", NAME, _load_channel_rms_norm, any_float, priority=10,
               description="VAE RMS norm over the channel dim (+SiLU), the official rounding order"),
    ]
