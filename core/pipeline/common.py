"""Steps every run shares: recipe -> plan -> (image) -> backend -> checkpoint inspection -> session
and op table; text encoding; the JSON report.

:class:`wanport.pipeline.api.Pipeline` calls :func:`prepare` once -- every user error (recipe,
input image, backend, checkpoint files) is raised there, before the first weight is read -- and
:func:`check_request` again for every call's own values (prompt, seed, size, image, ...).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..checkpoints.layout import CheckpointSet
from ..config import RunConfig
from ..config.validate import RunPlan, plan_run
from ..lora.weights import as_lora_source
from ..models.dit.requirements import dit_requirements
from ..models.vae.setup import preferred_memory_format, vae_requirements
from ..ops.table import OpTable
from ..precision import is_auto, resolve_policy
from ..registry import BackendSpec, Registry, resolve_ops
from ..registry.backend import native_bf16
from .images import InputImage, load_image, output_size
from .report import backend_versions, recipe_hash, versions
from .session import Session, choose_backend, start_session
from .timing import StageClock
from .weights import CHECKPOINT

if TYPE_CHECKING:  # annotations only: these modules import torch.distributed / the planner
    from ..lora.weights import LoraWeights
    from ..parallel.cfg import CfgParallel
    from ..parallel.mesh import CommClock, Mesh
    from ..plan.memory import MemoryPlan
    from ..schedulers.base import FlowScheduler


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
    """What lives as long as a pipeline: everything checked and started (backend session,
    process mesh, op tables), nothing loaded yet. Per-call values (prompt, seed, size, ...) live
    in a :class:`Call`."""

    #: the plan of the recipe the pipeline was built from (its load-time fields -- model,
    #: checkpoint, precision, parallel layout, offload -- hold for every call)
    plan: RunPlan
    registry: Registry
    spec: BackendSpec
    ckpts: CheckpointSet
    session: Session
    #: the op table of the recipe's first call (see :meth:`ops_for`)
    ops: OpTable
    #: the process mesh of a multi-process run, else None
    mesh: Optional[Mesh] = None
    #: time spent in communication
    comm: Optional[CommClock] = None
    #: when the guidance branches run on two rank groups
    cfg_parallel: Optional[CfgParallel] = None
    #: where the models come from (:mod:`.weights`: the checkpoint, or random weights for benchmarks)
    weights: Any = CHECKPOINT
    #: op tables by per-token modulation (TI2V: a call with an image needs it, one without not)
    tables: Dict[bool, OpTable] = dataclasses.field(default_factory=dict)
    #: the recipe's ``ops:`` overrides
    op_overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the recipe's LoRAs, inspected
    loras: Optional[LoraWeights] = None
    #: the memory plan's prediction for this run, None when skipped
    memory_plan: Optional[MemoryPlan] = None
    #: the quantized DiT Linears (``wanport.quant.QuantWeights``), None without ``quant.dit``
    quant: Optional[Any] = None
    #: the last split VAE decode's per-phase account (``wanport.parallel.vae.VAEPhases``), for the report
    vae_phases: Optional[Any] = None

    @property
    def is_main(self) -> bool:
        """Only rank 0 decodes (unless the VAE is split) and writes the video and the report."""
        return self.mesh is None or self.mesh.is_main

    @property
    def text_device(self) -> torch.device:
        """Where the text encoder runs (``parallel.t5_cpu`` or ``offload.text_encoder: host``: the host)."""
        p, off = self.plan.parallel, self.plan.offload
        host = (p is not None and p.t5_cpu) or (off is not None and off.text_encoder == "host")
        return torch.device("cpu") if host else self.device

    @property
    def runtime(self):
        return self.session.runtime

    @property
    def device(self) -> torch.device:
        return self.session.device

    def ops_for(self, plan: RunPlan) -> OpTable:
        """The op table of a call: resolved once per distinct requirement set (only TI2V's
        per-token modulation differs between calls), then reused."""
        per_token = per_token_modulation(plan)
        if per_token not in self.tables:
            self.tables[per_token] = parallel_ops(
                resolve_dit_ops(self.registry, self.spec, self.ckpts, plan, self.op_overrides, self.mesh),
                self.mesh, self.comm, ulysses_overlap(plan), ulysses_exchange(plan), parallel_timeout(plan))
        return self.tables[per_token]


@dataclass
class Call:
    """One ``generate`` call: its validated config and plan, input image, video size, scheduler
    and stage clock."""

    started: datetime.datetime
    cfg: RunConfig
    raw: Mapping[str, Any]
    plan: RunPlan
    image: Optional[InputImage]
    #: the video (width, height): the plan's size, or derived from the image and the maximum area
    size: Tuple[int, int]
    scheduler: FlowScheduler
    clock: StageClock
    ops: OpTable
    #: a :class:`~.sampling.LoopObserver` of the call (``wanport dump``), or None
    observer: Any = None


def per_token_modulation(plan: RunPlan) -> bool:
    """TI2V with an image: one timestep per token."""
    return bool(plan.preset.per_token_timesteps and plan.image_path is not None)


def pipeline_plan(prep: "Prepared", plan: RunPlan) -> RunPlan:
    """A call's plan with the pipeline's load-time decisions: the resolved precision policy
    (``auto`` is decided once, from the started runtime) and the expert parking FSDP settles."""
    return dataclasses.replace(plan, policy=prep.plan.policy, precision_choice=prep.plan.precision_choice,
                               park_inactive_expert=prep.plan.park_inactive_expert)


def check_request(cfg: RunConfig, source: str = "recipe"):
    """The per-call checks: plan, input image and the video size it gives (no backend, no
    checkpoint). Returns (plan, image, size)."""
    plan = plan_run(cfg, source)
    image, size = None, (plan.width, plan.height)
    if plan.image_path:
        image = load_image(plan.image_path, min_side=plan.preset.spatial_multiple)
        size = output_size(plan.preset, image, plan.width * plan.height)
    return plan, image, size


def check_run(cfg: RunConfig, source: str = "recipe", registry: Optional[Registry] = None, weights=None):
    """Validate without starting the runtime: plan, input image (and the video size it gives),
    backend, checkpoint files (``weights``: a weight source of :mod:`.weights`, default the
    checkpoint). Returns (plan, image, size, registry, spec, ckpts)."""
    plan, image, size = check_request(cfg, source)
    registry, spec = choose_backend(cfg.backend, registry)
    ckpts = as_lora_source(weights or CHECKPOINT).inspect(plan)  # every LoRA file matched too
    from ..quant import check_quant

    check_quant(plan, ckpts)  # quant.keep names, a pre-quantized checkpoint vs the scheme
    return plan, image, size, registry, spec, ckpts


def resolve_dit_ops(registry: Registry, spec, ckpts: CheckpointSet, plan: RunPlan,
                    overrides: Mapping[str, str], mesh=None) -> OpTable:
    """The DiT's op table; with sequence parallelism the self-attention must mask padded keys
    (and return the log-sum-exp for ring attention)."""
    from ..quant.plan import attention_scheme, quant_scheme

    sp = mesh is not None and mesh.sp_degree > 1
    scheme = quant_scheme(plan)
    reqs = dit_requirements(ckpts.dit.config, plan.policy, spec.device_type,
                            per_token_timesteps=per_token_modulation(plan),
                            padded_keys=sp, ring_lse=sp and mesh.ring > 1,
                            quant_scheme=scheme.name if scheme is not None else None,
                            attention_quant=attention_scheme(plan))
    reqs.update(vae_requirements(plan.policy, spec.device_type))  # the VAE's sites share the table
    return resolve_ops(registry, spec, reqs, overrides)


def resolve_precision(plan: RunPlan, requested: Any, runtime, backend: str) -> RunPlan:
    """The plan with its final policy: ``precision: auto`` asks the started runtime whether bf16
    matmuls are native there (official) or emulated (fp32); the choice goes into the report."""
    capability = native_bf16(runtime, backend) if is_auto(requested) else None
    policy, choice = resolve_policy(requested, capability)
    return dataclasses.replace(plan, policy=policy, precision_choice=choice)


def parallel_ops(ops: OpTable, mesh, comm, overlap: bool = True, exchange: str = "collective",
                 timeout_s: float = 600.0) -> OpTable:
    """With sequence parallelism, the self-attention wrapped for the mesh (``overlap``:
    ``parallel.ulysses_overlap``; ``exchange``: ``parallel.ulysses_exchange``)."""
    if mesh is not None and mesh.sp_degree > 1:
        from ..parallel.exchange import make_exchange
        from ..parallel.sequence import wrap_self_attention

        ex = None
        if overlap and mesh.ulysses > 1:
            ex = make_exchange(exchange, getattr(comm, "runtime", None), mesh.ulysses_group, timeout_s)
        return wrap_self_attention(ops, mesh, comm, overlap, ex)
    return ops


def ulysses_overlap(plan: RunPlan) -> bool:
    return plan.parallel is None or bool(getattr(plan.parallel, "ulysses_overlap", True))


def ulysses_exchange(plan: RunPlan) -> str:
    return "collective" if plan.parallel is None else str(getattr(plan.parallel, "ulysses_exchange", "collective"))


def parallel_timeout(plan: RunPlan) -> float:
    return 600.0 if plan.parallel is None else float(getattr(plan.parallel, "timeout_s", 600))


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
    mesh = init_mesh(p.cfg, p.ulysses, p.ring, spec.dist_backend, p.timeout_s, set_device=session.runtime.set_device,
                     device=session.runtime.device)
    return dataclasses.replace(session, device=session.runtime.device()), mesh, comm


def prepare(cfg: RunConfig, registry: Optional[Registry] = None, source: str = "recipe", weights=None,
            resident: bool = False) -> Prepared:
    """Check the recipe (plan, image, backend, checkpoint and LoRA files), start the session and
    the mesh, resolve the op table. Every user error is raised here, before the first weight is read.
    ``resident``: the memory gate plans a pipeline that keeps its models (``Pipeline.from_recipe``)."""
    weights = loras = as_lora_source(weights or CHECKPOINT)
    plan, image, size, registry, spec, ckpts = check_run(cfg, source, registry, weights)
    session = start_session(registry, spec, cfg.env)
    plan = resolve_precision(plan, cfg.precision, session.runtime, spec.name)
    from ..plan.check import refuse_if_unfit, vae_norm_fused

    plan = dataclasses.replace(plan, vae_norm_fused=vae_norm_fused(registry, spec.name, cfg.ops))
    # -- memory gate (wanport plan, docs/plan.md): refuse a recipe predicted not to fit the device,
    # with the layouts that do; before any weight loads or collective starts. `run --force` skips it.
    memory_plan = refuse_if_unfit(plan, ckpts, session.runtime, size, cfg.memory_check, resident)
    session, mesh, comm = start_parallel(plan, spec, session, ckpts)
    ops = parallel_ops(resolve_dit_ops(registry, spec, ckpts, plan, cfg.ops, mesh), mesh, comm, ulysses_overlap(plan),
                       ulysses_exchange(plan), parallel_timeout(plan))
    quant = None
    if ops.quant_linear is not None:  # weights quantized as they load (after merged LoRAs)
        from ..quant import QuantWeights, check_quant

        experts = dict(ckpts.experts) if ckpts.experts else {"": ckpts.dit}
        weights = quant = QuantWeights(weights, check_quant(plan, ckpts), ops.quant_linear.fn, ops.quant_linear.impl,
                                       plan.policy.matmul, {k: c.directory for k, c in experts.items()})
    cfg_parallel = None
    if mesh is not None and mesh.cfg == 2:
        from ..parallel.cfg import CfgParallel

        cfg_parallel = CfgParallel(mesh, comm)
    weights = weights or CHECKPOINT
    p = plan.parallel
    if mesh is not None and (p.dit_fsdp or p.t5_fsdp):
        from ..parallel.fsdp import ShardedWeights

        weights = ShardedWeights(weights, p.dit_fsdp, p.t5_fsdp, spec.device_type, mesh.world)
        if p.dit_fsdp and plan.park_inactive_expert == "auto":  # sharded experts stay where they are
            plan = dataclasses.replace(plan, park_inactive_expert=False)
    if plan.offload is not None and plan.offload.active:
        from ..offload.weights import OffloadWeights

        weights = OffloadWeights(weights, plan.offload, session.runtime, session.device)
        if plan.offload.dit != "none" and plan.park_inactive_expert == "auto":  # both experts are on the host
            plan = dataclasses.replace(plan, park_inactive_expert=False)
    if plan.compile:
        from .compile import CompiledWeights

        weights = CompiledWeights(weights)
    return Prepared(plan, registry, spec, ckpts, session, ops, mesh, comm, cfg_parallel, weights=weights,
                    tables={per_token_modulation(plan): ops}, op_overrides=dict(cfg.ops), loras=loras,
                    memory_plan=memory_plan, quant=quant)


def vae_decode(prep: Prepared, vae, latent: torch.Tensor) -> Optional[torch.Tensor]:
    """The video [3, F, H, W] on the main rank (None elsewhere): the decode split across all ranks
    with ``parallel.vae``, else run on rank 0 alone."""
    z = latent.to(prep.plan.policy.vae)
    mesh = prep.mesh
    if mesh is not None and prep.plan.parallel.vae:
        from ..parallel.vae import VAEPhases, decode_split

        prep.vae_phases = VAEPhases()  # calls and bytes; untimed: no device synchronisation in the loop
        video = decode_split(vae, z, mesh.rank, mesh.world, None, prep.comm, phases=prep.vae_phases)
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


def count_nonfinite(video: Optional[torch.Tensor]) -> int:
    """NaN/Inf values in a decoded video (0 for None), with a warning on stderr when there are
    any: they encode as black, so a diverged sampling would otherwise pass silently. The report
    records the count under ``output.nonfinite_values``."""
    if video is None:
        return 0
    n = int((~torch.isfinite(video)).sum())
    if n:
        print("wanport: warning: the decoded video holds %d NaN/Inf values (they encode as black): the "
              "sampling diverged; the report records it under output.nonfinite_values" % n, file=sys.stderr)
    return n


def parallel_summary(prep: Prepared, denoise: Optional[Dict[str, float]] = None) -> Optional[Dict[str, Any]]:
    """Per-rank peak memory and communication (exposed time, collectives, bytes sent: over the
    pipeline's life, and over this call's denoising loop when ``denoise`` -- a difference of two
    ``CommClock.snapshot()`` -- is given), gathered on every rank (a collective: every rank calls
    it); None for one process."""
    mesh = prep.mesh
    if mesh is None:
        return None
    import torch.distributed as dist

    mine = {"rank": mesh.rank, "device": str(prep.device), "peak_memory_bytes": prep.runtime.peak_memory_bytes(),
            "comm_s": round(prep.comm.seconds, 4), "comm_calls": prep.comm.calls, "comm_bytes": prep.comm.bytes}
    if denoise is not None:
        mine.update(denoise_comm_s=round(denoise["seconds"], 4), denoise_comm_calls=int(denoise["calls"]),
                    denoise_comm_bytes=int(denoise["bytes"]))
    if prep.vae_phases is not None:
        mine["vae_split"] = prep.vae_phases.report()
    ranks: List[Any] = [None] * mesh.world
    dist.all_gather_object(ranks, mine)
    p = prep.plan.parallel
    return {"world": mesh.world, "cfg": p.cfg, "ulysses": p.ulysses, "ring": p.ring,
            "ulysses_overlap": bool(getattr(p, "ulysses_overlap", True)),
            "ulysses_exchange": str(getattr(p, "ulysses_exchange", "collective")), "vae": p.vae,
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


def base_report(prep: Prepared, call: Call, width: int, height: int, frames: int) -> Dict[str, Any]:
    plan, spec, session, ops, clock = call.plan, prep.spec, prep.session, call.ops, call.clock
    runtime = session.runtime
    dit_cfg = prep.ckpts.dit.config
    dit_json = dict(dit_cfg.to_json(), text_dim=dit_cfg.text_dim)
    if dit_cfg.image_dim is not None:
        dit_json["image_dim"] = dit_cfg.image_dim
    return {
        "kind": "wanport.run",
        "started_at": call.started.isoformat(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": plan.preset.name,
        "task": call.cfg.task,
        "checkpoint_dir": os.path.abspath(plan.checkpoint_dir),
        "dit_config": dit_json,
        "recipe": dict(call.raw),
        "recipe_hash": recipe_hash(call.raw),
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt if plan.needs_uncond else None,
        "seed": plan.seed,
        "noise": plan.noise,
        "size": {"width": width, "height": height, "frames": frames, "fps": plan.fps},
        "sampling": {"solver": plan.solver, "steps": call.scheduler.num_steps, "shift": plan.shift,
                     "guide_scale": list(plan.guide_scale) if isinstance(plan.guide_scale, tuple) else plan.guide_scale,
                     "timesteps": [int(t) if float(t).is_integer() else round(float(t), 4)
                                   for t in call.scheduler.timesteps],
                     "denoising_step_list": list(plan.denoising_step_list) if plan.denoising_step_list else None},
        "lora": prep.loras.report() if prep.loras is not None else None,
        "quant": prep.quant.report() if prep.quant is not None else None,
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
        "vae": {"channel_rms_norm": ops.channel_rms_norm.impl if ops.channel_rms_norm is not None else None,
                "memory_format": str(preferred_memory_format(runtime)).replace("torch.", "")},
        "precision": dict(plan.policy.to_dict(), **(plan.precision_choice or {})),
        "stages": dict(clock.as_dict(), total_s=round(clock.total(), 4)),
        "peak_memory": {"bytes": runtime.peak_memory_bytes(),
                        "kind": runtime.peak_memory_kind,
                        "predicted": prep.memory_plan.summary() if prep.memory_plan is not None else None},
        "output": None,
        "versions": versions(backend_versions(spec)),
    }


def image_report(image: Optional[InputImage], out_width: int, out_height: int) -> Optional[Dict[str, Any]]:
    if image is None:
        return None
    return {"path": os.path.abspath(image.path), "width": image.width, "height": image.height,
            "mode": image.source_mode, "exif_rotated": image.exif_rotated,
            "output": {"width": out_width, "height": out_height}}


__all__ = ["Prepared", "Call", "prepare", "pipeline_plan", "resolve_precision", "count_nonfinite", "check_request", "check_run",
           "resolve_dit_ops", "parallel_ops",
           "pad_context", "encode_prompts", "base_report", "image_report", "per_token_modulation"]
