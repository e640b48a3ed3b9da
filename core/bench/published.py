"""Published reference numbers (not measured by wanport), each with its source.

Set beside measured results in the benchmark reports, always labelled *published*. Figures as
listed with their sources in ``docs/measurements.md §2``; each row names where it was
published. A number here is the publisher's, under their settings (noted per row), not a
measurement of this code.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

LIGHTX2V = "LightX2V published benchmarks (https://github.com/ModelTC/LightX2V)"
LIGHTX2V_README = "LightX2V README, per-step comparison table (https://github.com/ModelTC/LightX2V)"
WAN22 = "official Wan2.2 README, computational-efficiency tables (https://github.com/Wan-Video/Wan2.2)"
WAN21 = "official Wan2.1 README, computational-efficiency tables (https://github.com/Wan-Video/Wan2.1)"
ASCEND = "Ascend port of Wan2.2-I2V-A14B, Atlas 800I A2 release notes (two releases)"
L4 = "field report of Wan2.1-T2V-1.3B on one NVIDIA L4 (no public link recorded; docs/measurements.md §2)"


def _row(model: str, size: str, frames: int, steps: int, hardware: str, metric: str, value: float, unit: str,
         setting: str, source: str) -> Dict[str, Any]:
    return {"model": model, "size": size, "frames": frames, "steps": steps, "hardware": hardware,
            "metric": metric, "value": value, "unit": unit, "setting": setting, "source": source,
            "label": "published"}


PUBLISHED: List[Dict[str, Any]] = [
    _row("wan2.1-t2v-14b", "832*480", 81, 50, "1x H100", "total", 278.9, "s", "CFG", LIGHTX2V),
    _row("wan2.1-t2v-14b", "832*480", 81, 50, "1x H100", "peak memory", 43.8, "GB", "CFG", LIGHTX2V),
    _row("wan2.1-t2v-14b", "832*480", 81, 50, "1x H100", "total", 319.0, "s", "CFG, CPU offload", LIGHTX2V),
    _row("wan2.1-t2v-14b", "832*480", 81, 50, "1x H100", "peak memory", 34.9, "GB", "CFG, CPU offload", LIGHTX2V),
    _row("wan2.1-t2v-14b", "832*480", 81, 4, "1x H100", "total", 31.4, "s", "4-step distilled LoRA", LIGHTX2V),
    _row("wan2.1-t2v-14b", "832*480", 81, 4, "1x H100", "total", 25.8, "s", "merged 4-step distilled model",
         LIGHTX2V),
    _row("wan2.1-t2v-14b", "832*480", 81, 4, "1x H100", "total", 22.0, "s", "4-step distilled + FP8", LIGHTX2V),
    _row("wan2.1-t2v-14b", "832*480", 81, 4, "1x H100", "peak memory", 31.0, "GB", "4-step distilled + FP8",
         LIGHTX2V),
    _row("wan2.1-i2v-14b-480p", "832*480", 81, 40, "8x H100", "total", 131.6, "s", "cfg2 x ulysses4", LIGHTX2V),
    _row("wan2.1-i2v-14b-480p", "832*480", 81, 40, "8x H100", "peak memory per card", 44.6, "GB",
         "cfg2 x ulysses4", LIGHTX2V),
    _row("wan2.1-i2v-14b-480p", "832*480", 81, 40, "1x H100", "per step", 5.18, "s", "LightX2V, CFG",
         LIGHTX2V_README),
    _row("wan2.1-i2v-14b-480p", "832*480", 81, 40, "1x H100", "per step", 9.77, "s", "diffusers, CFG",
         LIGHTX2V_README),
    _row("wan2.1-i2v-14b-480p", "832*480", 81, 40, "1x H100", "per step", 8.93, "s", "xDiT, CFG", LIGHTX2V_README),
    _row("wan2.1-i2v-14b-480p", "832*480", 81, 40, "1x H100", "per step", 7.35, "s", "FastVideo, CFG",
         LIGHTX2V_README),
    _row("wan2.1-i2v-14b-480p", "832*480", 81, 40, "8x H100", "per step", 0.75, "s", "LightX2V, CFG",
         LIGHTX2V_README),
    _row("wan2.2-i2v-a14b", "1280*720", 81, 40, "1x H100", "total", 1055.9, "s", "official code", WAN22),
    _row("wan2.2-i2v-a14b", "1280*720", 81, 40, "8x H100", "total", 159.0, "s", "official code", WAN22),
    _row("wan2.2-i2v-a14b", "1280*720", 81, 40, "8x H100", "peak memory per card", 37.0, "GB", "official code",
         WAN22),
    _row("wan2.2-t2v-a14b", "832*480", 81, 40, "8x H100", "total", 51.5, "s", "official code", WAN22),
    _row("wan2.1-t2v-14b", "1280*720", 81, 50, "8x H100", "total", 287.9, "s", "official code", WAN21),
    _row("wan2.2-i2v-a14b", "832*480", 81, 40, "8x Atlas 800I A2", "total", 125.95, "s",
         "ulysses 8, no CFG parallel", ASCEND),
    _row("wan2.2-i2v-a14b", "1280*720", 81, 40, "8x Atlas 800I A2", "total", 430.17, "s",
         "ulysses 8, no CFG parallel", ASCEND),
    _row("wan2.2-i2v-a14b", "832*480", 61, 40, "8x Atlas 800I A2", "total", 102.54, "s",
         "ulysses 8, no CFG parallel (other release)", ASCEND),
    _row("wan2.2-i2v-a14b", "1280*720", 61, 40, "8x Atlas 800I A2", "total", 418.01, "s",
         "ulysses 8, no CFG parallel (other release; frames as published for that release)", ASCEND),
    _row("wan2.1-t2v-1.3b", "832*480", 81, 50, "1x NVIDIA L4", "total", 2670.0, "s", "44.5 min", L4),
    _row("wan2.1-t2v-1.3b", "832*480", 81, 50, "1x NVIDIA L4", "per step", 53.5, "s", "", L4),
    _row("wan2.1-t2v-1.3b", "832*480", 81, 50, "1x NVIDIA L4", "peak memory", 14.6, "GB", "", L4),
]


def published_rows(models: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """The published rows (of ``models`` only, when given)."""
    return [dict(r) for r in PUBLISHED if models is None or r["model"] in models]


def markdown(rows: Sequence[Mapping[str, Any]], title: str = "Published reference numbers") -> str:
    if not rows:
        return ""
    lines = ["**%s** (published by others, not measured here)" % title, "",
             "| model | size x frames | steps | hardware | setting | published value | source |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %s x %d | %d | %s | %s | %s: %g %s (published) | %s |" % (
            r["model"], r["size"], r["frames"], r["steps"], r["hardware"], r["setting"] or "-", r["metric"],
            r["value"], r["unit"], r["source"]))
    return "\n".join(lines)


__all__ = ["PUBLISHED", "published_rows", "markdown"]
