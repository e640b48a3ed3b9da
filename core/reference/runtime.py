"""The host-CPU device runtime of the reference backend."""

from __future__ import annotations

import platform
import time
from typing import Optional, Tuple

import torch


class HostEvent:
    """A timing event on the host clock (CPU work is synchronous)."""

    def __init__(self) -> None:
        self._t: Optional[float] = None

    def record(self) -> None:
        self._t = time.perf_counter()

    def elapsed_ms(self, end: "HostEvent") -> float:
        if self._t is None or end._t is None:
            raise RuntimeError("elapsed_ms() needs both events recorded")
        return (end._t - self._t) * 1000.0


def _max_rss_bytes() -> Optional[int]:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) * (1 if platform.system() == "Darwin" else 1024)


class HostRuntime:
    """Device utilities for the host CPU.

    Peak memory is the process's peak resident set size (it cannot be reset; the report
    says so by naming the measure).
    """

    device_type = "cpu"
    peak_memory_kind = "host peak RSS (whole process, not resettable)"
    _bf16: Optional[Tuple[bool, str]] = None

    def device(self, index: Optional[int] = None) -> torch.device:
        return torch.device(self.device_type)

    def device_count(self) -> int:
        return 1

    def set_device(self, index: int) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def event(self) -> HostEvent:
        return HostEvent()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def peak_memory_bytes(self) -> Optional[int]:
        return _max_rss_bytes()

    def reset_peak_memory(self) -> None:
        return None

    def memory_info(self) -> Optional[Tuple[int, int]]:
        try:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            total = int(info["MemTotal"].split()[0]) * 1024
            free = int(info["MemAvailable"].split()[0]) * 1024
            return free, total
        except (OSError, KeyError, ValueError):
            return None

    def total_memory_bytes(self) -> Optional[int]:
        """The host's RAM: the reference backend's tensors live there."""
        info = self.memory_info()
        return None if info is None else info[1]

    def empty_cache(self) -> None:
        return None

    def native_bf16_matmul(self) -> Tuple[bool, str]:
        """(bf16 matmuls run natively on this CPU, why): decides ``precision: auto``."""
        if self._bf16 is None:
            from .cpu_features import host_bf16_matmul

            self._bf16 = host_bf16_matmul()
        return self._bf16

    def describe(self) -> str:
        return "%s (%s, %d threads)" % (platform.processor() or platform.machine(), platform.system(),
                                        torch.get_num_threads())
