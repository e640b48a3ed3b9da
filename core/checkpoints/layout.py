"""The official Wan2.1 checkpoint folder, validated as a whole before any weight loads.

Layout (spec §1): ``config.json``, ``diffusion_pytorch_model*.safetensors`` (+ index),
``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from ..config.models import ModelPreset
from ..errors import CheckpointError
from ..models.t5 import T5_CHECKPOINT_NAME, WanTextEncoder, check_wan_t5_state
from ..models.vae.wan21 import WanVAE21
from ..precision import PrecisionPolicy
from .dit_checkpoint import DiTCheckpoint, inspect_dit, load_dit
from .pth_files import load_pth
from .safetensors_files import TensorEntry, check_against

VAE21_NAME = "Wan2.1_VAE.pth"


@dataclass(frozen=True)
class CheckpointSet:
    directory: str
    dit: DiTCheckpoint
    vae_path: str
    vae_config: Dict[str, int]
    t5_path: str
    t5_config: Dict[str, int]


def _shapes(state: Dict[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _entries(path: str, state: Dict[str, torch.Tensor]) -> Dict[str, TensorEntry]:
    return {k: TensorEntry(path, str(v.dtype), tuple(v.shape)) for k, v in state.items()}


def missing_folder_message(directory: str, preset: ModelPreset) -> str:
    if preset.arch is None:
        layout = next((k for k, v in _tiny_layouts().items() if v == preset.name), "wan2.1-t2v")
        return ("checkpoint_dir %s not found. Write the tiny checkpoint with `wanport make-tiny %s --model %s` "
                "(or run ./run.sh with no argument, which does it)." % (directory, directory, layout))
    return ("checkpoint_dir %s not found. Download the official %s weights into it (config.json, "
            "diffusion_pytorch_model*.safetensors, %s, %s, google/umt5-xxl/)."
            % (directory, preset.name, VAE21_NAME, T5_CHECKPOINT_NAME))


def _tiny_layouts():
    from ..config.models import TINY_LAYOUTS

    return TINY_LAYOUTS


def _check_arch(ckpt: DiTCheckpoint, preset: ModelPreset) -> None:
    cfg = ckpt.config
    where = os.path.join(ckpt.directory, "config.json")
    if cfg.model_type != preset.model_type:
        raise CheckpointError("%s: model_type %r, but model %s needs %r — point checkpoint_dir at a %s checkpoint"
                              % (where, cfg.model_type, preset.name, preset.model_type, preset.model_type))
    if preset.arch:
        wrong = ["%s %s (expected %s)" % (k, getattr(cfg, k), v) for k, v in preset.arch.items()
                 if getattr(cfg, k) != v]
        if wrong:
            raise CheckpointError("%s: %s — this is not a %s checkpoint; fix `model:` or `checkpoint_dir:`"
                                  % (where, ", ".join(wrong), preset.name))


def inspect_checkpoint(directory: str, preset: ModelPreset, policy: PrecisionPolicy) -> CheckpointSet:
    """Every file, key and shape checked; reads headers (and memory-maps the small .pth files)."""
    if not os.path.isdir(directory):
        raise CheckpointError(missing_folder_message(directory, preset))
    dit = inspect_dit(directory, policy)
    _check_arch(dit, preset)

    vae_path = os.path.join(directory, VAE21_NAME)
    vae_state = load_pth(vae_path)
    try:
        vae_cfg = WanVAE21.config_from_shapes(_shapes(vae_state))
    except ValueError as exc:
        raise CheckpointError("%s: %s" % (vae_path, exc)) from None
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in WanVAE21(**vae_cfg).state_dict().items()}
    check_against(_entries(vae_path, vae_state), expected, "VAE weights %s" % vae_path)
    if vae_cfg["z_dim"] != dit.config.out_dim:
        raise CheckpointError("%s: VAE latent channels %d do not match the DiT's out_dim %d"
                              % (vae_path, vae_cfg["z_dim"], dit.config.out_dim))
    if vae_cfg["z_dim"] != preset.z_dim:
        raise CheckpointError("%s: VAE latent channels %d, but model %s uses %d"
                              % (vae_path, vae_cfg["z_dim"], preset.name, preset.z_dim))
    del vae_state

    t5_path = os.path.join(directory, T5_CHECKPOINT_NAME)
    t5_cfg = WanTextEncoder.check_files(directory)
    if t5_cfg is None:  # legacy (non-zip) file: key check needs a full read
        t5_cfg = check_wan_t5_state(load_pth(t5_path), t5_path)
    if t5_cfg["d_model"] != dit.config.text_dim:
        raise CheckpointError("%s: text encoder width %d does not match the DiT's text_embedding input %d"
                              % (t5_path, t5_cfg["d_model"], dit.config.text_dim))
    return CheckpointSet(directory, dit, vae_path, vae_cfg, t5_path, t5_cfg)


def load_vae(ckpts: CheckpointSet, policy: PrecisionPolicy, device: torch.device) -> WanVAE21:
    state = load_pth(ckpts.vae_path)
    with torch.device("meta"):
        vae = WanVAE21(**ckpts.vae_config)
    vae.load_state_dict({k: v.to(device=device, dtype=policy.vae) for k, v in state.items()},
                        strict=True, assign=True)
    return vae.eval().requires_grad_(False)


__all__ = ["CheckpointSet", "inspect_checkpoint", "load_vae", "load_dit", "VAE21_NAME"]
