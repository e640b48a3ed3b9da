"""The dump folder, format ``wanport.dump`` version 1.

    DIR/dump.json            the manifest (written last: a folder without it is an unfinished dump)
    DIR/stats.safetensors    per block, step and branch: statistics and fingerprints
    DIR/latents.safetensors  the latent after every step
    DIR/blocks.safetensors   full block outputs of the chosen blocks and steps (may hold none)
    DIR/video.safetensors    the decoded video as the uint8 frames that went into the mp4
    DIR/run.mp4, run.json    the video and the ordinary run report

Tensors (safetensors, float32 unless noted; S steps, B blocks, N fingerprint values):

* ``stats.<branch>`` [S, B, 6] (mean, std, abs_max, l2, nan, inf of the block output; NaN where
  the branch did not run) and ``fingerprint.<branch>`` [S, B, N] for branch ``cond`` and, with
  guidance, ``uncond``; ``present.<branch>`` [S] uint8 (1: the branch ran at that step);
  ``fingerprint_index`` [N] int64, the positions in the flattened block output; ``timesteps`` [S]
  int64.
* ``latent.step<i:03d>`` [1, C, T, H, W] after step i.
* ``<branch>.step<i:03d>.block<j:03d>``: the output of block j in step i, in its own dtype.
* ``video`` [F, H, W, 3] uint8.

The manifest records the format and version, the hardware (backend, device, platform), the
versions, the recipe after overrides with its sha256, the *compare hash* (the recipe without the
keys that may differ between machines: backend, ops, env, output, checkpoint path, offload,
parallel; the input image by its content's sha256), the op table, the dump settings, and the
list of tensors in every file (a listed tensor missing from its file: a corrupt dump).

``parallel`` is null for a one-process run; for a multi-process run (torchrun) it holds the
layout (world, cfg, ulysses, ring), the recipe's ``parallel`` settings (VAE split, FSDP, ...),
how the tensors were recorded (every block output gathered to rank 0 and reassembled in token
order, so the tensors have the shapes and meaning of a one-process dump) and the per-rank
figures of the run report. It is layout information: ``compare`` reports it and compares the
tensors as usual.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..checkpoints.safetensors_files import read_header, save_file_atomic
from ..errors import CheckpointError, DumpError
from ..io.atomic import write_json_atomic
from ..pipeline.report import recipe_hash
from .observer import BRANCHES, STAT_NAMES, DumpObserver

FORMAT = "wanport.dump"
VERSION = 1
MANIFEST = "dump.json"
FILES = {"stats": "stats.safetensors", "latents": "latents.safetensors", "blocks": "blocks.safetensors",
         "video": "video.safetensors"}
#: recipe keys that may differ between the two sides of a comparison (machine, kernels, layout; and
#: ``quant``: a quantized run is compared with the exact one, its quant_linear site in ``ops_differ``)
MACHINE_KEYS = ("backend", "ops", "env", "output", "checkpoint_dir", "offload", "parallel", "quant")
#: lossy settings left out of the compare hash too, so a cached dump compares against an exact one;
#: ``compare`` reports each side's (docs/caching.md)
LOSSY_KEYS = ("cache",)


def _file_sha256(path: str) -> Optional[str]:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def comparable_recipe(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The recipe without the machine-specific keys; the input image by content."""
    out = {k: v for k, v in raw.items() if k not in MACHINE_KEYS and k not in LOSSY_KEYS}
    if out.get("image"):
        out["image"] = {"sha256": _file_sha256(str(out["image"]))}
    return out


def stack_branches(obs: DumpObserver, steps: int) -> Dict[str, torch.Tensor]:
    """The dense per-block arrays of the stats file."""
    out: Dict[str, torch.Tensor] = {"timesteps": torch.tensor([obs.timesteps.get(i, -1) for i in range(steps)],
                                                              dtype=torch.long)}
    if obs.index:  # block outputs of one run share a shape
        out["fingerprint_index"] = obs.index[max(obs.index)]
    blocks, width = obs.num_blocks, obs.config.fingerprint
    if obs.fingerprints:
        width = next(iter(obs.fingerprints.values())).shape[1]
    for branch in BRANCHES:
        keys = [(i, branch) for i in range(steps)]
        if not any(k in obs.stats for k in keys):
            continue
        nan_stats = torch.full((blocks, len(STAT_NAMES)), float("nan"))
        nan_fp = torch.full((blocks, width), float("nan"))
        out["stats." + branch] = torch.stack([obs.stats.get(k, nan_stats) for k in keys])
        out["fingerprint." + branch] = torch.stack([obs.fingerprints.get(k, nan_fp) for k in keys])
        out["present." + branch] = torch.tensor([k in obs.stats for k in keys], dtype=torch.uint8)
    return out


