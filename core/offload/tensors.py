"""Every tensor a module holds, read and swapped in place.

A module's state is its parameters and buffers (persistent or not) of any dtype: floating
weights, integer or float8 quantized weights, their scale tensors. Swapping goes through the
owning module's own slot (``Parameter.data`` for a parameter, ``_buffers[name]`` for a buffer), so
the module object, its hooks and anything bound to it stay the same; only where each tensor's
storage lives changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List

import torch


@dataclass(frozen=True)
class Slot:
    owner: torch.nn.Module
    name: str
    parameter: bool

    def get(self) -> torch.Tensor:
        if self.parameter:
            return self.owner._parameters[self.name].data
        return self.owner._buffers[self.name]

    def set(self, tensor: torch.Tensor) -> None:
        if self.parameter:
            self.owner._parameters[self.name].data = tensor
        else:
            self.owner._buffers[self.name] = tensor


def slots(module: torch.nn.Module, skip: Callable[[str], bool] = lambda name: False) -> List[Slot]:
    """Every parameter and buffer slot under ``module`` (each storage once), except those whose
    qualified name ``skip`` accepts."""
    out: List[Slot] = []
    seen = set()
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for name, p in owner._parameters.items():
            if p is None or id(p) in seen or skip(_join(prefix, name)):
                continue
            seen.add(id(p))
            out.append(Slot(owner, name, True))
        for name, b in owner._buffers.items():
            if b is None or id(b) in seen or skip(_join(prefix, name)):
                continue
            seen.add(id(b))
            out.append(Slot(owner, name, False))
    return out


def _join(prefix: str, name: str) -> str:
    return prefix + "." + name if prefix else name


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


__all__ = ["Slot", "slots", "nbytes"]
