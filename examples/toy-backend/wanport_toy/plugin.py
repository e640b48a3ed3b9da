"""The toy backend's two hooks. This module is imported at discovery, on every machine: it imports
nothing but torch and wanport, and declares its implementations with ``lazy`` so their modules
load only when the resolver picks them."""

from __future__ import annotations

import os

import torch

from wanport.ops.impl import AtLoad, Constraints, OpImpl, lazy
from wanport.registry import BackendSpec, hookimpl

NAME = "toy"
_FLOATS = frozenset({torch.float32, torch.bfloat16, torch.float16})

#: the key block of the toy attention; a plugin default the user's shell or a recipe's `env:` overrides
#: (every block rescales the running output once: small blocks cost a full pass over it each)
KEY_BLOCK_ENV = "WANPORT_TOY_KEY_BLOCK"

#: which implementation the resolver prefers where several fit: the one ranking table
PRIORITY = {
    ("attention", "online_softmax"): 20,
    ("rms_norm", "vector_norm"): 20,
    ("gated_residual", "addcmul"): 20,
}

#: relative L2 error vs the float64 contract, bf16/fp16 tensors (a few roundings of inputs and output)
_HALF_TOL = 1e-2


def _available():
    """Never raises, imports nothing: a real plugin asks its vendor package here with
    ``importlib.util.find_spec`` (and says what to install when it is missing)."""
    if os.environ.get("WANPORT_TOY_DISABLE"):
        return False, "disabled by WANPORT_TOY_DISABLE (unset it to use the toy backend)"
    return True, ""


def _start():
    from .runtime import ToyRuntime  # the first moment a vendor package could be imported

    return ToyRuntime()


@hookimpl
def wanport_backends():
    return [BackendSpec(name=NAME, device_type="cpu", dist_backend="gloo", start=_start, is_available=_available,
                        env_defaults={KEY_BLOCK_ENV: "256"}, priority=1,
                        accelerator=False,  # host CPU: `backend: auto` never picks it over an accelerator
                        description="example plugin: blocked online-softmax attention, vector-norm RMSNorm, "
                                    "addcmul residual, on the host CPU",
                        versions=lambda: {"wanport_toy": "0.1.0"})]


def _impl(kind, name, target, constraints, description, *args):
    return OpImpl(kind, name, NAME, lazy(target, *args, package=__package__), constraints,
                  priority=PRIORITY[(kind, name)], tolerance=_HALF_TOL, description=description)


@hookimpl
def wanport_op_impls():
    cpu = dict(device_types=frozenset({"cpu"}))
    return [
        _impl("attention", "online_softmax", ".attention:make_online_softmax_attention",
              Constraints(dtypes=_FLOATS, lse=True, **cpu),
              "keys in blocks with a running max and sum (the flash-attention recurrence), log-sum-exp",
              # read when the implementation loads: after the session applied env_defaults and the recipe's env:
              AtLoad(lambda: os.environ.get(KEY_BLOCK_ENV, "256"))),
        _impl("rms_norm", "vector_norm", ".norms:rms_norm",
              Constraints(dtypes=_FLOATS, out_dtype=True, **cpu),
              "x * sqrt(C) / sqrt(||x||^2 + C*eps), float32 statistics"),
        _impl("gated_residual", "addcmul", ".norms:gated_residual",
              Constraints(dtypes=_FLOATS, **cpu), "torch.addcmul(x, y, gate) in the promoted dtype"),
    ]
