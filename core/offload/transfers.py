"""Host<->device copies through the backend runtime (``registry/backend.py: DeviceRuntime``).

A runtime that offers a side stream (``copy_stream``, ``stream_context``, ``stream_event``,
``wait_event``, ``host_wait``, ``mark_used``) gets non-blocking copies from page-locked host
memory on that stream, ordered against the compute stream by events; one that does not (the host
runtime of the reference backend) gets synchronous copies with the same schedule. Every copy makes
a new tensor (never a view of the host one), so what runs on the device is always the copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch

from ..errors import BackendError

_STREAM_METHODS = ("copy_stream", "stream_context", "stream_event", "wait_event", "host_wait", "mark_used")


class OffloadError(BackendError):
    """A host<->device copy of offloaded weights failed (the run stops with the reason)."""


@dataclass
class Pending:
    """Copies issued to the device: the new tensors and the event that says they have landed."""

    tensors: List[torch.Tensor]
    event: Any = None
    label: str = ""


class Transfers:
    def __init__(self, runtime, device: torch.device) -> None:
        self.runtime = runtime
        self.device = torch.device(device)
        self.on_host = self.device == torch.device("cpu")
        streams = all(callable(getattr(runtime, m, None)) for m in _STREAM_METHODS)
        self._stream = runtime.copy_stream() if streams else None
        #: why page-locking failed (None: it did not, or was not tried)
        self.pin_failed: Optional[str] = None

    @property
    def asynchronous(self) -> bool:
        """True when copies run on a side stream (overlapping compute)."""
        return self._stream is not None

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of ``tensor`` (page-locked where the runtime can), or the tensor itself
        when it is on the host already and need not be page-locked."""
        host = tensor if tensor.device == torch.device("cpu") else tensor.to("cpu")
        pin = getattr(self.runtime, "pin_memory", None)
        if pin is not None and not self.on_host:
            try:
                host = pin(host)
            except Exception as exc:  # page-locking refused (no driver memory): ordinary copies
                self.pin_failed = "%s: %s" % (type(exc).__name__, exc)
        return host

    def to_host_all(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Host copies of ``tensors``, packed into page-locked buffers when the runtime offers
        ``pinned_buffer(nbytes)``: a caching host allocator rounds every page-locked allocation up
        to a power of two (a 141 MB FFN weight would take 256 MB), so the tensors share buffers of
        :data:`PINNED_CHUNK` bytes (or one buffer the total's size, rounded up to a power of two,
        when that is smaller), each tensor at a 512-byte boundary. Without the method: one
        page-locked copy per tensor (``pin_memory``), or plain host copies."""
        alloc = getattr(self.runtime, "pinned_buffer", None)
        if alloc is None:
            return [self.to_host(t) for t in tensors]
        sizes = [t.numel() * t.element_size() for t in tensors]
        total = sum(_aligned(n) for n in sizes)
        chunk_size = min(PINNED_CHUNK, 1 << max(0, (total - 1).bit_length()))
        out: List[torch.Tensor] = []
        chunk, used = None, 0
        try:
            for t, n in zip(tensors, sizes):
                if n == 0 or not t.is_contiguous():
                    out.append(self.to_host(t))
                    continue
                if n > chunk_size:
                    view = alloc(n)
                else:
                    if chunk is None or used + n > chunk_size:
                        chunk, used = alloc(chunk_size), 0
                    view = chunk[used:used + n]
                    used += _aligned(n)
                dst = view.view(t.dtype).view(t.shape)
                dst.copy_(t)
                out.append(dst)
        except Exception as exc:  # page-locking refused (no driver memory): ordinary host copies
            self.pin_failed = "%s: %s" % (type(exc).__name__, exc)
            return [t if t.device == torch.device("cpu") else t.to("cpu") for t in tensors]
        return out

    def copy_in(self, tensors: Sequence[torch.Tensor], label: str = "") -> Pending:
        """Issue copies of host ``tensors`` to the device (on the side stream when there is one);
        raises :class:`OffloadError` naming ``label`` when the runtime refuses."""
        try:
            if self._stream is None:
                return Pending([_fresh_copy(t, self.device) for t in tensors], None, label)
            rt = self.runtime
            with rt.stream_context(self._stream):
                out = [t.to(self.device, non_blocking=True) if t.device != self.device else _fresh_copy(t, self.device)
                       for t in tensors]
                event = rt.stream_event(self._stream)
            return Pending(out, event, label)
        except OffloadError:
            raise
        except Exception as exc:
            raise OffloadError("copying %s to the device failed: %s: %s" % (label or "weights", type(exc).__name__,
                                                                              exc)) from exc

    def ready(self, pending: Pending) -> List[torch.Tensor]:
        """The copies, usable on the compute stream: it waits for them (the host does not), and
        the allocator keeps their memory until the compute stream's work on them is done."""
        if pending.event is not None:
            try:
                self.runtime.wait_event(pending.event)
                for t in pending.tensors:
                    self.runtime.mark_used(t)
            except Exception as exc:
                raise OffloadError("waiting for %s on the device failed: %s: %s"
                                   % (pending.label or "weights", type(exc).__name__, exc)) from exc
        return pending.tensors

    def compute_event(self) -> Any:
        """An event recorded now on the compute stream (None without streams)."""
        if self._stream is None:
            return None
        return self.runtime.stream_event(None)

    def host_wait(self, event: Any, label: str = "") -> None:
        """The host waits for ``event`` (a no-op for None); a device error surfaces here."""
        if event is None:
            return
        try:
            self.runtime.host_wait(event)
        except Exception as exc:
            raise OffloadError("waiting for %s failed: %s: %s" % (label or "the device", type(exc).__name__,
                                                                   exc)) from exc

    def synchronize(self) -> None:
        self.runtime.synchronize()


#: page-locked host memory is allocated in buffers of this size (a power of two: no rounding waste)
PINNED_CHUNK = 1 << 30


def _aligned(n: int) -> int:
    return (n + 511) // 512 * 512


#: byte alignment kept by a synchronous copy (a cache line / the widest vector register)
ALIGN = 64


def _fresh_copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A new tensor on ``device`` equal to ``t``. A contiguous one starts at the same byte offset
    modulo :data:`ALIGN` as ``t``: some host kernels (a matrix-vector product, for one) sum in an
    order that depends on the operand's alignment, and the copy must compute exactly as the
    original does (offloading never changes a result)."""
    n = t.numel() * t.element_size()
    if not t.is_contiguous() or n == 0 or t.dtype == torch.bool:
        out = torch.empty_like(t, device=device)
        out.copy_(t)
        return out
    buf = torch.empty(n + ALIGN, dtype=torch.uint8, device=device)
    off = (t.data_ptr() - buf.data_ptr()) % ALIGN
    out = buf[off:off + n].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


__all__ = ["OffloadError", "Pending", "Transfers"]
