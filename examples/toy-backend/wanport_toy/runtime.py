"""The toy backend's device runtime: the host CPU, every member ``wanport.registry.DeviceRuntime``
declares (a real backend wraps its vendor's device module here, e.g. ``torch.cuda``)."""

from __future__ import annotations

import time
from typing import Optional, Tuple

import torch


class ToyEvent:
    def __init__(self) -> None:
        self.t: Optional[float] = None

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_ms(self, end: "ToyEvent") -> float:
        if self.t is None or end.t is None:
            raise RuntimeError("elapsed_ms() needs both events recorded")
        return (end.t - self.t) * 1000.0


class ToyRuntime:
    device_type = "cpu"
    peak_memory_kind = "not measured by the toy backend"

    def device(self, index: Optional[int] = None) -> torch.device:
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, index: int) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def event(self) -> ToyEvent:
        return ToyEvent()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def peak_memory_bytes(self) -> Optional[int]:
        return None

    def reset_peak_memory(self) -> None:
        return None

    def memory_info(self) -> Optional[Tuple[int, int]]:
        return None

    def total_memory_bytes(self) -> Optional[int]:
        return None

    def empty_cache(self) -> None:
        return None

    def native_bf16_matmul(self) -> Tuple[bool, str]:
        return False, "the toy backend computes in float32 on the host"

    def describe(self) -> str:
        return "toy backend on the host CPU"
