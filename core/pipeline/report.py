"""The JSON run report: what ran, on what, how long each stage took, peak memory, versions."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from typing import Any, Dict, Mapping, Optional


def _version(dist: str) -> Optional[str]:
    try:
        import importlib.metadata as md

        return md.version(dist)
    except Exception:
        return None


def versions(extra: Optional[Mapping[str, str]] = None) -> Dict[str, Optional[str]]:
    import torch

    import wanport

    out: Dict[str, Optional[str]] = {
        "wanport": wanport.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    for dist in ("transformers", "safetensors", "pluggy", "numpy", "imageio", "imageio-ffmpeg", "tokenizers"):
        out[dist] = _version(dist)
    if extra:
        out.update(extra)
    return out


def recipe_hash(raw: Mapping[str, Any]) -> str:
    """sha256 of the recipe (after overrides) in canonical JSON: the same recipe, the same hash."""
    canonical = json.dumps(raw, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def backend_versions(spec) -> Dict[str, str]:
    try:
        return dict(spec.versions())
    except Exception as exc:  # a report must still be written
        return {"error": "%s: %s" % (type(exc).__name__, exc)}
