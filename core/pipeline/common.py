"""Steps every run shares: recipe -> plan -> (image) -> backend -> checkpoint inspection -> session
and op table; text encoding; the JSON report.

Each task module (:mod:`.t2v`, :mod:`.i2v`, :mod:`.ti2v`) calls :func:`prepare` first -- every
user error (recipe, input image, backend, checkpoint files) is raised there, before the first
weight is read -- then loads its models itself and runs its own sampling loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..checkpoints.layout import CheckpointSet
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
from .weights import CHECKPOINT


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
    #: the process mesh of a multi-process run (``wanport.parallel.mesh.Mesh``), else None
    mesh: Any = None
    #: time spent in communication (``wanport.parallel.mesh.CommClock``)
    comm: Any = None
    #: ``wanport.parallel.cfg.CfgParallel`` when the guidance branches run on two rank groups
    cfg_parallel: Any = None
    #: where the models come from (:mod:`.weights`: the checkpoint, or random weights for benchmarks)
    weights: Any = CHECKPOINT
    #: a :class:`~.sampling.LoopObserver` of the run (``wanport dump``), or None
    observer: Any = None
    #: the memory plan's prediction for this run (``wanport.plan.MemoryPlan``), None when skipped
    memory_plan: Any = None

    @property
    def is_main(self) -> bool:
        """Only rank 0 decodes (unless the VAE is split) and writes the video and the report."""
        return self.mesh is None or self.mesh.is_main

    @property
    def text_device(self) -> torch.device:
        """Where the text encoder runs (``parallel.t5_cpu``: the host)."""
        p = self.plan.parallel
        return torch.device("cpu") if p is not None and p.t5_cpu else self.device

    @property
    def runtime(self):
        return self.session.runtime

    @property
    def device(self) -> torch.device:
        return self.session.device


def check_run(cfg: RunConfig, source: str = "recipe", registry: Optional[Registry] = None, weights=None):
    """Validate without starting the runtime: plan, input image (and the video size it gives),
    backend, checkpoint files (``weights``: a weight source of :mod:`.weights`, default the
    checkpoint). Returns (plan, image, size, registry, spec, ckpts)."""
    plan = plan_run(cfg, source)
    image, size = None, (plan.width, plan.height)
    if plan.image_path:
        image = load_image(plan.image_path, min_side=plan.preset.spatial_multiple)
        size = output_size(plan.preset, image, plan.width * plan.height)
    registry, spec = choose_backend(cfg.backend, registry)
    ckpts = (weights or CHECKPOINT).inspect(plan)
    return plan, image, size, registry, spec, ckpts


def resolve_dit_ops(registry: Registry, spec, ckpts: CheckpointSet, plan: RunPlan,
                    overrides: Mapping[str, str], mesh=None) -> OpTable:
    """The DiT's op table; with sequence parallelism the self-attention must mask padded keys
    (and return the log-sum-exp for ring attention)."""
    sp = mesh is not None and mesh.sp_degree > 1
    reqs = dit_requirements(ckpts.dit.config, plan.policy, spec.device_type,
                            per_token_timesteps=plan.preset.per_token_timesteps and plan.image_path is not None,
                            padded_keys=sp, ring_lse=sp and mesh.ring > 1)
    return resolve_ops(registry, spec, reqs, overrides)


def start_parallel(plan: RunPlan, spec, session: Session, ckpts: CheckpointSet):
    """(session with this rank's device, mesh, comm clock) -- mesh None for one process."""
    from ..errors import ConfigError
    from ..parallel.config import check_heads
    from ..parallel.mesh import CommClock, check_launch, init_mesh

    comm = CommClock(session.runtime)
    p = plan.parallel
    if p is None or plan.world == 1:
        check_launch(1)
        return session, None, comm
    problems = check_heads(p, ckpts.dit.config.num_heads, plan.preset.name)
    if problems:
        raise ConfigError(problems[0])
    mesh = init_mesh(p.cfg, p.ulysses, p.ring, spec.dist_backend, p.timeout_s, set_device=session.runtime.set_device)
    return dataclasses.replace(session, device=session.runtime.device()), mesh, comm


def prepare(cfg: RunConfig, registry: Optional[Registry] = None, source: str = "recipe", weights=None,
            observer=None) -> Prepared:
    started = datetime.datetime.now(datetime.timezone.utc)
    plan, image, size, registry, spec, ckpts = check_run(cfg, source, registry, weights)
    scheduler = make_scheduler(plan.solver, steps=plan.steps, shift=plan.shift,
                               timesteps=list(plan.timesteps) if plan.timesteps else None)
    session = start_session(registry, spec, cfg.env)
    # -- memory gate (wanport plan, docs/plan.md): refuse a recipe predicted not to fit the device,
    # with the layouts that do; before any weight loads or collective starts. `run --force` skips it.
    from ..plan.check import refuse_if_unfit

    memory_plan = refuse_if_unfit(plan, ckpts, session.runtime, size, cfg.memory_check)
    session, mesh, comm = start_parallel(plan, spec, session, ckpts)
    ops = resolve_dit_ops(registry, spec, ckpts, plan, cfg.ops, mesh)
    cfg_parallel = None
    if mesh is not None:
        from ..parallel.cfg import CfgParallel
        from ..parallel.sequence import wrap_self_attention

        if mesh.sp_degree > 1:
            ops = wrap_self_attention(ops, mesh, comm)
        if mesh.cfg == 2:
            cfg_parallel = CfgParallel(mesh, comm)
    weights = weights or CHECKPOINT
    p = plan.parallel
    if mesh is not None and (p.dit_fsdp or p.t5_fsdp):
        from ..parallel.fsdp import ShardedWeights

        weights = ShardedWeights(weights, p.dit_fsdp, p.t5_fsdp, spec.device_type, mesh.world)
        if p.dit_fsdp and plan.park_inactive_expert == "auto":  # sharded experts stay where they are
            plan = dataclasses.replace(plan, park_inactive_expert=False)
    if plan.compile:
        from .compile import CompiledWeights

        weights = CompiledWeights(weights)
    session.runtime.reset_peak_memory()
    clock = StageClock(session.runtime)
    return Prepared(started, plan, image, size, registry, spec, ckpts, scheduler, session, ops, clock,
                    mesh, comm, cfg_parallel, weights=weights, observer=observer, memory_plan=memory_plan)


def vae_decode(prep: Prepared, vae, latent: torch.Tensor) -> Optional[torch.Tensor]:
    """The video [3, F, H, W] on the main rank (None elsewhere): the decode split across all ranks
    with ``parallel.vae``, else run on rank 0 alone."""
    z = latent.to(prep.plan.policy.vae)
    mesh = prep.mesh
    if mesh is not None and prep.plan.parallel.vae:
        from ..parallel.vae import decode_split

        video = decode_split(vae, z, mesh.rank, mesh.world, None, prep.comm)
        return None if video is None else video[0]
    if not prep.is_main:
        return None
    return vae.decode(z)[0]


def vae_encode(prep: Prepared, vae, video: torch.Tensor) -> torch.Tensor:
    """Encode ``video`` [1, 3, F, H, W] (split across all ranks with ``parallel.vae``); the latent on every rank."""
    mesh = prep.mesh
    if mesh is not None and prep.plan.parallel.vae:
        from ..parallel.vae import encode_split

        return encode_split(vae, video, mesh.rank, mesh.world, None, prep.comm)
    return vae.encode(video)


def write_video(prep: Prepared, video: Optional[torch.Tensor]) -> Optional[Dict[str, Any]]:
    """The mp4 (main rank only, timed as the ``write`` stage); returns the parallel summary (every
    rank must call this: it gathers the per-rank figures)."""
    from ..io.video import write_mp4

    summary = parallel_summary(prep)
    if prep.observer is not None and video is not None:
        prep.observer.video_decoded(video)
    if prep.is_main:
        with prep.clock.stage("write"):
            write_mp4(video, prep.plan.video_path, prep.plan.fps)
    return summary


def save_report(prep: Prepared, report: Dict[str, Any], summary: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The JSON report beside the video (main rank only)."""
    from ..io.atomic import write_json_atomic

    if summary is not None:
        report["parallel"] = summary
    if prep.is_main:
        write_json_atomic(prep.plan.report_path, report)
    return report


def parallel_summary(prep: Prepared) -> Optional[Dict[str, Any]]:
    """Per-rank peak memory and communication time, gathered on every rank (a collective: every
    rank calls it); None for one process."""
    mesh = prep.mesh
    if mesh is None:
        return None
    import torch.distributed as dist

    mine = {"rank": mesh.rank, "device": str(prep.device), "peak_memory_bytes": prep.runtime.peak_memory_bytes(),
            "comm_s": round(prep.comm.seconds, 4), "comm_calls": prep.comm.calls}
    ranks: List[Any] = [None] * mesh.world
    dist.all_gather_object(ranks, mine)
    p = prep.plan.parallel
    return {"world": mesh.world, "cfg": p.cfg, "ulysses": p.ulysses, "ring": p.ring, "vae": p.vae,
            "t5_cpu": p.t5_cpu, "dist_backend": prep.spec.dist_backend, "ranks": ranks}


def encode_prompts(text_encoder, plan: RunPlan, text_len: int,
                   device: Optional[torch.device] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(cond, uncond) padded T5 contexts [1, text_len, dim] (moved to ``device`` when the text
    encoder runs elsewhere, e.g. on the host); uncond None when guidance is off."""
    prompts = [plan.prompt] + ([plan.negative_prompt] if plan.needs_uncond else [])
    ctx = pad_context(text_encoder.encode(prompts), text_len)
    if device is not None:
        ctx = ctx.to(device)
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
                        "kind": getattr(runtime, "peak_memory_kind", "device peak allocated"),
                        "predicted": prep.memory_plan.summary() if prep.memory_plan is not None else None},
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
