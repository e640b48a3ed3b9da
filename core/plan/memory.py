"""The memory plan of a recipe: a timeline of stages, what is resident on each rank's device and
in host memory at each, the peak, and whether it fits.

The stages follow the task modules (``pipeline/t2v.py``, ``i2v.py``, ``ti2v.py``):

* ``text_encode``: the T5 (weights + one prompt's activations), alone on the device (TI2V: the
  VAE is loaded beside it). The T5 is released before the DiT loads.
* ``image_encode`` (Wan2.1 I2V): the CLIP tower, released after.
* ``vae_encode`` (I2V; TI2V with an image): the VAE encoding the conditioning video.
* ``denoise``: the DiT (two experts for Wan2.2 A14B unless the inactive one is parked in host
  memory; FSDP: this rank's shard plus the gathered root and two gathered blocks), the VAE
  weights, the text contexts and loop state, the peak of one forward, and with ``cache:`` on the
  cached residuals (``plan/cache.py``).
* ``vae_decode``: the VAE weights and the decode (the DiT is gone).

A resident pipeline (``Layout.resident``: ``wanport.Pipeline``) keeps every loaded model through
every stage instead: the T5 (unless on the host), CLIP, the DiT (its device copy: all of it; with
``offload.dit: block`` its root; with ``model`` nothing outside the loop) and the VAE (unless kept
on the host until the decode).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..parallel.config import Degrees
from ..precision import PrecisionPolicy
from . import constants as K
from .activations import Tokens, clip_activation_bytes, dit_forward_peak, t5_activation_bytes, tokens, vae_peak
from .arch import Architecture
from .cache import cached_bytes
from .weights import TensorSet, clip_tensors, dit_tensors, t5_tensors, vae_tensors

#: DiT offload modes (``offload.dit``, ``wanport.offload``): on the device; in host memory with a
#: device copy during the denoising loop only (model); blocks streamed from host memory (block)
DIT_OFFLOAD_MODES = ("none", "model", "block")
#: Layout quantization modes the suggestions try: "none" only (quantization is lossy: only a recipe
#: asks for it, through quant.dit, which predict() counts in the DiT's TensorSet).
QUANTIZATION_MODES = ("none",)


@dataclass(frozen=True)
class Layout(Degrees):
    """The knobs of a recipe that change memory (and step time)."""

    dit_fsdp: bool = False
    t5_fsdp: bool = False
    t5_cpu: bool = False
    vae_split: bool = False
    #: True, False or "auto" (decided from the device memory as ``pipeline/moe.py`` does)
    park_inactive_expert: Union[bool, str] = "auto"
    offload_dit: str = "none"
    #: ``offload.prefetch``: blocks copied ahead of the running one (``offload_dit == "block"``)
    prefetch: int = 1
    #: ``offload.vae: host_until_decode``
    vae_host: bool = False
    #: ``parallel.ulysses_exchange``: ``copy_engine`` keeps its send buffers (symmetric memory,
    #: outside the caching allocator) for the pipeline's life
    ulysses_exchange: str = "collective"
    ulysses_overlap: bool = True
    quantization: str = "none"
    #: the resident pipeline (``wanport.Pipeline``: every model loaded once and kept, T5 and the
    #: DiT through the decode) instead of the one-video run (``wanport run``: T5 released after
    #: encoding, the DiT before the decode)
    resident: bool = False

    @classmethod
    def from_plan(cls, plan, resident: bool = False) -> "Layout":
        p, off = plan.parallel, plan.offload
        kw: Dict[str, Any] = {"park_inactive_expert": plan.park_inactive_expert, "resident": bool(resident)}
        if off is not None:
            kw.update(offload_dit=off.dit, prefetch=off.prefetch, vae_host=off.vae == "host_until_decode",
                      t5_cpu=off.text_encoder == "host")
        if p is None:
            return cls(**kw)
        kw["t5_cpu"] = kw.get("t5_cpu", False) or p.t5_cpu
        return cls(cfg=p.cfg, ulysses=p.ulysses, ring=p.ring, dit_fsdp=p.dit_fsdp, t5_fsdp=p.t5_fsdp,
                   vae_split=p.vae, ulysses_exchange=str(getattr(p, "ulysses_exchange", "collective")),
                   ulysses_overlap=bool(getattr(p, "ulysses_overlap", True)), **kw)

    def overrides(self, experts: bool) -> List[str]:
        """The recipe overrides that select this layout (every knob, so it reads on its own)."""
        out = ["parallel.cfg=%d" % self.cfg, "parallel.ulysses=%d" % self.ulysses, "parallel.ring=%d" % self.ring,
               "parallel.dit_fsdp=%s" % _b(self.dit_fsdp), "parallel.t5_fsdp=%s" % _b(self.t5_fsdp),
               "parallel.t5_cpu=%s" % _b(self.t5_cpu), "parallel.vae=%s" % _b(self.vae_split),
               "offload.text_encoder=%s" % ("host" if self.t5_cpu else "device"), "offload.dit=%s" % self.offload_dit,
               "offload.vae=%s" % ("host_until_decode" if self.vae_host else "device")]
        if self.offload_dit == "block":
            out.append("offload.prefetch=%d" % self.prefetch)
        if experts:
            v = self.park_inactive_expert
            out.append("offload.park_inactive_expert=%s" % (v if isinstance(v, str) else _b(v)))
        return out

    def describe(self) -> str:
        parts = []
        if self.cfg > 1:
            parts.append("cfg%d" % self.cfg)
        if self.ulysses > 1:
            parts.append("ulysses%d" % self.ulysses)
        if self.ring > 1:
            parts.append("ring%d" % self.ring)
        for key, label in (("dit_fsdp", "dit-fsdp"), ("t5_fsdp", "t5-fsdp"), ("t5_cpu", "t5-on-host"),
                           ("vae_split", "vae-split")):
            if getattr(self, key):
                parts.append(label)
        if self.park_inactive_expert is True:
            parts.append("park-expert")
        if self.offload_dit != "none":
            parts.append("dit-%s" % self.offload_dit)
        if self.vae_host:
            parts.append("vae-on-host")
        if self.resident:
            parts.append("resident")
        return "+".join(parts) or "single device"


def _b(v: bool) -> str:
    return "true" if v else "false"


@dataclass
class Stage:
    name: str
    #: component -> bytes on this rank's device
    device: Dict[str, int]
    #: what the stage is, in words (what was released before it, etc.)
    note: str = ""

    @property
    def peak(self) -> int:
        return sum(self.device.values())


@dataclass
class RankPlan:
    """One rank role (rank 0, or the other ranks when they differ)."""

    ranks: str
    stages: List[Stage]
    host: Dict[str, int]

    @property
    def peak(self) -> int:
        return max(s.peak for s in self.stages)

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=lambda s: s.peak).name

    @property
    def host_peak(self) -> int:
        return sum(self.host.values())


@dataclass
class MemoryPlan:
    model: str
    size: Tuple[int, int]
    frames: int
    tokens: Tokens
    layout: Layout
    policy: str
    arch_source: str
    weights: Dict[str, Dict[str, int]]
    ranks: List[RankPlan]
    #: the device's memory in bytes (None: unknown), and where the number came from
    device_memory: Optional[int] = None
    device_memory_source: str = "unknown"
    #: True when the "device" is the host itself (the reference backend): one memory for both
    device_is_host: bool = False
    park_decision: str = ""
    notes: List[str] = field(default_factory=list)
    #: the feature cache's stored tensors per rank (``plan/cache.py``): method, states, residual
    #: and input bytes; empty when the cache is off
    feature_cache: Dict[str, Any] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        """The largest allocated peak over ranks and stages (compare with the measured peak)."""
        return max(r.peak for r in self.ranks)

    @property
    def required(self) -> int:
        """What the device must hold: the peak plus the allocator's slack and the runtime's reserve.
        When the device is the host, every rank's device peak and process memory share its RAM
        (and there is no driver context to reserve for)."""
        if self.device_is_host:
            per_process = int(self.peak * (1.0 + K.ALLOCATOR_SLACK)) + self.host_peak - self.peak
            return per_process * self.layout.world
        return int(self.peak * (1.0 + K.ALLOCATOR_SLACK)) + K.RUNTIME_RESERVE_BYTES

    @property
    def host_peak(self) -> int:
        """Host memory of one process (the largest rank)."""
        return max(r.host_peak for r in self.ranks)

    @property
    def fits(self) -> Optional[bool]:
        if self.device_memory is None:
            return None
        return self.required <= self.device_memory

    def summary(self) -> Dict[str, Any]:
        """The prediction in a run report, beside the measured peak: per stage of rank 0."""
        rank = self.ranks[0]
        return {"peak_bytes": rank.peak, "peak_stage": rank.peak_stage, "required_bytes": self.required,
                "stages": {s.name: s.peak for s in rank.stages}, "host_peak_bytes": rank.host_peak,
                "device_memory_bytes": self.device_memory, "fits": self.fits}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model, "size": list(self.size), "frames": self.frames,
            "tokens": dataclasses.asdict(self.tokens), "layout": dataclasses.asdict(self.layout),
            "policy": self.policy, "architecture_from": self.arch_source, "weights_bytes": self.weights,
            "ranks": [{"ranks": r.ranks, "peak_bytes": r.peak, "peak_stage": r.peak_stage,
                       "stages": [{"name": s.name, "peak_bytes": s.peak, "device_bytes": dict(s.device),
                                   "note": s.note} for s in r.stages],
                       "host_bytes": dict(r.host), "host_peak_bytes": r.host_peak} for r in self.ranks],
            "peak_bytes": self.peak, "required_bytes": self.required, "host_peak_bytes": self.host_peak,
            "allocator_slack": K.ALLOCATOR_SLACK, "runtime_reserve_bytes": K.RUNTIME_RESERVE_BYTES,
            "device_memory_bytes": self.device_memory, "device_memory_source": self.device_memory_source,
            "device_is_host": self.device_is_host, "fits": self.fits, "park_decision": self.park_decision,
            "notes": list(self.notes), "feature_cache": dict(self.feature_cache),
        }


# ----------------------------------------------------------------------------- pieces


def fsdp_resident(ts: TensorSet, degree: int, unit_prefix: str, unit_count: int) -> Tuple[int, int]:
    """(sharded bytes resident all the time, gathered bytes during a forward) under FSDP2: the
    root's own parameters are gathered for the whole forward, each unit (block) for its own
    forward, with the next one prefetched: two units gathered at once."""
    sharded = ts.sharded_bytes(degree)
    root = ts.without(unit_prefix)
    unit = ts.subset(unit_prefix + "0.")
    gathered = root.bytes - root.sharded_bytes(degree) + min(2, unit_count) * (unit.bytes - unit.sharded_bytes(degree))
    return sharded, gathered


def _latent_bytes(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * 4


def predict(plan, arch: Architecture, layout: Optional[Layout] = None, device_memory: Optional[int] = None,
            device_memory_source: str = "unknown", device_is_host: bool = False,
            size: Optional[Tuple[int, int]] = None) -> MemoryPlan:
    """The memory plan of ``plan`` (a validated RunPlan) on ``arch`` under ``layout`` (default:
    the recipe's own). ``size``: the video (width, height) when an input image decided it."""
    layout = layout or Layout.from_plan(plan)
    if layout.offload_dit not in DIT_OFFLOAD_MODES:
        raise ValueError("offload.dit %r is not implemented (known: %s)" % (layout.offload_dit, DIT_OFFLOAD_MODES))
    if layout.quantization not in QUANTIZATION_MODES:
        raise ValueError("quantization %r is not implemented (known: %s)" % (layout.quantization, QUANTIZATION_MODES))
    policy: PrecisionPolicy = plan.policy
    preset = plan.preset
    width, height = size or (plan.width, plan.height)
    st, sh, sw = preset.vae_stride
    latent_shape = (preset.z_dim, (plan.frame_num - 1) // st + 1, height // sh, width // sw)
    tok = tokens(latent_shape, arch.dit.patch_size, layout.sp)
    world = layout.world
    with_image = plan.image_path is not None
    notes: List[str] = []

    quant = getattr(plan, "quant", None)  # quantized Linears (docs/quantization.md): a recipe property
    if quant is not None and quant.dit != "none":
        dit = dit_tensors(arch.dit, policy, quant.dit, tuple(quant.keep))
    else:
        dit = dit_tensors(arch.dit, policy)
    t5 = t5_tensors(arch.t5, policy.text_encoder)
    vae = vae_tensors(arch.vae_kind, arch.vae_config, policy.vae)
    clip = clip_tensors(arch.clip, policy.image_encoder) if arch.clip and preset.clip else None
    weights = {"dit": dit.by_dtype(), "t5": t5.by_dtype(), "vae": vae.by_dtype()}
    if arch.experts > 1:
        weights["dit"] = {k: v * arch.experts for k, v in weights["dit"].items()}
    if clip is not None:
        weights["clip"] = clip.by_dtype()

    # -- the DiT on the device during denoising
    fsdp = layout.dit_fsdp and world > 1
    if fsdp:
        one_resident, gathered = fsdp_resident(dit, world, "blocks.", arch.dit.num_layers)
    else:
        one_resident, gathered = dit.bytes, 0
    offload = layout.offload_dit if not fsdp else "none"
    root = dit.without("blocks.").bytes
    block_bytes = dit.subset("blocks.0.").bytes  # every block has the same tensors
    streamed = min(arch.dit.num_layers, layout.prefetch + 2) * block_bytes  # wanport/offload/blocks.py
    park = layout.park_inactive_expert
    park_why = ""
    if arch.experts > 1 and offload != "none":
        park, park_why = False, "offload.dit %s: both experts in host memory, nothing to park" % offload
    elif arch.experts > 1:
        if fsdp and park == "auto":
            park, park_why = False, "auto: sharded experts stay on the device (dit_fsdp)"
        elif park == "auto":
            if device_is_host or device_memory is None:
                park, park_why = False, ("auto: the device is the host" if device_is_host
                                         else "auto: device memory unknown, both experts loaded (as the run does)")
            else:
                free = device_memory - K.RUNTIME_RESERVE_BYTES - vae.bytes
                park = 2 * one_resident > free - 0.15 * device_memory  # pipeline/moe.py decide_parking
                park_why = "auto: both experts %s in free device memory" % ("do not fit" if park else "fit")
        else:
            park_why = "recipe: park_inactive_expert %s" % _b(bool(park))
    else:
        park = False
    experts_on_device = 1 if park else arch.experts
    if offload == "block":  # every expert's root stays; the running expert's blocks stream
        dit_device = arch.experts * root + streamed
        dit_idle = arch.experts * root
    else:
        dit_device = experts_on_device * one_resident
        dit_idle = 0 if offload == "model" else dit_device

    # -- one forward's activations
    per_token = preset.per_token_timesteps and with_image
    fwd = dit_forward_peak(arch.dit, policy, tok, layout.ulysses, layout.ring, per_token)
    ctx_bytes = (2 if plan.needs_uncond and layout.cfg == 1 else 1) * arch.dit.text_len * arch.t5["d_model"] \
        * _size(policy.text_encoder)
    lat = _latent_bytes(latent_shape)
    # latent, the two predictions, the scheduler's history (UniPC keeps two model outputs and the
    # previous sample), the gathered prediction under CFG parallel
    loop_state = 6 * lat
    cond = 0
    if preset.task == "i2v":
        cond = _latent_bytes((arch.dit.in_dim - arch.dit.out_dim,) + latent_shape[1:])
        if clip is not None:
            n = (int(arch.clip["image_size"]) // int(arch.clip["patch_size"])) ** 2 + 1
            cond += 2 * n * int(arch.clip["hidden_size"]) * _size(policy.image_encoder)

    # -- the feature cache's stored residuals (docs/caching.md): the denoise stage only
    feature_cache = cached_bytes(getattr(plan, "cache", None), arch.dit.dim, policy, tok, arch.experts,
                                 2 if plan.needs_uncond and layout.cfg == 1 else 1, per_token)
    cache_device = feature_cache["residuals"] + feature_cache["inputs"]

    # the copy-engine exchange's send buffers: q and k (two [S_local, dim] tensors in all chunks), v,
    # and the outputs (which reuse v's as they are freed; one more set at most), in the attention
    # dtype, kept from the first forward on
    exchange_pool = 0
    if layout.ulysses > 1 and layout.ulysses_overlap and layout.ulysses_exchange == "copy_engine":
        exchange_pool = 4 * tok.local * arch.dit.dim * _size(policy.attention)

    # -- VAE peaks
    split = world if layout.vae_split and world > 1 else 1
    frames = plan.frame_num

    def vae_stage(part: str, main: bool, enc_frames: int) -> Dict[str, int]:
        return vae_peak(arch.vae_kind, arch.vae_config, part, enc_frames, height, width, sh, policy.vae, split, main,
                        norm_fused=bool(getattr(plan, "vae_norm_fused", False)))

    t5_dev = 0 if layout.t5_cpu else (
        sum(fsdp_resident(t5, world, "blocks.", int(arch.t5["num_layers"])))
        if layout.t5_fsdp and world > 1 else t5.bytes)
    t5_act = t5_activation_bytes(arch.t5, policy.text_encoder, arch.dit.text_len)

    resident = layout.resident
    clip_bytes = clip.bytes if clip is not None else 0
    vae_idle = 0 if layout.vae_host else vae.bytes  # the VAE outside its encode/decode

    def kept(stage: str) -> Dict[str, int]:
        """A resident pipeline's other models, on the device through every stage (the one-video
        run loads each on first use, releases the T5 and CLIP after encoding, the DiT before the decode)."""
        if not resident:
            return {}
        out = {}
        if stage != "text_encode" and not layout.t5_cpu:
            out["t5_weights"] = t5_dev
        if stage not in ("image_encode",) and clip_bytes:
            out["clip_weights"] = clip_bytes
        if stage in ("text_encode", "image_encode", "vae_encode", "vae_decode") and dit_idle:
            out["dit_weights"] = dit_idle
        if stage in ("text_encode", "image_encode") and vae_idle:
            out["vae_weights"] = vae_idle
        return out

    def stages_for(main: bool) -> List[Stage]:
        out: List[Stage] = []
        te: Dict[str, int] = {}
        if not layout.t5_cpu:
            te = {"t5_weights": t5_dev, "t5_activations": t5_act}
        if preset.task == "ti2v" and vae_idle:
            te["vae_weights"] = vae.bytes
        te.update(kept("text_encode"))
        out.append(Stage("text_encode", te, "T5 on the host (offload.text_encoder: host)" if layout.t5_cpu
                         else "the T5 stays (resident pipeline)" if resident
                         else "the T5 is released after this stage"))
        if preset.task == "i2v" and clip is not None:
            ie = {"clip_weights": clip.bytes, "clip_activations": clip_activation_bytes(arch.clip, policy.image_encoder),
                  "contexts": ctx_bytes}
            ie.update(kept("image_encode"))
            out.append(Stage("image_encode", ie, "the CLIP tower stays (resident pipeline)" if resident
                             else "the CLIP tower is released after this stage"))
        if preset.task == "i2v" or (preset.task == "ti2v" and with_image):
            enc_frames = frames if preset.task == "i2v" else 1
            enc = vae_stage("encode", main, enc_frames)
            ve = {"vae_weights": vae.bytes, "vae_work": enc["work"], "vae_cache": enc["cache"],
                  "video_in": enc["video"], "contexts": ctx_bytes}
            ve.update(kept("vae_encode"))
            out.append(Stage("vae_encode", ve, "the conditioning video (%d frames) encoded" % enc_frames))
        den = {"dit_weights": dit_device, "contexts": ctx_bytes + cond, "loop_state": loop_state,
               "forward_activations": fwd["peak"]}
        if exchange_pool:
            den["ulysses_exchange_buffers"] = exchange_pool
        if vae_idle:
            den["vae_weights"] = vae_idle
        if gathered:
            den["fsdp_gathered"] = gathered
        if cache_device:
            den["cache_residuals"] = cache_device
        den.update(kept("denoise"))
        how = ("blocks streamed: root + %d of %d blocks on the device" % (min(arch.dit.num_layers, layout.prefetch + 2),
                                                                           arch.dit.num_layers)
               if offload == "block" else "%d expert(s) on the device%s" % (experts_on_device,
                                                                          ", FSDP shard %d" % world if fsdp else ""))
        if cache_device:
            how += "; feature cache: %d state(s) of %s" % (
                feature_cache["states"], "2 residuals" if plan.cache.method == "first_block" else "1 residual")
        out.append(Stage("denoise", den, "%s; %d tokens on this rank (%d in all)" % (how, tok.local, tok.total)))
        if main or split > 1:
            dec = vae_stage("decode", main, frames)
            vd = {"vae_weights": vae.bytes, "vae_work": dec["work"], "vae_cache": dec["cache"],
                  "video_out": dec["video"], "latent": lat}
            if exchange_pool:
                vd["ulysses_exchange_buffers"] = exchange_pool
            vd.update(kept("vae_decode"))
            out.append(Stage("vae_decode", vd, "the T5 and the DiT stay (resident pipeline)" if resident
                             else "the DiT is released before the decode"))
        else:
            vd = {"vae_weights": vae_idle}
            vd.update(kept("vae_decode"))
            out.append(Stage("vae_decode", vd, "rank 0 decodes alone"))
        return out

    def host_for(main: bool, device_stages: List[Stage]) -> Dict[str, int]:
        host = {"process_base": K.HOST_BASE_BYTES}
        if layout.t5_cpu:
            host["t5"] = t5.bytes + t5_act
        if park and arch.experts > 1:
            host["parked_experts"] = arch.experts * one_resident  # every expert's host copy (pinned)
        if offload == "block":
            host["dit_blocks"] = arch.experts * (dit.bytes - root)  # pinned, streamed through the device
        elif offload == "model":
            host["dit"] = arch.experts * dit.bytes  # pinned; the device copy exists while denoising
        if layout.vae_host:
            host["vae"] = vae.bytes
        if main:
            host["video_out"] = 3 * frames * height * width * (4 + 1)  # float32 on the host, uint8 frames
        if device_is_host:
            host["device_peak"] = max(s.peak for s in device_stages)
        return host

    ranks: List[RankPlan] = []
    main_stages = stages_for(True)
    ranks.append(RankPlan("0" if world > 1 else "all", main_stages, host_for(True, main_stages)))
    if world > 1:
        other = stages_for(False)
        ranks.append(RankPlan("1..%d" % (world - 1), other, host_for(False, other)))
    if plan.image_path is not None and size is None:
        notes.append("with an input image the recipe's size is the maximum area; the image's aspect ratio decides "
                     "the grid (planned here at the recipe's size)")
    notes.append("the VAE and encoder terms carry factors fitted to the H200 measurements (docs/plan.md)")
    return MemoryPlan(model=preset.name, size=(width, height), frames=frames, tokens=tok, layout=dataclasses.replace(
        layout, park_inactive_expert=park if arch.experts > 1 else layout.park_inactive_expert),
        policy=policy.name, arch_source=arch.source, weights=weights, ranks=ranks, device_memory=device_memory,
        device_memory_source=device_memory_source, device_is_host=device_is_host, park_decision=park_why,
        notes=notes, feature_cache=dict(feature_cache, method=plan.cache.method) if cache_device else {})


def _size(dt: torch.dtype) -> int:
    from .weights import itemsize

    return itemsize(dt)


__all__ = ["Layout", "Stage", "RankPlan", "MemoryPlan", "predict", "fsdp_resident", "DIT_OFFLOAD_MODES",
           "QUANTIZATION_MODES"]
