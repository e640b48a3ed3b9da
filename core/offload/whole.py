"""A whole module in host memory, with a device copy only while it is in use.

``offload.dit: model`` (each DiT's device copy exists only during the denoising loop) and
``offload.vae: host_until_decode`` (the VAE's only during the decode, and the encode of an
image-conditioned task). The host tensors never change, so leaving the device drops the device
copy without copying anything back.
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, List, Optional

import torch

from .tensors import Slot, nbytes, slots
from .transfers import Transfers


class HostResident:
    def __init__(self, module: torch.nn.Module, transfers: Transfers, label: str) -> None:
        self.module = module
        self.transfers = transfers
        self.label = label
        self.slots: List[Slot] = slots(module)
        self.host = transfers.to_host_all([s.get() for s in self.slots])
        for s, t in zip(self.slots, self.host):
            s.set(t)
        self.bytes = nbytes(self.host)
        self.on_device = False
        #: (what, seconds) of every move, for the report
        self.moves: List[Dict[str, object]] = []

    def to_device(self) -> None:
        if self.on_device:
            return
        start = time.perf_counter()
        tensors = self.transfers.ready(self.transfers.copy_in(self.host, self.label))
        for s, t in zip(self.slots, tensors):
            s.set(t)
        self.on_device = True
        self.moves.append({"to": "device", "seconds": round(time.perf_counter() - start, 4)})

    def to_host(self) -> None:
        """Drop the device copy (the host tensors are the weights)."""
        if not self.on_device:
            return
        for s, t in zip(self.slots, self.host):
            s.set(t)
        self.on_device = False
        self.moves.append({"to": "host", "seconds": 0.0})

    @contextlib.contextmanager
    def in_use(self):
        """The module on the device for the block, back in host memory after (also on error)."""
        self.to_device()
        try:
            yield self.module
        finally:
            self.to_host()

    def describe(self) -> Dict[str, object]:
        return {"mode": "model", "host_bytes": self.bytes, "asynchronous": self.transfers.asynchronous}


def keep_on_host(module: torch.nn.Module, transfers: Transfers, label: str) -> HostResident:
    """Put ``module`` in host memory; its :class:`HostResident` is kept on it (``module.offload``)."""
    holder = HostResident(module, transfers, label)
    module.__dict__["offload"] = holder
    return holder


def offload_of(module) -> Optional[object]:
    """The module's :class:`HostResident` or block streamer, or None."""
    return getattr(module, "__dict__", {}).get("offload") if module is not None else None


__all__ = ["HostResident", "keep_on_host", "offload_of"]
