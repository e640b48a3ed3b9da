"""The run's memory gate: predict the recipe on the runtime's device and refuse it, with the
layouts that fit, when it will not (``memory_check: false`` -- ``wanport run --force`` -- skips it).

Only when the runtime knows its device memory: an unknown size never refuses.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..errors import ResourceError
from ..registry.resolver import REFERENCE
from . import constants as K
from .arch import Architecture, from_checkpoints
from .memory import MemoryPlan, predict
from .suggest import Suggestion, suggest

#: device counts tried, after the recipe's own, when nothing fits there
LARGER_COUNTS = (2, 4, 8)


class PlanError(ResourceError):
    """The memory plan predicts that the recipe does not fit the device; lists layouts that do
    (exit 8, as running out of memory)."""


def vae_norm_fused(registry, backend: str, ops_overrides=None) -> bool:
    """Whether the VAE's norm + SiLU will run as the backend's own ``channel_rms_norm`` (one
    kernel; the plan's smaller VAE work factor): the backend declares an exact implementation
    other than the reference's plain-PyTorch one, and the recipe's ``ops`` do not ask for the
    composed or the reference form."""
    want = str((ops_overrides or {}).get("channel_rms_norm") or "")
    if want == "composed" or want.startswith(REFERENCE + ".") or backend == REFERENCE:
        return False
    return any(i.exact for i in registry.impls_for(backend, "channel_rms_norm"))


def device_memory_of(runtime) -> Optional[int]:
    """The device's memory in bytes from the runtime (``total_memory_bytes``, else the total of
    ``memory_info``), or None when it cannot tell."""
    try:
        fn = getattr(runtime, "total_memory_bytes", None)
        if fn is not None:
            total = fn()
            if total:
                return int(total)
        info = runtime.memory_info()
    except Exception:  # a runtime that cannot answer never blocks a run
        return None
    return int(info[1]) if info else None


def device_is_host(runtime) -> bool:
    """True when the runtime computes on the host, whose RAM is then the device memory."""
    try:
        return torch.device(runtime.device()) == torch.device("cpu")
    except Exception:
        return False


def gib(n: Optional[float]) -> str:
    return "unknown" if n is None else "%.2f GiB" % (n / K.GIB)


def find_layouts(plan, arch: Architecture, devices: int, device_memory: int,
                 size=None, device_is_host: bool = False, resident: bool = False) -> Tuple[int, List[Suggestion]]:
    """(device count, suggestions): the recipe's count first, then larger ones until one fits."""
    counts = [devices] + [n for n in LARGER_COUNTS if n > devices]
    for n in counts:
        found = suggest(plan, arch, n, device_memory, size=size, device_is_host=device_is_host, resident=resident)
        if found:
            return n, found
    return devices, []


def format_suggestions(count: int, found: List[Suggestion], devices: int) -> str:
    if not found:
        return ("no layout of today's options fits on up to %d devices (weight quantization is not planned yet)"
                % max((devices,) + LARGER_COUNTS))
    head = "layouts that fit on %d device%s%s, fastest first:" % (
        count, "s" if count > 1 else "", "" if count == devices else " (none fits on %d)" % devices)
    lines = [head]
    for s in found:
        lines.append("  ~%.2f s/step  peak %s  %-28s %s" % (s.step_s, gib(s.plan.peak), s.layout.describe(),
                                                           " ".join(s.overrides)))
    return "\n".join(lines)


def refusal_message(mem: MemoryPlan, plan, arch: Architecture, size=None) -> str:
    count, found = find_layouts(plan, arch, mem.layout.world, mem.device_memory, size=size,
                                device_is_host=mem.device_is_host, resident=mem.layout.resident)
    rank = max(mem.ranks, key=lambda r: r.peak)
    return ("%s at %dx%d x %d frames is predicted not to fit: peak %s per device (stage %s), %s with the "
            "allocator's slack and the runtime's reserve, device memory %s (%s).\n%s\n"
            "See `wanport plan` for the breakdown; `wanport run --force` (recipe: memory_check: false) runs anyway."
            % (mem.model, mem.size[0], mem.size[1], mem.frames, gib(mem.peak), rank.peak_stage, gib(mem.required),
               gib(mem.device_memory), mem.device_memory_source,
               format_suggestions(count, found, mem.layout.world)))


def check_fits(mem: MemoryPlan, plan, arch: Architecture, size=None) -> None:
    """Raise :class:`PlanError` (with the layouts that fit) when ``mem`` does not fit."""
    if mem.fits is False:
        raise PlanError(refusal_message(mem, plan, arch, size))


def plan_for_runtime(plan, ckpts, runtime, size=None, resident: bool = False) -> MemoryPlan:
    """The recipe's memory plan on the started runtime's device (``resident``: a
    ``wanport.Pipeline`` that keeps its models, else the one-video run)."""
    from .memory import Layout

    arch = from_checkpoints(ckpts, source="checkpoint")
    return predict(plan, arch, Layout.from_plan(plan, resident), device_memory=device_memory_of(runtime),
                   device_memory_source="runtime", device_is_host=device_is_host(runtime), size=size)


def refuse_if_unfit(plan, ckpts, runtime, size=None, enabled: bool = True,
                    resident: bool = False) -> Optional[MemoryPlan]:
    """The run path's hook (``pipeline/common.py: prepare``): the memory plan, raising
    :class:`PlanError` when it says the recipe will not fit. Skipped (None) when ``enabled`` is
    False; never refuses when the runtime cannot tell its device memory."""
    if not enabled:
        return None
    mem = plan_for_runtime(plan, ckpts, runtime, size, resident)
    check_fits(mem, plan, from_checkpoints(ckpts), size)
    return mem


__all__ = ["PlanError", "device_memory_of", "device_is_host", "find_layouts", "check_fits", "refuse_if_unfit",
           "plan_for_runtime", "refusal_message", "format_suggestions"]
