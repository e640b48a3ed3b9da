"""``wanport plan RECIPE [overrides] [--device-memory 24GiB] [--devices N] [--json PATH]``: the memory
plan of a recipe as written, per stage and rank, host memory, and the layouts that fit."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional

from ..errors import ConfigError
from . import constants as K
from .arch import for_plan
from .check import device_is_host, device_memory_of, find_layouts, format_suggestions, gib
from .memory import MemoryPlan, predict

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 10 ** 3, "kib": 2 ** 10, "m": 2 ** 20, "mb": 10 ** 6, "mib": 2 ** 20,
          "g": 2 ** 30, "gb": 10 ** 9, "gib": 2 ** 30, "t": 2 ** 40, "tb": 10 ** 12, "tib": 2 ** 40}


def parse_bytes(text: str) -> int:
    """``24GiB`` (2^30), ``80GB`` (10^9), ``24G`` (GiB), ``512MiB``, or plain bytes."""
    m = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError("--device-memory %r: expected a size such as 24GiB, 80GB or 48G" % text)
    return int(float(m.group(1)) * _UNITS[unit])


def runtime_memory(cfg) -> Dict[str, Any]:
    """The recipe's backend started for one question: its device memory (None if unknown)."""
    from ..pipeline.session import choose_backend, start_session

    registry, spec = choose_backend(cfg.backend)
    session = start_session(registry, spec, cfg.env)
    rt = session.runtime
    return {"bytes": device_memory_of(rt), "is_host": device_is_host(rt), "backend": spec.name,
            "describe": _safe(rt.describe)}


def _safe(fn) -> str:
    try:
        return str(fn())
    except Exception as exc:  # a description is decoration
        return "(%s)" % exc


def format_plan(mem: MemoryPlan) -> str:
    t = mem.tokens
    lines = ["%s %dx%d, %d frames: %d tokens (grid %s), %d per rank; precision %s; architecture from the %s"
             % (mem.model, mem.size[0], mem.size[1], mem.frames, t.total, "x".join(map(str, t.grid)), t.local,
                mem.policy, mem.arch_source),
             "layout: %s (%d process%s)%s" % (mem.layout.describe(), mem.layout.world,
                                              "es" if mem.layout.world > 1 else "",
                                              "; " + mem.park_decision if mem.park_decision else ""),
             "weights: " + ", ".join("%s %s" % (name, gib(sum(by.values()))) for name, by in mem.weights.items())]
    fc = mem.feature_cache
    if fc:
        lines.append("feature cache (%s): %s per rank while denoising (cache_residuals): %d state(s), residuals "
                     "%d bytes, statistic inputs %d bytes" % (fc["method"], gib(fc["residuals"] + fc["inputs"]),
                                                              fc["states"], fc["residuals"], fc["inputs"]))
    for r in mem.ranks:
        lines.append("")
        lines.append("rank %s   %-12s %11s   resident" % (r.ranks, "stage", "device"))
        for s in r.stages:
            parts = ", ".join("%s %.2f" % (k, v / K.GIB) for k, v in s.device.items() if v)
            lines.append("         %-12s %11s   %s%s" % (s.name, gib(s.peak), parts or "-",
                                                        "  [%s]" % s.note if s.note else ""))
        lines.append("         peak %s (%s); host %s (%s)" % (
            gib(r.peak), r.peak_stage, gib(r.host_peak),
            ", ".join("%s %.2f" % (k, v / K.GIB) for k, v in r.host.items())))
    lines.append("")
    lines.append("predicted peak %s per device; needs %s with %.0f%% allocator slack and %s runtime reserve"
                 % (gib(mem.peak), gib(mem.required), 100 * K.ALLOCATOR_SLACK, gib(K.RUNTIME_RESERVE_BYTES)))
    verdict = {None: "unknown (no device memory: pass --device-memory)", True: "fits", False: "DOES NOT FIT"}[mem.fits]
    lines.append("device memory %s (%s): %s" % (gib(mem.device_memory), mem.device_memory_source, verdict))
    for n in mem.notes:
        lines.append("note: %s" % n)
    return "\n".join(lines)


def _vae_norm_fused(cfg) -> bool:
    """The recipe's backend runs the VAE norm fused (``check.vae_norm_fused``); the backend need
    not be available here (``--device-memory`` plans for another machine): a named backend is
    looked up in the registry, ``auto`` is the backend this machine would pick."""
    from ..pipeline.session import choose_backend
    from ..registry.discovery import discover
    from .check import vae_norm_fused

    registry = discover()
    name = cfg.backend
    if name == "auto":
        try:
            name = choose_backend(name, registry)[1].name
        except Exception:  # nothing usable here: the plan keeps the unfused (larger) VAE figure
            return False
    return vae_norm_fused(registry, name, cfg.ops)


def run_plan(cfg, source: str, device_memory: Optional[str] = None, devices: Optional[int] = None,
             json_path: Optional[str] = None, out=print, resident: bool = False) -> int:
    """The command's body (``cli.py`` parses the arguments and loads the recipe)."""
    from ..config.validate import plan_run

    plan = dataclasses.replace(plan_run(cfg, source), vae_norm_fused=_vae_norm_fused(cfg))
    arch = for_plan(plan)
    size = None
    if plan.image_path is not None and os.path.isfile(plan.image_path):  # the image decides the video size
        from ..pipeline.images import load_image, output_size

        image = load_image(plan.image_path, min_side=plan.preset.spatial_multiple)
        size = output_size(plan.preset, image, plan.width * plan.height)
    is_host = False
    if device_memory is not None:
        mem_bytes, mem_source = parse_bytes(device_memory), "--device-memory"
    else:
        info = runtime_memory(cfg)
        mem_bytes, is_host = info["bytes"], info["is_host"]
        mem_source = "backend %s: %s" % (info["backend"], info["describe"])
    from .memory import Layout

    mem = predict(plan, arch, Layout.from_plan(plan, resident), device_memory=mem_bytes,
                  device_memory_source=mem_source, device_is_host=is_host, size=size)
    out(format_plan(mem))
    n = int(devices) if devices else mem.layout.world
    if n < 1:
        raise ConfigError("--devices must be >= 1, got %d" % n)
    suggestions: List[Any] = []
    count = n
    if mem_bytes is not None and (mem.fits is False or n != mem.layout.world):
        count, suggestions = find_layouts(plan, arch, n, mem_bytes, size=size, device_is_host=is_host,
                                          resident=resident)
        out("")
        out(format_suggestions(count, suggestions, n))
    if json_path:
        from ..io.atomic import write_json_atomic

        data = {"kind": "wanport.plan", "source": source, "plan": mem.to_dict(),
                "constants": {k: getattr(K, k) for k in dir(K) if k.isupper()},
                "suggestions": {"devices": count, "layouts": [s.to_dict() for s in suggestions]}}
        write_json_atomic(json_path, data)
        out("wrote %s" % json_path)
    return 0 if mem.fits is not False else 1


__all__ = ["run_plan", "format_plan", "parse_bytes"]
