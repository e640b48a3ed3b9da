"""``wanport dump RECIPE --out DIR``: run the recipe through the real pipeline and record it.

The dump settings are checked against the model and the schedule before anything loads (the
recipe, backend and checkpoint files are checked first, as for ``wanport check``); the video and
run report land in DIR beside the dump files, the manifest last.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

from ..config import load_recipe
from ..errors import ConfigError
from .format import MANIFEST, write_dump
from .observer import DumpConfig, DumpObserver, parse_indices, resolve_indices


def prepare_folder(out: str) -> None:
    """A new or empty folder, or an earlier dump (its manifest is removed first, so an
    interrupted re-dump is never mistaken for a finished one)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError("dump: --out %s exists and is not a folder" % out)
    if os.path.isdir(out) and os.listdir(out):
        manifest = os.path.join(out, MANIFEST)
        if not os.path.isfile(manifest):
            raise ConfigError("dump: --out %s is not empty and holds no dump; choose a new or empty folder" % out)
        os.unlink(manifest)
    os.makedirs(out, exist_ok=True)


def dump_recipe(recipe: Optional[str], overrides: Sequence[str], out: str, blocks: Optional[str] = None,
                steps: Optional[str] = None, fingerprint: int = 256, progress: bool = False,
                source: str = "recipe", observer_class=DumpObserver) -> Dict[str, Any]:
    """Validate, run with a :class:`DumpObserver`, write the dump; returns the manifest."""
    from ..pipeline.common import check_run
    from ..pipeline.run import run

    if fingerprint < 1:
        raise ConfigError("dump: --fingerprint must be >= 1, got %d" % fingerprint)
    block_sel, step_sel = parse_indices(blocks, "--blocks"), parse_indices(steps, "--steps")
    cfg, raw = load_recipe(recipe, list(overrides) + ["output.dir=%s" % out, "output.name=run"])
    plan, _, _, _, _, ckpts = check_run(cfg, source)  # recipe, image, backend, checkpoint files: nothing loaded
    if getattr(plan, "world", 1) > 1:
        raise ConfigError("dump: runs in one process, but the recipe asks for %d (parallel.*); dump with "
                          "parallel.cfg=1 parallel.ulysses=1 parallel.ring=1" % plan.world)
    config = DumpConfig(blocks=resolve_indices(block_sel, ckpts.dit.config.num_layers, "--blocks"),
                        steps=resolve_indices(step_sel, plan.num_steps, "--steps"), fingerprint=fingerprint)
    prepare_folder(out)
    observer = observer_class(config)
    try:
        report = run(cfg, raw, progress=progress, source=source, observer=observer)
    finally:
        observer.close()
    return write_dump(out, observer, report)


__all__ = ["dump_recipe", "prepare_folder"]
