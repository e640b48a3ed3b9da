"""``wanport dump RECIPE --out DIR``: run the recipe through the real pipeline and record it.

The dump settings are checked against the model and the schedule before anything loads (the
recipe, backend and checkpoint files are checked first, as for ``wanport check``); the video and
run report land in DIR beside the dump files, the manifest last.

Under torchrun (a recipe with ``parallel.*``) every rank runs the recipe and takes part in
gathering the block outputs (:mod:`.gather`); only rank 0 prepares the folder and writes the
dump, whose manifest records the layout::

    torchrun --standalone --nproc_per_node 2 -m wanport dump RECIPE parallel.ulysses=2 --out DIR
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

from ..config import load_recipe
from ..errors import ConfigError
from .format import MANIFEST, write_dump
from .gather import GatherLayout
from .observer import DumpConfig, DumpObserver, parse_indices, resolve_indices


def prepare_folder(out: str, main: bool = True) -> None:
    """A new or empty folder, or an earlier dump (its manifest is removed first, so an
    interrupted re-dump is never mistaken for a finished one). Only the main rank looks inside
    and changes the folder (another rank could see it half-way through)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError("dump: --out %s exists and is not a folder" % out)
    if not main:
        return
    if os.path.isdir(out) and os.listdir(out):
        manifest = os.path.join(out, MANIFEST)
        if not os.path.isfile(manifest):
            raise ConfigError("dump: --out %s is not empty and holds no dump; choose a new or empty folder" % out)
        os.unlink(manifest)
    os.makedirs(out, exist_ok=True)


def dump_recipe(recipe: Optional[str], overrides: Sequence[str], out: str, blocks: Optional[str] = None,
                steps: Optional[str] = None, fingerprint: int = 256, progress: bool = False,
                source: str = "recipe", observer_class=DumpObserver) -> Optional[Dict[str, Any]]:
    """Validate, run with a :class:`DumpObserver`, write the dump; returns the manifest (on
    rank 0; None on the other ranks of a multi-process run)."""
    from ..parallel.mesh import launched_rank, launched_world
    from ..pipeline.common import check_run
    from ..pipeline.run import run

    if fingerprint < 1:
        raise ConfigError("dump: --fingerprint must be >= 1, got %d" % fingerprint)
    block_sel, step_sel = parse_indices(blocks, "--blocks"), parse_indices(steps, "--steps")
    cfg, raw = load_recipe(recipe, list(overrides) + ["output.dir=%s" % out, "output.name=run"])
    existed = os.path.exists(out)
    plan, _, _, _, _, ckpts = check_run(cfg, source)  # recipe, image, backend, checkpoint files: nothing loaded
    world = plan.world
    launched = launched_world()
    if world != launched:
        if not existed and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # the writability probe made it; a refused dump leaves nothing behind
        how = ("torchrun --standalone --nproc_per_node %d -m wanport dump ..." % world if world > 1
               else "as one plain process (wanport dump ...)")
        raise ConfigError("dump: the recipe needs %d process(es) (parallel: cfg x ulysses x ring) but %d were "
                          "launched; start it %s, or change the parallel section" % (world, launched, how))
    config = DumpConfig(blocks=resolve_indices(block_sel, ckpts.dit.config.num_layers, "--blocks"),
                        steps=resolve_indices(step_sel, plan.num_steps, "--steps"), fingerprint=fingerprint)
    layout = None
    if world > 1:
        p = plan.parallel
        layout = GatherLayout(cfg=int(p.cfg), ulysses=int(p.ulysses), ring=int(p.ring), rank=launched_rank())
    main = layout is None or layout.is_main
    prepare_folder(out, main)
    observer = observer_class(config, layout) if layout is not None else observer_class(config)
    try:
        report = run(cfg, raw, progress=progress and main, source=source, observer=observer)
    finally:
        observer.close()
    if not main:
        return None
    return write_dump(out, observer, report)


__all__ = ["dump_recipe", "prepare_folder"]