def parallel_info(obs: DumpObserver, report: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The layout of a multi-process dump (None for one process)."""
    layout = getattr(obs, "layout", None)
    if layout is None:
        return None
    summary = report.get("parallel") or {}
    return dict(layout.to_json(), settings=dict((report.get("recipe") or {}).get("parallel") or {}),
                dist_backend=summary.get("dist_backend"), ranks=summary.get("ranks"))


def write_dump(directory: str, obs: DumpObserver, report: Mapping[str, Any]) -> Dict[str, Any]:
    """The tensor files, then the manifest; returns the manifest."""
    steps = len(report["sampling"]["timesteps"])
    tensors = {
        "stats": stack_branches(obs, steps),
        "latents": {"latent.step%03d" % i: t for i, t in sorted(obs.latents.items())},
        "blocks": dict(obs.full),
        "video": {"video": obs.video} if obs.video is not None else {},
    }
    for name, content in tensors.items():
        save_file_atomic(content, os.path.join(directory, FILES[name]), metadata={"format": FORMAT})
    raw = report["recipe"]
    comparable = comparable_recipe(raw)
    backend = report["backend"]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "hardware": {"backend": backend["name"], "device_type": backend["device_type"], "device": backend["device"],
                     "device_name": backend["device_name"], "dist_backend": backend["dist_backend"],
                     "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "versions": report["versions"],
        "recipe": raw,
        "recipe_hash": report["recipe_hash"],
        "compare_recipe": comparable,
        "compare_hash": recipe_hash(comparable),
        "model": report["model"],
        "task": report["task"],
        "seed": report["seed"],
        "noise": report["noise"],
        "size": report["size"],
        "precision": report["precision"],
        "sampling": report["sampling"],
        "ops": {site: v["impl"] for site, v in report["ops"].items()},
        "dump": dict(obs.config.to_json(), num_blocks=obs.num_blocks, num_steps=steps,
                     branches=[b for b in BRANCHES if "stats." + b in tensors["stats"]],
                     experts=[obs.experts.get(i) for i in range(steps)], notes=obs.notes),
        "parallel": parallel_info(obs, report),
        "cache": cache_info(report),
        "files": {FILES[name]: sorted(content) for name, content in tensors.items()},
        "run_report": os.path.basename(report["output"]["report"]),
        "video_file": os.path.basename(report["output"]["video"]),
    }
    write_json_atomic(os.path.join(directory, MANIFEST), manifest)
    return manifest


def cache_info(report: Mapping[str, Any]) -> Dict[str, Any]:
    """The run's feature cache: method, threshold and the (step, branch) of every reused forward."""
    c = report.get("cache") or {"method": "none"}
    return {"method": c.get("method", "none"), "threshold": c.get("threshold"),
            "reused": [[r["step"], r["branch"]] for r in c.get("per_step") or () if r.get("action") == "reused"]}


class Dump:
    """A dump folder, checked on open: manifest, format, version, every listed tensor present."""

    def __init__(self, directory: str, name: str = "dump") -> None:
        self.directory = directory
        self.name = name
        self.manifest = self._manifest()
        self.headers: Dict[str, Dict[str, Any]] = {}
        for fname, keys in self.manifest["files"].items():
            path = os.path.join(directory, fname)
            if not os.path.isfile(path):
                raise DumpError("%s %s: file %s listed in %s is missing (incomplete dump: run `wanport dump` again)"
                                % (name, directory, fname, MANIFEST))
            try:
                header = read_header(path)
            except CheckpointError as exc:
                raise DumpError("%s %s: %s (corrupt dump: run `wanport dump` again)" % (name, directory, exc)) from None
            missing = [k for k in keys if k not in header]
            if missing:
                raise DumpError("%s %s: tensor %r listed in %s is missing from %s%s (corrupt dump: run `wanport dump` "
                                "again)" % (name, directory, missing[0], MANIFEST, fname,
                                            " (and %d more)" % (len(missing) - 1) if len(missing) > 1 else ""))
            self.headers[fname] = header

    def _manifest(self) -> Dict[str, Any]:
        where = "%s %s" % (self.name, self.directory)
        if not os.path.isdir(self.directory):
            raise DumpError("%s: folder not found" % where)
        path = os.path.join(self.directory, MANIFEST)
        if not os.path.isfile(path):
            raise DumpError("%s: no %s -- not a wanport dump, or the dump did not finish (run `wanport dump` again)"
                            % (where, MANIFEST))
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as exc:
            raise DumpError("%s: %s is not readable JSON (%s); corrupt dump: run `wanport dump` again"
                            % (where, MANIFEST, exc)) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DumpError("%s: %s is not a %s manifest (format %r)" % (
                where, MANIFEST, FORMAT, manifest.get("format") if isinstance(manifest, dict) else None))
        version = manifest.get("version")
        if not isinstance(version, int) or version > VERSION or version < 1:
            raise DumpError("%s: dump format version %r; this wanport reads versions 1..%d (upgrade wanport, or dump "
                            "again with this one)" % (where, version, VERSION))
        for key in ("files", "compare_hash", "dump", "sampling"):
            if key not in manifest:
                raise DumpError("%s: %s has no %r (corrupt dump: run `wanport dump` again)" % (where, MANIFEST, key))
        return manifest

    def keys(self, file: str) -> List[str]:
        return list(self.manifest["files"].get(FILES[file], []))

    def tensor(self, file: str, key: str) -> torch.Tensor:
        from safetensors import safe_open

        path = os.path.join(self.directory, FILES[file])
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return f.get_tensor(key)
        except Exception as exc:
            raise DumpError("%s %s: cannot read %r from %s (%s: %s); corrupt dump: run `wanport dump` again"
                            % (self.name, self.directory, key, FILES[file], type(exc).__name__, exc)) from None

    def has(self, file: str, key: str) -> bool:
        return key in self.manifest["files"].get(FILES[file], [])

    def describe(self) -> Dict[str, Any]:
        m = self.manifest
        v = m.get("versions") or {}
        return {"dir": os.path.abspath(self.directory), "hardware": m.get("hardware"),
                "created_at": m.get("created_at"), "torch": v.get("torch"), "wanport": v.get("wanport")}


__all__ = ["FORMAT", "VERSION", "MANIFEST", "FILES", "MACHINE_KEYS", "LOSSY_KEYS", "cache_info", "Dump", "write_dump",
           "comparable_recipe", "parallel_info"]
