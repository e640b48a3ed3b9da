"""Wan2.1 text-to-video, recipe to mp4 (spec §6.2).

Order of work: validate the recipe -> choose the backend -> inspect every checkpoint file
(keys, shapes) -> start the runtime and resolve the op table -> load -> encode text ->
denoise -> decode -> write the video and the report. Every user error is raised before the
first weight is read.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..checkpoints.layout import inspect_checkpoint, load_dit, load_vae
from ..config import RunConfig
from ..config.validate import plan_run
from ..io.atomic import write_json_atomic
from ..io.video import write_mp4
from ..models.dit.requirements import dit_requirements
from ..models.t5 import WanTextEncoder
from ..registry import Registry, resolve_ops
from ..schedulers import make_scheduler
from .noise import initial_noise
from .report import backend_versions, recipe_hash, versions
from .session import choose_backend, start_session
from .timing import StageClock


def pad_context(embs: List[torch.Tensor], text_len: int) -> torch.Tensor:
    """Trimmed T5 outputs -> [B, text_len, dim], zero rows after each prompt's tokens."""
    dim = embs[0].shape[-1]
    out = embs[0].new_zeros(len(embs), text_len, dim)
    for i, e in enumerate(embs):
        n = min(e.shape[0], text_len)
        out[i, :n] = e[:n]
    return out


def denoise(dit, scheduler, latent: torch.Tensor, ctx_cond: torch.Tensor, ctx_uncond: Optional[torch.Tensor],
            guide_scale: float, clock: Optional[StageClock] = None, progress: bool = True) -> torch.Tensor:
    """The sampling loop: CFG as the official formula, two batch-1 forwards per step
    (the unconditional one skipped when guide_scale == 1)."""
    from tqdm import tqdm

    steps = scheduler.timesteps
    bar = tqdm(total=len(steps), desc="denoise", unit="step", disable=not progress, leave=False)
    try:
        for t in steps:
            start = clock.now() if clock else 0.0
            tt = t.reshape(1)
            v = dit(latent, tt, ctx_cond)
            if ctx_uncond is not None and guide_scale != 1.0:
                v_uncond = dit(latent, tt, ctx_uncond)
                v = v_uncond + guide_scale * (v - v_uncond)
            latent = scheduler.step(v, latent)
            if clock:
                clock.steps.append(clock.now() - start)
            bar.update(1)
    finally:
        bar.close()
    return latent


def run_t2v(cfg: RunConfig, raw: Mapping[str, Any], registry: Optional[Registry] = None,
            progress: bool = True, source: str = "recipe") -> Dict[str, Any]:
    started = datetime.datetime.now(datetime.timezone.utc)
    plan = plan_run(cfg, source)
    registry, spec = choose_backend(cfg.backend, registry)
    policy = plan.policy
    ckpts = inspect_checkpoint(plan.checkpoint_dir, plan.preset, policy)
    scheduler = make_scheduler(plan.solver, steps=plan.steps, shift=plan.shift,
                               timesteps=list(plan.timesteps) if plan.timesteps else None)

    session = start_session(registry, spec, cfg.env)
    runtime, device = session.runtime, session.device
    reqs = dit_requirements(ckpts.dit.config, policy, spec.device_type)
    ops = resolve_ops(registry, spec, reqs, cfg.ops)
    runtime.reset_peak_memory()
    clock = StageClock(runtime)

    with torch.no_grad():
        with clock.stage("load"):
            text_encoder = WanTextEncoder.load(plan.checkpoint_dir, dtype=policy.text_encoder, device=device,
                                               text_len=ckpts.dit.config.text_len)
            dit = load_dit(ckpts.dit, policy, device).bind_ops(ops)
            vae = load_vae(ckpts, policy, device)

        with clock.stage("text_encode"):
            use_uncond = plan.guide_scale != 1.0
            prompts = [plan.prompt] + ([plan.negative_prompt] if use_uncond else [])
            embs = text_encoder.encode(prompts)
            ctx = pad_context(embs, ckpts.dit.config.text_len)
            ctx_cond, ctx_uncond = ctx[:1], (ctx[1:2] if use_uncond else None)
        del text_encoder
        runtime.empty_cache()

        # drawn in the official shape (no batch dim), so `noise: device` matches the official draw
        latent = initial_noise(plan.latent_shape, plan.seed, plan.noise, device)[None]
        with clock.stage("denoise"):
            latent = denoise(dit, scheduler, latent, ctx_cond, ctx_uncond, plan.guide_scale, clock, progress)
        del dit
        runtime.empty_cache()

        with clock.stage("vae_decode"):
            video = vae.decode(latent.to(policy.vae))[0]

    with clock.stage("write"):
        write_mp4(video, plan.video_path, plan.fps)

    report = {
        "kind": "wanport.run",
        "started_at": started.isoformat(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": plan.preset.name,
        "task": cfg.task,
        "checkpoint_dir": os.path.abspath(plan.checkpoint_dir),
        "dit_config": dict(ckpts.dit.config.to_json(), text_dim=ckpts.dit.config.text_dim),
        "recipe": dict(raw),
        "recipe_hash": recipe_hash(raw),
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt if plan.guide_scale != 1.0 else None,
        "seed": plan.seed,
        "noise": plan.noise,
        "size": {"width": plan.width, "height": plan.height, "frames": plan.frame_num, "fps": plan.fps},
        "sampling": {"solver": plan.solver, "steps": scheduler.num_steps, "shift": plan.shift,
                     "guide_scale": plan.guide_scale, "timesteps": [int(t) for t in scheduler.timesteps]},
        "backend": {
            "name": spec.name,
            "device_type": spec.device_type,
            "device": str(device),
            "device_name": runtime.describe(),
            "dist_backend": spec.dist_backend,
            "env_applied": dict(session.env_applied),
        },
        "ops": {site: {"impl": op.impl, "why": op.why} for site, op in
                ((s, getattr(ops, s)) for s in ops.describe())},
        "precision": policy.to_dict(),
        "stages": dict(clock.as_dict(), total_s=round(clock.total(), 4)),
        "peak_memory": {"bytes": runtime.peak_memory_bytes(),
                        "kind": getattr(runtime, "peak_memory_kind", "device peak allocated")},
        "output": {"video": os.path.abspath(plan.video_path), "report": os.path.abspath(plan.report_path)},
        "versions": versions(backend_versions(spec)),
    }
    write_json_atomic(plan.report_path, report)
    return report
