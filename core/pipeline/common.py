"""Steps every run shares: recipe -> plan -> (image) -> backend -> checkpoint inspection -> session
and op table; text encoding; the JSON report.

Each task module (:mod:`.t2v`, :mod:`.i2v`, :mod:`.ti2v`) calls :func:`prepare` first -- every
user error (recipe, input image, backend, checkpoint files) is raised there, before the first
weight is read -- then loads its models itself and runs its own sampling loop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..checkpoints.layout import CheckpointSet, inspect_checkpoint
from ..config import RunConfig
from ..config.validate import RunPlan, plan_run
from ..models.dit.requirements import dit_requirements
from ..ops.table import OpTable
from ..registry import Registry, resolve_ops
from ..schedulers import make_scheduler
from .images import InputImage, load_image, output_size
from .report import backend_versions, recipe_hash, versions
from .session import Session, choose_backend, start_session
from .timing import StageClock


def pad_context(embs: List[torch.Tensor], text_len: int) -> torch.Tensor:
    """Trimmed T5 outputs -> [B, text_len, dim], zero rows after each prompt's tokens."""
    dim = embs[0].shape[-1]
    out = embs[0].new_zeros(len(embs), text_len, dim)
    for i, e in enumerate(embs):
        n = min(e.shape[0], text_len)
        out[i, :n] = e[:n]
    return out


@dataclass
class Prepared:
    """Everything checked and started; nothing loaded yet."""

    started: datetime.datetime
    plan: RunPlan
    image: Optional[InputImage]
    #: the video (width, height): the recipe's size, or derived from the image and the maximum area
    size: Tuple[int, int]
    registry: Registry
    spec: Any  # BackendSpec
    ckpts: CheckpointSet
    scheduler: Any  # FlowScheduler
    session: Session
    ops: OpTable
    clock: StageClock

    @property
    def runtime(self):
        return self.session.runtime

    @property
    def device(self) -> torch.device:
        return self.session.device


def check_run(cfg: RunConfig, source: str = "recipe", registry: Optional[Registry] = None):
    """Validate without starting the runtime: plan, input image (and the video size it gives),
    backend, checkpoint files. Returns (plan, image, size, registry, spec, ckpts)."""
    plan = plan_run(cfg, source)
    image, size = None, (plan.width, plan.height)
    if plan.image_path:
        image = load_image(plan.image_path, min_side=plan.preset.spatial_multiple)
        size = output_size(plan.preset, image, plan.width * plan.height)
    registry, spec = choose_backend(cfg.backend, registry)
    ckpts = inspect_checkpoint(plan.checkpoint_dir, plan.preset, plan.policy)
    return plan, image, size, registry, spec, ckpts


def resolve_dit_ops(registry: Registry, spec, ckpts: CheckpointSet, plan: RunPlan,
                    overrides: Mapping[str, str]) -> OpTable:
    reqs = dit_requirements(ckpts.dit.config, plan.policy, spec.device_type,
                            per_token_timesteps=plan.preset.per_token_timesteps and plan.image_path is not None)
    return resolve_ops(registry, spec, reqs, overrides)


def prepare(cfg: RunConfig, registry: Optional[Registry] = None, source: str = "recipe") -> Prepared:
    started = datetime.datetime.now(datetime.timezone.utc)
    plan, image, size, registry, spec, ckpts = check_run(cfg, source, registry)
    scheduler = make_scheduler(plan.solver, steps=plan.steps, shift=plan.shift,
                               timesteps=list(plan.timesteps) if plan.timesteps else None)
    session = start_session(registry, spec, cfg.env)
    ops = resolve_dit_ops(registry, spec, ckpts, plan, cfg.ops)
    session.runtime.reset_peak_memory()
    clock = StageClock(session.runtime)
    return Prepared(started, plan, image, size, registry, spec, ckpts, scheduler, session, ops, clock)


def encode_prompts(text_encoder, plan: RunPlan, text_len: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(cond, uncond) padded T5 contexts [1, text_len, dim]; uncond None when guidance is off."""
    prompts = [plan.prompt] + ([plan.negative_prompt] if plan.needs_uncond else [])
    ctx = pad_context(text_encoder.encode(prompts), text_len)
    return ctx[:1], (ctx[1:2] if plan.needs_uncond else None)


def base_report(prep: Prepared, cfg: RunConfig, raw: Mapping[str, Any], width: int, height: int,
                frames: int) -> Dict[str, Any]:
    plan, spec, session, ops, clock = prep.plan, prep.spec, prep.session, prep.ops, prep.clock
    runtime = session.runtime
    dit_cfg = prep.ckpts.dit.config
    dit_json = dict(dit_cfg.to_json(), text_dim=dit_cfg.text_dim)
    if dit_cfg.image_dim is not None:
        dit_json["image_dim"] = dit_cfg.image_dim
    return {
        "kind": "wanport.run",
        "started_at": prep.started.isoformat(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": plan.preset.name,
        "task": cfg.task,
        "checkpoint_dir": os.path.abspath(plan.checkpoint_dir),
        "dit_config": dit_json,
        "recipe": dict(raw),
        "recipe_hash": recipe_hash(raw),
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt if plan.needs_uncond else None,
        "seed": plan.seed,
        "noise": plan.noise,
        "size": {"width": width, "height": height, "frames": frames, "fps": plan.fps},
        "sampling": {"solver": plan.solver, "steps": prep.scheduler.num_steps, "shift": plan.shift,
                     "guide_scale": list(plan.guide_scale) if isinstance(plan.guide_scale, tuple) else plan.guide_scale,
                     "timesteps": [int(t) for t in prep.scheduler.timesteps]},
        "backend": {
            "name": spec.name,
            "device_type": spec.device_type,
            "device": str(session.device),
            "device_name": runtime.describe(),
            "dist_backend": spec.dist_backend,
            "env_applied": dict(session.env_applied),
        },
        "ops": {site: {"impl": op.impl, "why": op.why} for site, op in
                ((s, getattr(ops, s)) for s in ops.describe())},
        "precision": plan.policy.to_dict(),
        "stages": dict(clock.as_dict(), total_s=round(clock.total(), 4)),
        "peak_memory": {"bytes": runtime.peak_memory_bytes(),
                        "kind": getattr(runtime, "peak_memory_kind", "device peak allocated")},
        "output": {"video": os.path.abspath(plan.video_path), "report": os.path.abspath(plan.report_path)},
        "versions": versions(backend_versions(spec)),
    }


def image_report(image: Optional[InputImage], out_width: int, out_height: int) -> Optional[Dict[str, Any]]:
    if image is None:
        return None
    return {"path": os.path.abspath(image.path), "width": image.width, "height": image.height,
            "mode": image.source_mode, "exif_rotated": image.exif_rotated,
            "output": {"width": out_width, "height": out_height}}


__all__ = ["Prepared", "prepare", "check_run", "resolve_dit_ops", "pad_context", "encode_prompts", "base_report",
           "image_report"]
