"""Register the emulated ops (once per era and process) and assemble a fake ``torch_npu`` module."""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from typing import Dict

import torch

from .device import FakeNpu, tensor_npu
from .eras import ERAS, Era
from .kernels import KERNELS

_LIBRARIES: Dict[str, torch.library.Library] = {}
_MISSING = object()


def _kernel(era: Era, op: str):
    schema = getattr(getattr(torch.ops, era.namespace), op).default._schema
    names = [arg.name for arg in schema.arguments]
    defaults = {arg.name: arg.default_value for arg in schema.arguments if arg.has_default_value()}
    body = KERNELS[op]

    def kernel(*args, **kwargs):
        # the dispatcher has bound and type-checked the call; it passes arguments equal to their
        # default as absent, so the defaults are filled in here from the same schema
        bound = dict(defaults)
        bound.update(zip(names, args))
        bound.update(kwargs)
        return body(era, bound, names[0])

    kernel.__name__ = "%s_%s" % (era.key, op)
    return kernel


def ops_namespace(era_key: str):
    """``torch.ops.<namespace>`` of one era, its ops registered under the era's exact schemas."""
    era = ERAS[era_key]
    if era.namespace not in _LIBRARIES:
        lib = torch.library.Library(era.namespace, "DEF")
        for schema in era.registered().values():
            lib.define(schema)
        for op in era.schemas:
            lib.impl(op, _kernel(era, op), "CPU")
        _LIBRARIES[era.namespace] = lib
    return getattr(torch.ops, era.namespace)


def build_module(era_key: str, **device_kwargs) -> types.ModuleType:
    """A fresh module object that looks like an imported torch_npu of the given era."""
    era = ERAS[era_key]
    ops = ops_namespace(era_key)
    mod = types.ModuleType("torch_npu", "CPU emulation of torch_npu %s (tests only)" % era.torch_npu)
    mod.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    mod.__version__ = era.torch_npu
    for op in era.schemas:
        setattr(mod, op, getattr(ops, op))  # as torch_npu does: torch_npu.<op> = torch.ops.npu.<op>
    mod.npu = FakeNpu(**device_kwargs)
    mod.emulated_era = era  # for tests; the backend never reads it
    return mod


@contextlib.contextmanager
def installed(era_key: str = "v7", **device_kwargs):
    """Make ``import torch_npu`` return the emulation, ``torch.npu`` its device module and
    ``Tensor.npu()`` map to the host, restoring all three afterwards."""
    mod = build_module(era_key, **device_kwargs)
    saved = (sys.modules.get("torch_npu", _MISSING), getattr(torch, "npu", _MISSING),
             getattr(torch.Tensor, "npu", _MISSING))
    sys.modules["torch_npu"] = mod
    torch.npu = mod.npu
    torch.Tensor.npu = tensor_npu
    try:
        yield mod
    finally:
        if saved[0] is _MISSING:
            sys.modules.pop("torch_npu", None)
        else:
            sys.modules["torch_npu"] = saved[0]
        for owner, name, old in ((torch, "npu", saved[1]), (torch.Tensor, "npu", saved[2])):
            if old is _MISSING:
                if hasattr(owner, name):
                    delattr(owner, name)
            else:
                setattr(owner, name, old)
