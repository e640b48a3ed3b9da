"""Semantic checks of a recipe and the concrete run plan derived from it (no I/O of weights)."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..errors import ConfigError
from ..precision import PrecisionPolicy, policy_from_config
from .models import DEFAULT_NEGATIVE_PROMPT, MODELS, ModelPreset
from .schema import RunConfig

_SIZE = re.compile(r"^\s*(\d+)\s*[*xX×]\s*(\d+)\s*$")


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs to know, concrete and checked."""

    preset: ModelPreset
    checkpoint_dir: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    frame_num: int
    steps: Optional[int]
    shift: float
    guide_scale: float
    solver: str
    timesteps: Optional[Tuple[int, ...]]
    seed: int
    noise: str
    fps: int
    policy: PrecisionPolicy
    video_path: str
    report_path: str

    @property
    def latent_shape(self) -> Tuple[int, int, int, int]:
        st, sh, sw = self.preset.vae_stride
        return (self.preset.z_dim, (self.frame_num - 1) // st + 1, self.height // sh, self.width // sw)

    @property
    def num_steps(self) -> int:
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

    shift = s.shift if s.shift is not None else preset.shift
    if shift <= 0:
        problems.append("sample.shift: must be > 0, got %g" % shift)
    guide = s.guide_scale if s.guide_scale is not None else preset.guide_scale
    if guide <= 0:
        problems.append("sample.guide_scale: must be > 0 (1.0 disables guidance), got %g" % guide)
    if s.seed < 0 or s.seed >= 2**63:
        problems.append("sample.seed: must be in [0, 2**63), got %d" % s.seed)

    fps = cfg.output.fps if cfg.output.fps is not None else preset.fps
    if fps <= 0:
        problems.append("output.fps: must be > 0, got %d" % fps)
    name = cfg.output.name or "%s_%s_seed%d" % (preset.name, cfg.task, s.seed)
    if os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        problems.append("output.name: %r must be a file stem, not a path (use output.dir for the folder)" % name)
    out_dir = cfg.output.dir
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        problems.append("output.dir: %s exists and is not a folder" % out_dir)
    else:
        parent = _existing_parent(out_dir)
        if not os.access(parent, os.W_OK):
            problems.append("output.dir: %s is not writable (first existing folder: %s)" % (out_dir, parent))

    policy = None
    try:
        policy = policy_from_config(cfg.precision)
    except ConfigError as exc:
        problems.append(str(exc))

    for key in cfg.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            problems.append("env: %r is not a valid environment variable name" % key)

    if problems:
        if len(problems) == 1:
            raise ConfigError("%s: %s" % (source, problems[0]))
        raise ConfigError("%s has %d problems:\n  - %s" % (source, len(problems), "\n  - ".join(problems)))

    return RunPlan(
        preset=preset,
        checkpoint_dir=cfg.checkpoint_dir,
        prompt=cfg.prompt,
        negative_prompt=cfg.negative_prompt or DEFAULT_NEGATIVE_PROMPT,
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
    )


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path
