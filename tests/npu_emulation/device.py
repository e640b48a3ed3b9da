"""The emulated ``torch.npu`` module: the npu device is the host CPU.

Records every call (``log``) and the environment at device initialisation (``env_at_init``: the
real torch_npu reads PYTORCH_NPU_ALLOC_CONF, TASK_QUEUE_ENABLE, CPU_AFFINITY_CONF when the device
is first initialised), so tests can check what a backend did and in which order.
"""

from __future__ import annotations

import os
import platform
import resource
import time
import types
from typing import Dict, List, Optional, Tuple

import torch

WATCHED_ENV = ("PYTORCH_NPU_ALLOC_CONF", "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "TOKENIZERS_PARALLELISM",
               "ASCEND_RT_VISIBLE_DEVICES")


class _Config:
    """``torch.npu.config``: a write-only option setter, as in torch_npu (``_npuConfig.__setattr__``)."""

    def __init__(self, log: List) -> None:
        object.__setattr__(self, "_log", log)

    def __setattr__(self, name, value) -> None:
        self._log.append(("config.%s" % name, (value,), {}))


class Event:
    """``torch.npu.Event``: host clock; elapsed_time in milliseconds, like the real one."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.enable_timing = enable_timing
        self._t: Optional[float] = None

    def record(self, stream=None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        return None

    def elapsed_time(self, end: "Event") -> float:
        if not self.enable_timing:
            raise RuntimeError("Events were not created with enable_timing=True")
        if self._t is None or end._t is None:
            raise RuntimeError("both events must be recorded before elapsed_time")
        return (end._t - self._t) * 1000.0


class Stream:
    """``torch.npu.Stream``: the emulated device is the host, so work is ordered already; records
    the waits it is asked for."""

    def __init__(self, log: List, device=None, priority: int = 0) -> None:
        self._log = log

    def wait_event(self, event) -> None:
        self._log.append(("Stream.wait_event", (event,), {}))

    def synchronize(self) -> None:
        return None


class _StreamContext:
    def __init__(self, npu: "FakeNpu", stream: Stream) -> None:
        self._npu, self._stream, self._prev = npu, stream, None

    def __enter__(self):
        self._prev, self._npu._stream = self._npu._stream, self._stream
        return self._stream

    def __exit__(self, *exc) -> bool:
        self._npu._stream = self._prev
        return False


def _rss() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) * (1 if platform.system() == "Darwin" else 1024)


class FakeNpu(types.ModuleType):
    """What the backend may call on ``torch.npu``."""

    def __init__(self, *, available: bool = True, device_count: int = 1, device_name: str = "Ascend910B3",
                 cann: str = "8.1.RC1 (emulated)") -> None:
        super().__init__("torch_npu.npu")
        self.log: List[Tuple[str, tuple, dict]] = []
        self.env_at_init: Optional[Dict[str, Optional[str]]] = None
        self._available = available
        self._count = device_count
        self._current = 0
        self._name = device_name
        self._cann = cann
        self.config = _Config(self.log)
        self.Event = Event
        self._default_stream = Stream(self.log)
        self._stream = self._default_stream

    # -- streams (offloading)
    def Stream(self, device=None, priority: int = 0) -> Stream:
        self._record("Stream")
        return Stream(self.log, device, priority)

    def stream(self, stream: Stream) -> _StreamContext:
        return _StreamContext(self, stream)

    def current_stream(self, device=None) -> Stream:
        return self._stream

    def set_per_process_memory_fraction(self, fraction: float, device=None) -> None:
        self._record("set_per_process_memory_fraction", fraction)

    def _record(self, name, *args, **kwargs) -> None:
        self.log.append((name, args, kwargs))

    def _lazy_init(self) -> None:
        if self.env_at_init is None:
            self.env_at_init = {k: os.environ.get(k) for k in WATCHED_ENV}

    def calls(self, name: str) -> List[Tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.log if n == name]

    # -- device management
    def is_available(self) -> bool:
        self._record("is_available")
        return self._available

    def is_initialized(self) -> bool:
        return self.env_at_init is not None

    def device_count(self) -> int:
        return self._count if self._available else 0

    def current_device(self) -> int:
        self._lazy_init()
        return self._current

    def set_device(self, device) -> None:
        self._record("set_device", device)
        idx = device.index if isinstance(device, torch.device) else int(str(device).split(":")[-1])
        if not 0 <= idx < self.device_count():
            raise RuntimeError("Invalid device id %d" % idx)
        self._lazy_init()
        self._current = idx

    def get_device_name(self, device=None) -> str:
        return "%s (CPU emulation)" % self._name

    def synchronize(self, device=None) -> None:
        self._record("synchronize")

    def set_compile_mode(self, jit_compile: bool = False) -> None:
        self._record("set_compile_mode", jit_compile=jit_compile)

    def get_cann_version(self, module: str = "CANN") -> str:
        return self._cann

    # -- random
    def manual_seed(self, seed: int) -> None:
        self._record("manual_seed", seed)
        torch.manual_seed(seed)  # the emulated device's generator is the host's

    def manual_seed_all(self, seed: int) -> None:
        self._record("manual_seed_all", seed)
        torch.manual_seed(seed)

    # -- memory (host figures)
    def max_memory_allocated(self, device=None) -> int:
        return _rss()

    def memory_allocated(self, device=None) -> int:
        return _rss()

    def reset_peak_memory_stats(self, device=None) -> None:
        self._record("reset_peak_memory_stats")

    def mem_get_info(self, device=None) -> Tuple[int, int]:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, int(info["MemTotal"].split()[0]) * 1024

    def empty_cache(self) -> None:
        self._record("empty_cache")


def tensor_npu(self, device=None, non_blocking: bool = False, **kwargs):
    """``Tensor.npu()`` of the emulation: the npu device is the host, so the tensor stays put."""
    return self
