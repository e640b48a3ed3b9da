"""``wanport bench pipeline --cache SPEC``: feature-cached calls beside the exact one, in one pipeline.

The cache is a per-call setting, so the measured exact call and every cached call share the
loaded models (and, under torchrun, the process group). SPEC is ``published`` (one call per
published TeaCache setting of the model, each reusing the step count its published time implies,
through ``cache.schedule`` -- with random weights a threshold's skip pattern means nothing) or
``key=value,...`` of the ``cache:`` section (``reuse=N``: N steps spread evenly, as a schedule).
Settings that come to the same section run once, labelled with all of them. Reported per call:
denoise seconds, the speed-up over the exact call's denoise, forwards computed and reused.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..errors import ConfigError


def parse_specs(specs: Sequence[str], model: str, steps: int) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, cache section) per call, checked for form here (values by the recipe checks).

    One call per distinct section: settings that come to the same schedule (14B at 50 steps:
    TeaCache e@0.2 and e0@0.1 both imply 25 reused steps) are run once, labelled with every
    setting they stand for."""
    from ..cache.published import even_schedule, published_reuse

    out: List[Tuple[str, Dict[str, Any]]] = []
    for spec in specs:
        if spec.strip() == "published":
            rows = published_reuse(model, steps)
            if not rows:
                raise ConfigError("bench pipeline: --cache published: no published TeaCache times for %s; give "
                                  "--cache reuse=N (N of %d steps reused) instead" % (model, steps))
            by_count: Dict[int, List[str]] = {}
            for name, _thr, k, speedup in rows:
                by_count.setdefault(k, []).append("%s published %.2fx" % (name, speedup))
            for k, names in by_count.items():
                out.append(("schedule %d/%d (TeaCache %s)" % (k, steps, ", ".join(names)),
                            {"method": "teacache", "schedule": list(even_schedule(steps, k))}))
            continue
        section: Dict[str, Any] = {}
        for item in spec.split(","):
            if "=" not in item:
                raise ConfigError("bench pipeline: --cache %r: give published or key=value,... (e.g. "
                                  "method=teacache,threshold=0.2 or reuse=25)" % spec)
            key, value = item.split("=", 1)
            section[key.strip()] = yaml.safe_load(value)
        if "reuse" in section:
            n = section.pop("reuse")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError("bench pipeline: --cache reuse=N needs a step count >= 0, got %r" % n)
            section.setdefault("method", "teacache")
            section["schedule"] = list(even_schedule(steps, n))
        out.append((spec, section))
    return merge_duplicates(out)


def merge_duplicates(calls: Sequence[Tuple[str, Dict[str, Any]]]) -> List[Tuple[str, Dict[str, Any]]]:
    """Calls with the same cache section become one, its label every label joined by " = " (in
    the order given)."""
    merged: Dict[str, Tuple[List[str], Dict[str, Any]]] = {}
    for label, section in calls:
        key = json.dumps(section, sort_keys=True, default=str)
        labels, _ = merged.setdefault(key, ([], section))
        if label not in labels:
            labels.append(label)
    return [(" = ".join(labels), section) for labels, section in merged.values()]


def row(label: str, section: Mapping[str, Any], report: Mapping[str, Any], exact_denoise: float) -> Dict[str, Any]:
    c = report.get("cache") or {}
    denoise = report["stages"].get("denoise_s") or 0.0
    steps = report["stages"]["steps_s"]
    return {"label": label, "cache": dict(section), "method": c.get("method"), "threshold": c.get("threshold"),
            "denoise_s": denoise, "speedup": round(exact_denoise / denoise, 3) if denoise else None,
            "forwards": c.get("forwards"), "reused": c.get("reused"), "reused_fraction": c.get("reused_fraction"),
            "computed": (c.get("forwards") or 0) - (c.get("reused") or 0), "steps_s": steps,
            "ranks_agree": c.get("ranks_agree")}


def markdown(section: Optional[Mapping[str, Any]]) -> str:
    if not section:
        return ""
    lines = ["feature cache (lossy; the exact call in the same pipeline is the reference): exact denoise %.3f s, "
             "%d forwards" % (section["exact_denoise_s"], section["exact_forwards"]), ""]
    if section.get("calls_planned") is not None and len(section["runs"]) < section["calls_planned"]:
        lines += ["PARTIAL: %d of %d cached calls finished" % (len(section["runs"]), section["calls_planned"]), ""]
    lines += ["| cache | denoise s | speed-up | forwards reused | fraction reused |", "|---|---|---|---|---|"]
    for r in section["runs"]:
        lines.append("| %s | %.3f | %sx | %s of %s | %s |" % (r["label"], r["denoise_s"], r["speedup"], r["reused"],
                                                           r["forwards"], r["reused_fraction"]))
    return "\n".join(lines)


__all__ = ["parse_specs", "row", "markdown"]
