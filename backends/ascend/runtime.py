"""The Ascend device runtime: ``torch.npu`` behind wanport's DeviceRuntime interface.

``start_runtime`` is the backend's ``start()``: the first place torch_npu is imported (the core has
put the backend's environment defaults, and the recipe's ``env:``, into ``os.environ`` just
before). It sets the two process-wide switches the field uses for inference — binary kernels
(``set_compile_mode(jit_compile=False)``) and ND tensor formats
(``torch.npu.config.allow_internal_format = False``) — and makes the device current. No
``transfer_to_npu``: nothing in torch.cuda is patched.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch

from .schema import NpuOps, detect, import_torch_npu


class AscendStartError(RuntimeError):
    """The NPU stack imported but cannot be used (no device, broken driver)."""


class NpuEvent:
    def __init__(self, npu) -> None:
        self._event = npu.Event(enable_timing=True)

    def record(self) -> None:
        self._event.record()

    def elapsed_ms(self, end: "NpuEvent") -> float:
        end._event.synchronize()
        return float(self._event.elapsed_time(end._event))


class AscendRuntime:
    device_type = "npu"
    peak_memory_kind = "NPU peak allocated (torch_npu caching allocator)"

    def __init__(self, torch_npu, npu, ops: NpuOps, settings: Dict[str, str]) -> None:
        self._torch_npu = torch_npu
        self._npu = npu
        self.ops = ops
        self.settings = dict(settings)
        self._devices: Dict[int, torch.device] = {}

    def device(self, index: Optional[int] = None) -> torch.device:
        idx = int(self._npu.current_device() if index is None else index)
        dev = self._devices.get(idx)
        if dev is None:
            # the device torch_npu itself places tensors on (PrivateUse1, renamed "npu"), asked
            # of torch_npu's Tensor.npu() rather than spelled here; an emulated torch_npu in the
            # tests maps it to the host
            dev = torch.empty(0).npu(idx).device
            self._devices[idx] = dev
        return dev

    def device_count(self) -> int:
        return int(self._npu.device_count())

    def set_device(self, index: int) -> None:
        self._npu.set_device(index)

    def synchronize(self) -> None:
        self._npu.synchronize()

    def event(self) -> NpuEvent:
        return NpuEvent(self._npu)

    def manual_seed(self, seed: int) -> None:
        self._npu.manual_seed_all(seed)

    def peak_memory_bytes(self) -> Optional[int]:
        return int(self._npu.max_memory_allocated())

    def reset_peak_memory(self) -> None:
        self._npu.reset_peak_memory_stats()

    def memory_info(self) -> Optional[Tuple[int, int]]:
        try:
            free, total = self._npu.mem_get_info()
        except Exception:
            return None
        return int(free), int(total)

    def total_memory_bytes(self) -> Optional[int]:
        info = self.memory_info()
        if info is not None:
            return info[1]
        try:
            return int(self._npu.get_device_properties(int(self._npu.current_device())).total_memory)
        except Exception:
            return None

    def empty_cache(self) -> None:
        self._npu.empty_cache()

    # -- offloading (wanport.offload): side stream, events, page-locked memory (torch.npu's
    # equivalents of torch.cuda.Stream / Event / record_stream)
    def pin_memory(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            return tensor if tensor.is_pinned() else tensor.pin_memory()
        except RuntimeError:  # a build that cannot page-lock host memory: ordinary copies
            return tensor

    def pinned_buffer(self, nbytes: int) -> torch.Tensor:
        try:
            return torch.empty(int(nbytes), dtype=torch.uint8, pin_memory=True)
        except RuntimeError:  # no page-locked memory (the CPU emulation): an ordinary host buffer
            return torch.empty(int(nbytes), dtype=torch.uint8)

    def copy_stream(self):
        return self._npu.Stream()

    def stream_context(self, stream):
        return self._npu.stream(stream)

    def stream_event(self, stream=None):
        event = self._npu.Event()
        event.record(stream)
        return event

    def wait_event(self, event) -> None:
        self._npu.current_stream().wait_event(event)

    def host_wait(self, event) -> None:
        event.synchronize()

    def mark_used(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu":  # the CPU emulation's device is the host: nothing to record
            tensor.record_stream(self._npu.current_stream())

    def set_memory_fraction(self, fraction: float) -> None:
        self._npu.set_per_process_memory_fraction(float(fraction))

    def describe(self) -> str:
        idx = int(self._npu.current_device())
        try:
            name = str(self._npu.get_device_name(idx))
        except Exception as exc:
            name = "NPU (name unavailable: %s)" % exc
        settings = ", ".join("%s=%s" % kv for kv in sorted(self.settings.items()))
        return "%s (npu:%d of %d; %s; %s)" % (name, idx, self.device_count(), self.ops.describe(), settings)


def cann_version(torch_npu) -> str:
    try:
        return str(torch_npu.npu.get_cann_version())
    except Exception:
        return "unknown"


def _index_from_env() -> Optional[int]:
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def start_runtime() -> AscendRuntime:
    torch_npu = import_torch_npu()  # TorchNpuImportError names the CANN set_env.sh to source
    npu = getattr(torch, "npu", None) or getattr(torch_npu, "npu", None)
    if npu is None:
        raise AscendStartError("torch_npu %s imported but registered no torch.npu module"
                               % getattr(torch_npu, "__version__", "?"))
    try:
        available = bool(npu.is_available())
    except Exception as exc:
        raise AscendStartError("torch.npu.is_available() failed: %s: %s (driver or CANN problem; try `npu-smi info`)"
                               % (type(exc).__name__, exc)) from None
    if not available:
        raise AscendStartError(
            "torch_npu %s sees no NPU (torch.npu.is_available() is False; ASCEND_RT_VISIBLE_DEVICES=%r). "
            "Check `npu-smi info` and the driver." % (getattr(torch_npu, "__version__", "?"),
                                                      os.environ.get("ASCEND_RT_VISIBLE_DEVICES")))

    settings: Dict[str, str] = {}
    set_compile_mode = getattr(npu, "set_compile_mode", None)
    if set_compile_mode is not None:
        set_compile_mode(jit_compile=False)  # prebuilt binary kernels, no online compilation
        settings["jit_compile"] = "False"
    config = getattr(npu, "config", None)
    if config is not None:
        config.allow_internal_format = False  # keep ND layouts (internal formats slowed Wan's VAE ~1.9x)
        settings["allow_internal_format"] = "False"

    index = _index_from_env()
    if index is None:
        index = int(npu.current_device())
    try:
        npu.set_device(index)
    except Exception as exc:
        raise AscendStartError("torch.npu.set_device(%d) failed: %s: %s" % (index, type(exc).__name__, exc)) from None

    ops = detect(torch_npu)
    return AscendRuntime(torch_npu, npu, ops, settings)
