"""``wanport bench pipeline --random-lora RANK``: what a LoRA costs per step, merged and unmerged.

A random LoRA of the given rank is drawn for the preset's real architecture (every Linear of
every block -- self/cross attention, the I2V image projections, the FFN -- and the head: the
layers the published distill LoRAs touch), written in the official-module format beside the
benchmark, and the recipe's pipeline is measured three times in one process: without the LoRA,
with it merged at load (no work per step: the overhead should be noise) and unmerged (a low-rank
side path on every touched Linear: its real cost). Overheads are against the run without LoRA.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

MODES = ("merged", "unmerged")


def synthesise(plan, weights, rank: int, seed: int, directory: str) -> Dict[str, Any]:
    """Write a random rank-``rank`` LoRA for the plan's DiT; {path, bytes, layers, rank}."""
    import torch

    from ..lora.tiny import structure_for, write_lora

    ckpts = weights.inspect(plan)
    structure = structure_for(ckpts.dit.config, plan.policy)
    modules = sorted(m for m in structure.linears if m.startswith("blocks.") or m == "head.head")
    path = os.path.join(directory, "random-lora-r%d.safetensors" % rank)
    write_lora(path, structure, "official", rank=rank, seed=seed, alpha=float(rank), diffs=False,
               dtype=torch.bfloat16, modules=modules, expected=False)
    return {"path": path, "bytes": os.path.getsize(path), "layers": len(modules), "rank": rank,
            "format": "official", "experts": "both" if plan.preset.experts else None}


def lora_override(info: Mapping[str, Any], mode: str) -> str:
    entry = "{path: %s, merge: %s%s}" % (info["path"], "true" if mode == "merged" else "false",
                                         ", expert: both" if info.get("experts") else "")
    return "lora=[%s]" % entry


def overhead(base: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]], info: Mapping[str, Any]) -> Dict[str, Any]:
    """Denoise time and per-step median of each mode beside the run without LoRA."""
    def row(summary):
        return {"denoise_s": summary["stages_s"].get("denoise"), "step_median_s": summary["step_median_s"],
                "steps_s": summary["steps_s"], "compute_s": summary["compute_s"],
                "load_s": summary["stages_s"].get("load"), "peak_memory_gib": summary["peak_memory_gib"],
                "lora": (summary["run_report"].get("lora") or [None])[0]}

    out: Dict[str, Any] = {"rank": info["rank"], "layers": info["layers"], "file_mb": round(info["bytes"] / 2**20, 1),
                           "none": row(base), "modes": {}}
    b = out["none"]
    for mode, summary in runs.items():
        r = row(summary)
        if b["denoise_s"]:
            r["denoise_overhead_pct"] = round(100.0 * (r["denoise_s"] - b["denoise_s"]) / b["denoise_s"], 2)
        if b["step_median_s"]:
            r["step_overhead_pct"] = round(100.0 * (r["step_median_s"] - b["step_median_s"]) / b["step_median_s"], 2)
        out["modes"][mode] = r
    return out


def markdown(section: Optional[Mapping[str, Any]]) -> str:
    if not section:
        return ""
    lines = ["**Random rank-%d LoRA on %d layers (%.1f MB)**" % (section["rank"], section["layers"], section["file_mb"]),
             "", "| LoRA | denoise s | step median s | denoise overhead | step overhead | compute s | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    b = section["none"]
    lines.append("| none | %.3f | %.4f | - | - | %.3f | %s |" % (b["denoise_s"], b["step_median_s"], b["compute_s"],
                                                             b["peak_memory_gib"]))
    for mode, r in section["modes"].items():
        lines.append("| %s | %.3f | %.4f | %+.2f %% | %+.2f %% | %.3f | %s |" % (
            mode, r["denoise_s"], r["step_median_s"], r.get("denoise_overhead_pct", 0.0),
            r.get("step_overhead_pct", 0.0), r["compute_s"], r["peak_memory_gib"]))
    return "\n".join(lines)


__all__ = ["MODES", "synthesise", "lora_override", "overhead", "markdown"]
