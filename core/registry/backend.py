"""What a backend declares: identity, availability, environment and device runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore


class TimingEvent(Protocol):
    def record(self) -> None: ...

    def elapsed_ms(self, end: "TimingEvent") -> float:
        """Milliseconds from this event to ``end`` (both recorded; synchronizes as needed)."""


class DeviceRuntime(Protocol):
    """Device utilities the core needs; the only way the core touches a device runtime.

    Every member below without "Optional" in its description is required (``RUNTIME_MEMBERS``;
    ``wanport.testing.check_runtime`` checks a runtime against it); the optional ones
    (``OPTIONAL_RUNTIME_MEMBERS``) are read through a fallback when a runtime lacks them.
    """

    device_type: str
    #: what ``peak_memory_bytes`` measures, in words, for reports (e.g. "CUDA peak allocated
    #: (torch caching allocator)", "host peak RSS (whole process, not resettable)")
    peak_memory_kind: str

    def device(self, index: Optional[int] = None) -> torch.device:
        """The torch.device to compute on (``index`` None: the current one)."""

    def device_count(self) -> int: ...

    def set_device(self, index: int) -> None: ...

    def synchronize(self) -> None: ...

    def event(self) -> TimingEvent: ...

    def manual_seed(self, seed: int) -> None:
        """Seed the device's default generator(s)."""

    def peak_memory_bytes(self) -> Optional[int]:
        """Peak memory of this process on the device since the last reset (None if unknown)."""

    def reset_peak_memory(self) -> None: ...

    def memory_info(self) -> Optional[Tuple[int, int]]:
        """(free, total) bytes on the current device, or None if unknown."""

    def total_memory_bytes(self) -> Optional[int]:
        """The current device's memory in bytes (the host's RAM for a host runtime), or None if
        unknown. Optional: ``wanport plan`` falls back to ``memory_info()`` without it."""

    def empty_cache(self) -> None: ...

    def describe(self) -> str:
        """Human-readable device name (e.g. the GPU model) for reports."""

    # Optional: ``native_bf16_matmul() -> (bool, why)``, whether bf16 matmuls run natively on the
    # device (``precision: auto`` keeps ``official`` when they do, else runs fp32). A runtime
    # without it is an accelerator's and counts as native; read through :func:`native_bf16`.

    # Optional, for offloading (``offload:``; read through ``wanport.offload.transfers.Transfers``,
    # which copies synchronously where a runtime has none of them, as the host runtime does):
    #   pin_memory(tensor) -> tensor        a page-locked host copy (non-blocking copies need it)
    #   pinned_buffer(nbytes) -> tensor     an empty page-locked uint8 host buffer (tensors are packed into
    #                                       such buffers: a host caching allocator rounds each one up to 2^k)
    #   copy_stream() -> stream             a new side stream for host-to-device copies
    #   stream_context(stream)              context manager: work issued inside runs on ``stream``
    #   stream_event(stream=None) -> event  an event recorded now on ``stream`` (None: the current one)
    #   wait_event(event)                   the current stream waits for ``event`` (the host does not)
    #   host_wait(event)                    the host waits for ``event``
    #   mark_used(tensor)                   ``tensor`` (made on another stream) is used by the current
    #                                       stream: the allocator keeps its memory until that work is done
    #   set_memory_fraction(fraction)       cap this process's device allocations (benchmarks)


#: the members every runtime has (attributes, then methods)
RUNTIME_MEMBERS = ("device_type", "peak_memory_kind", "device", "device_count", "set_device", "synchronize", "event",
                   "manual_seed", "peak_memory_bytes", "reset_peak_memory", "memory_info", "empty_cache", "describe")
#: the members a runtime may leave out: ``total_memory_bytes`` (``wanport plan`` falls back to
#: ``memory_info()``), ``native_bf16_matmul`` (absent: an accelerator, bf16 taken as native)
OPTIONAL_RUNTIME_MEMBERS = ("total_memory_bytes", "native_bf16_matmul")


def native_bf16(runtime: DeviceRuntime, backend: str = "") -> Tuple[bool, str]:
    """What ``runtime`` says about bf16 matmuls, ``(fast, why)``; a runtime that does not say is an
    accelerator's, taken as native."""
    probe = getattr(runtime, "native_bf16_matmul", None)
    if probe is None:
        return True, "backend %s runs on an accelerator" % (backend or "?")
    try:
        fast, why = probe()
    except Exception as exc:  # a capability probe must never take the run down
        return False, "bf16 probe raised %s: %s" % (type(exc).__name__, exc)
    return bool(fast), str(why)


def _unavailable_reason() -> Tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class BackendSpec:
    """A backend as a plugin declares it through the ``wanport_backends`` hook.

    Nothing here may import a vendor package at construction: ``is_available`` uses
    ``importlib.util.find_spec`` or equivalent and never raises; ``start`` is called once,
    after ``env_defaults`` (and recipe overrides) are in ``os.environ``, and returns the
    device runtime; it is the first place a vendor package may be imported.
    """

    name: str
    device_type: str
    dist_backend: str  # torch.distributed process-group backend: nccl / hccl / gloo
    start: Callable[[], DeviceRuntime]
    is_available: Callable[[], Tuple[bool, str]] = _unavailable_reason
    env_defaults: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0  # `backend: auto` takes the available backend with the highest priority
    accelerator: bool = True  # False only for backends that run on the host CPU
    description: str = ""
    versions: Callable[[], Dict[str, str]] = dict  # extra version strings for reports

    def availability(self) -> Tuple[bool, str]:
        """``is_available()`` made safe: an exception counts as unavailable, with its text."""
        try:
            ok, why = self.is_available()
        except Exception as exc:  # a plugin's check must never take the run down
            return False, "availability check raised %s: %s" % (type(exc).__name__, exc)
        return bool(ok), str(why or "")
