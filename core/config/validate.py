"""Semantic checks of a recipe and the concrete run plan derived from it (no I/O of weights)."""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import ConfigError
from ..precision import PrecisionPolicy, policy_from_config
from .models import MODELS, GuideScale, ModelPreset
from .schema import RunConfig

_SIZE = re.compile(r"^\s*(\d+)\s*[*xX×]\s*(\d+)\s*$")


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs to know, concrete and checked."""

    preset: ModelPreset
    checkpoint_dir: str
    prompt: str
    negative_prompt: str
    #: the video size; with an input image, the maximum area (the image sets the aspect ratio)
    width: int
    height: int
    frame_num: int
    steps: Optional[int]
    shift: float
    #: one CFG scale, or (low_noise, high_noise) for two-expert models
    guide_scale: GuideScale
    solver: str
    timesteps: Optional[Tuple[int, ...]]
    seed: int
    noise: str
    fps: int
    policy: PrecisionPolicy
    video_path: str
    report_path: str
    task: str = "t2v"
    #: the input image (a local path, not yet opened) or None
    image_path: Optional[str] = None
    #: two-expert models: the switch to the low-noise expert below boundary * 1000
    boundary: Optional[float] = None
    #: "auto", True or False
    park_inactive_expert: Union[str, bool] = "auto"
    #: the recipe's ParallelConfig (cfg x ulysses x ring processes, vae, fsdp, t5_cpu, timeout)
    parallel: Any = None
    #: torch.compile the DiT blocks
    compile: bool = False
    #: how ``policy`` was chosen (``requested``, ``resolved``, ``why``); set once the backend has
    #: started (``precision: auto`` asks its runtime), None before
    precision_choice: Optional[Dict[str, Any]] = None
    #: solver "distill": the distilled model's training timesteps
    denoising_step_list: Optional[Tuple[int, ...]] = None
    #: the recipe's LoRAs (``wanport.lora.spec.LoraSpec``), in order
    loras: Tuple[Any, ...] = ()
    lora_strict: bool = True
    #: the recipe's QuantConfig (``quant.dit`` scheme, ``quant.attention``, ``keep``); the keep
    #: names are checked against the DiT at inspection (``wanport.quant.plan``)
    quant: Any = None
    #: the recipe's ``offload:`` settings besides expert parking (``wanport.offload.OffloadPlan``)
    offload: Any = None
    #: the checked ``cache:`` section (``wanport.cache.config.CacheSettings``); None: exact
    cache: Any = None
    #: the backend runs the VAE's norm + SiLU as one kernel (its own ``channel_rms_norm``), which
    #: holds fewer copies of a layer's input than the plain-PyTorch form (the memory plan's VAE
    #: work factor); set once the backend is chosen (``wanport.plan.check.vae_norm_fused``)
    vae_norm_fused: bool = False

    @property
    def world(self) -> int:
        from ..parallel.config import world_size

        return world_size(self.parallel) if self.parallel is not None else 1

    @property
    def latent_shape(self) -> Tuple[int, int, int, int]:
        st, sh, sw = self.preset.vae_stride
        return (self.preset.z_dim, (self.frame_num - 1) // st + 1, self.height // sh, self.width // sw)

    @property
    def guide_scales(self) -> Tuple[float, float]:
        """(low_noise, high_noise); the same number twice for a single-expert model."""
        g = self.guide_scale
        return (float(g[0]), float(g[1])) if isinstance(g, tuple) else (float(g), float(g))

    @property
    def needs_uncond(self) -> bool:
        """False when every guide scale is 1.0: the unconditional forward is skipped."""
        return any(g != 1.0 for g in self.guide_scales)

    @property
    def num_steps(self) -> int:
        if self.denoising_step_list:
            return len(self.denoising_step_list)
        return len(self.timesteps) if self.timesteps else int(self.steps or 0)


def parse_size(text: str) -> Tuple[int, int]:
    m = _SIZE.match(text)
    if not m:
        raise ValueError("size %r must look like W*H (e.g. 832*480)" % text)
    return int(m.group(1)), int(m.group(2))


def plan_run(cfg: RunConfig, source: str = "recipe") -> RunPlan:
    """Check every value against the model and each other; one ConfigError lists all problems."""
    problems: List[str] = []
    preset = MODELS.get(cfg.model)
    if preset is None:
        close = difflib.get_close_matches(cfg.model, list(MODELS), n=1)
        hint = " (did you mean %r?)" % close[0] if close else ""
        raise ConfigError("%s: model: unknown model %r%s; known: %s"
                          % (source, cfg.model, hint, ", ".join(sorted(MODELS))))
    s = cfg.sample
    if cfg.task != preset.task:
        problems.append("task: %r does not match model %s, which does %s" % (cfg.task, preset.name, preset.task))
    image = cfg.image.strip() if isinstance(cfg.image, str) and cfg.image.strip() else None
    if preset.image == "required" and image is None:
        problems.append("image: model %s is image-to-video and needs an input image (image: path/to/picture.jpg)"
                        % preset.name)
    elif preset.image == "none" and image is not None:
        problems.append("image: model %s is text-to-video and takes no image; remove `image:` or choose an "
                        "image-to-video model" % preset.name)
    if not cfg.prompt or not cfg.prompt.strip():
        problems.append("prompt: must not be empty")
    if not cfg.checkpoint_dir:
        problems.append("checkpoint_dir: must not be empty")

    width = height = 0
    try:
        width, height = parse_size(s.size or preset.size)
    except ValueError as exc:
        problems.append("sample.size: %s" % exc)
    else:
        m = preset.spatial_multiple
        if width <= 0 or height <= 0:
            problems.append("sample.size: width and height must be positive")
        elif width % m or height % m:
            problems.append(
                "sample.size: %dx%d is not divisible by %d (VAE stride %d x patch %d); try %d*%d"
                % (width, height, m, preset.vae_stride[1], preset.patch_size[1],
                   max(m, round(width / m) * m), max(m, round(height / m) * m)))
        elif max(width, height) // m > 1024:
            problems.append("sample.size: %dx%d exceeds the rotary table (1024 positions per axis)" % (width, height))

    frame_num = s.frame_num if s.frame_num is not None else preset.frame_num
    if frame_num < 1 or (frame_num - 1) % preset.vae_stride[0]:
        n = max(0, round((frame_num - 1) / 4))
        problems.append("sample.frame_num: %d is not 4n+1 (the VAE compresses time 4x); try %d"
                        % (frame_num, 4 * n + 1))

    steps = s.steps if s.steps is not None else (None if s.timesteps else preset.steps)
    timesteps = tuple(s.timesteps) if s.timesteps else None
    if steps is not None and steps <= 0:
        problems.append("sample.steps: must be > 0, got %d" % steps)
    if timesteps is not None:
        if s.solver != "euler":
            problems.append("sample.timesteps: an explicit step list needs sample.solver: euler")
        if s.steps is not None and s.steps != len(timesteps):
            problems.append("sample.steps: %d disagrees with the %d entries of sample.timesteps (drop one of them)"
                            % (s.steps, len(timesteps)))
        if any(t <= 0 or t > 1000 for t in timesteps) or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
            problems.append("sample.timesteps: must be strictly decreasing integers in (0, 1000]")

    step_list = _distill(s, problems)
    if step_list is not None and s.steps is None:
        steps = len(step_list)

    shift = s.shift if s.shift is not None else preset.default_shift(width, height)
    if not math.isfinite(shift):
        problems.append("sample.shift: must be a finite number > 0, got %g" % shift)
    elif shift <= 0:
        problems.append("sample.shift: must be > 0, got %g" % shift)
    guide = _guide(s.guide_scale, preset, problems)
    boundary = s.boundary if s.boundary is not None else preset.boundary
    if s.boundary is not None and not preset.experts:
        problems.append("sample.boundary: model %s has one expert; the boundary is for two-expert (A14B) models"
                        % preset.name)
    elif boundary is not None and not (0.0 < boundary < 1.0):
        problems.append("sample.boundary: must be in (0, 1) (the switch happens at boundary*1000), got %g" % boundary)
    park = cfg.offload.park_inactive_expert
    if park is True and not preset.experts:
        problems.append("offload.park_inactive_expert: model %s has one expert; parking is for two-expert models"
                        % preset.name)
    if s.seed < 0 or s.seed >= 2**63:
        problems.append("sample.seed: must be in [0, 2**63), got %d" % s.seed)

    fps = cfg.output.fps if cfg.output.fps is not None else preset.fps
    if fps <= 0:
        problems.append("output.fps: must be > 0, got %d" % fps)
    name = cfg.output.name or "%s_%s_seed%d" % (preset.name, cfg.task, s.seed)
    if os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        problems.append("output.name: %r must be a file stem, not a path (use output.dir for the folder)" % name)
    out_dir = cfg.output.dir
    if not out_dir or not out_dir.strip():
        problems.append("output.dir: must not be empty (use . for the working directory)")
    elif not any(p.startswith("output.name:") for p in problems):
        from ..io.location import writable_problems
        from ..parallel.config import world_size

        # proven by writing a probe file (check does it too); several processes keep the folder
        problems.extend(writable_problems(out_dir, [name + ".mp4", name + ".json"],
                                          keep_created=world_size(cfg.parallel) > 1))

    policy = None
    try:
        policy = policy_from_config(cfg.precision)
    except ConfigError as exc:
        problems.append(str(exc))

    for key in cfg.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            problems.append("env: %r is not a valid environment variable name" % key)

    from ..parallel.config import check_parallel

    needs_uncond = any(g != 1.0 for g in (guide if isinstance(guide, tuple) else (guide,)))
    heads = preset.arch.get("num_heads") if preset.arch else None
    st, sh, sw = preset.vae_stride
    problems.extend(check_parallel(cfg.parallel, heads, preset.name, needs_uncond, max(height // sh, 0),
                                   park_experts=cfg.offload.park_inactive_expert))

    from ..offload.settings import check_offload

    offload = check_offload(cfg.offload, experts=bool(preset.experts), park=park, dit_fsdp=cfg.parallel.dit_fsdp,
                            t5_fsdp=cfg.parallel.t5_fsdp, compile_=cfg.compile, problems=problems)

    from ..lora.spec import plan_loras

    loras = plan_loras(cfg.lora, bool(preset.experts), problems)
    if cfg.quant.dit != "none" and any(not getattr(l, "merge", True) for l in loras or ()):
        problems.append("lora: merge: false cannot be combined with quant.dit: %s (the unmerged side path needs the "
                        "unquantized Linear); set merge: true, the LoRA is then merged before quantizing"
                        % cfg.quant.dit)

    from ..cache.config import check_cache

    n_steps = len(timesteps) if timesteps else int(steps or 0)
    cache = check_cache(cfg.cache, preset.name, n_steps, cfg.image is not None, problems)

    if problems:
        if len(problems) == 1:
            raise ConfigError("%s: %s" % (source, problems[0]))
        raise ConfigError("%s has %d problems:\n  - %s" % (source, len(problems), "\n  - ".join(problems)))

    return RunPlan(
        preset=preset,
        checkpoint_dir=cfg.checkpoint_dir,
        prompt=cfg.prompt,
        negative_prompt=cfg.negative_prompt or preset.negative_prompt,
        width=width,
        height=height,
        frame_num=frame_num,
        steps=steps,
        shift=shift,
        guide_scale=guide,
        solver=s.solver,
        timesteps=timesteps,
        seed=s.seed,
        noise=s.noise,
        fps=fps,
        policy=policy,
        video_path=os.path.join(out_dir, name + ".mp4"),
        report_path=os.path.join(out_dir, name + ".json"),
        task=cfg.task,
        image_path=image,
        boundary=boundary,
        park_inactive_expert=park,
        parallel=cfg.parallel,
        compile=cfg.compile,
        denoising_step_list=step_list,
        loras=loras,
        lora_strict=cfg.lora_strict,
        quant=cfg.quant,
        offload=offload,
        cache=cache,
    )


def _distill(s, problems: List[str]) -> Optional[Tuple[int, ...]]:
    """``sample.solver: distill`` and its ``denoising_step_list``, checked."""
    if s.solver != "distill":
        if s.denoising_step_list is not None:
            problems.append("sample.denoising_step_list: only for sample.solver: distill (the step-distilled models)")
        return None
    if s.denoising_step_list is None:
        problems.append("sample.denoising_step_list: sample.solver distill needs the distilled model's trained "
                        "timesteps, e.g. [1000, 750, 500, 250]")
        return None
    from ..schedulers.step_distill import check_step_list

    try:
        steps = check_step_list(s.denoising_step_list)
    except ConfigError as exc:
        problems.append("sample.%s" % exc)
        return None
    if s.steps is not None and s.steps != len(steps):
        problems.append("sample.steps: %d disagrees with the %d entries of sample.denoising_step_list (drop steps)"
                        % (s.steps, len(steps)))
    return steps


def _guide(value, preset: ModelPreset, problems: List[str]) -> GuideScale:
    """The recipe's guide scale (or the model's): a number, or (low, high) for two experts."""
    if value is None:
        value = preset.guide_scale
    if isinstance(value, (list, tuple)):
        if not preset.experts:
            problems.append("sample.guide_scale: model %s has one expert; give one number, not a pair" % preset.name)
            return 1.0
        pair = (float(value[0]), float(value[1]))
        if not all(math.isfinite(v) for v in pair):
            problems.append("sample.guide_scale: must be finite numbers > 0, got %s" % list(pair))
        elif min(pair) <= 0:
            problems.append("sample.guide_scale: must be > 0 (1.0 disables guidance), got %s" % list(pair))
        return pair
    if not math.isfinite(value):
        problems.append("sample.guide_scale: must be a finite number > 0, got %g" % value)
    elif value <= 0:
        problems.append("sample.guide_scale: must be > 0 (1.0 disables guidance), got %g" % value)
    # a single number for a two-expert model applies to both (as the official CLI does)
    return (float(value), float(value)) if preset.experts else float(value)
