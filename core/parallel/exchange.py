"""How the overlapped Ulysses path moves its all-to-alls (``parallel.ulysses_exchange``).

- ``collective`` (default): ``torch.distributed.all_to_all_single`` with ``async_op=True``: the
  collective library's kernels move the data. Those kernels run on SMs; while they overlap the
  attention and GEMMs they take SMs from them (on two H200s NCCL's kernels cost the 14B 480p CFG
  step about 0.15 s of compute, 5.6 %: docs/measurements.md).
- ``copy_engine``: a backend may offer an exchange that moves the data with the GPU's copy engines
  instead (the cuda runtime's ``sequence_exchange``: peer-mapped buffers, pulled with device-to-
  device copies on a side stream between two barriers), which leaves the SMs to the compute.

An exchange hands out the send buffers (so a copy engine can read them from the peer without an
extra copy) and starts one all-to-all of a ``[world, ...]`` tensor: the receive tensor and a work
handle whose ``wait()`` makes the current stream wait for the data. Both move values only: the
result is bit-for-bit the same.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..errors import ConfigError

#: the values of ``parallel.ulysses_exchange``
EXCHANGES = ("collective", "copy_engine")


class CollectiveExchange:
    """The all-to-all through torch.distributed (the collective library's kernels)."""

    name = "collective"
    #: ``start`` takes any contiguous ``[world, ...]`` tensor, not only one from ``send_buffer``
    any_send = True

    def send_buffer(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, device=device)

    def start(self, send: torch.Tensor, group) -> Tuple[torch.Tensor, Any]:
        recv = torch.empty_like(send)
        return recv, dist.all_to_all_single(recv, send, group=group, async_op=True)


def make_exchange(kind: str, runtime: Any, group, timeout_s: float = 600.0):
    """The exchange for ``parallel.ulysses_exchange`` on this runtime and rank group: ``collective``,
    or the runtime's ``sequence_exchange(group, timeout_s)`` for ``copy_engine`` (a clear error when
    the backend has none)."""
    if kind not in EXCHANGES:
        raise ConfigError("parallel.ulysses_exchange must be one of %s, not %r" % (", ".join(EXCHANGES), kind))
    if kind == "collective":
        return CollectiveExchange()
    factory: Optional[Any] = getattr(runtime, "sequence_exchange", None)
    why = None if factory is not None else "this backend's runtime has no copy-engine exchange"
    if factory is not None:
        ex, why = factory(group, timeout_s)
        if ex is not None:
            return ex
    raise ConfigError("parallel.ulysses_exchange: copy_engine is not available here (%s); set "
                      "parallel.ulysses_exchange: collective" % why)


__all__ = ["EXCHANGES", "CollectiveExchange", "make_exchange"]
