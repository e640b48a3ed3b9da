"""The official Wan checkpoint folders, validated as a whole before any weight loads.

Layouts (docs/wan-model.md §1.3):

* single DiT (Wan2.1 T2V / I2V, Wan2.2 TI2V-5B): ``config.json``,
  ``diffusion_pytorch_model*.safetensors`` (+ index) in the folder itself;
* two experts (Wan2.2 T2V-A14B / I2V-A14B): ``high_noise_model/`` and ``low_noise_model/``, each
  with its own ``config.json`` and safetensors (+ index);

plus ``Wan2.1_VAE.pth`` (``Wan2.2_VAE.pth`` for TI2V-5B), ``models_t5_umt5-xxl-enc-bf16.pth``,
``google/umt5-xxl/`` and, for Wan2.1 I2V, ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``.
Every file, key and shape is checked (headers only; small ``.pth`` files memory-mapped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..config.models import EXPERTS, ModelPreset
from ..errors import CheckpointError
from ..models.clip import CLIP_CHECKPOINT_NAME, CLIPImageEncoder, check_clip_state
from ..models.t5 import T5_CHECKPOINT_NAME, WanTextEncoder, check_wan_t5_state
from ..models.vae.wan21 import WanVAE21
from ..models.vae.wan22 import WanVAE22
from ..precision import PrecisionPolicy
from .dit_checkpoint import CONFIG_NAME, DiTCheckpoint, inspect_dit, load_dit
from .pth_files import load_pth
from .safetensors_files import TensorEntry, check_against

VAE21_NAME = "Wan2.1_VAE.pth"
VAE22_NAME = "Wan2.2_VAE.pth"
_VAES = {"wan2.1": (VAE21_NAME, WanVAE21), "wan2.2": (VAE22_NAME, WanVAE22)}


@dataclass(frozen=True)
class CheckpointSet:
    directory: str
    #: the DiT (two-expert checkpoints: the high-noise expert; all of them in ``experts``)
    dit: DiTCheckpoint
    vae_path: str
    vae_config: Dict[str, int]
    t5_path: str
    t5_config: Dict[str, int]
    #: "wan2.1" or "wan2.2"
    vae_kind: str = "wan2.1"
    #: two-expert checkpoints: {"high_noise": ..., "low_noise": ...}, in switching order
    experts: Optional[Dict[str, DiTCheckpoint]] = None
    clip_path: Optional[str] = None
    clip_config: Optional[Dict[str, int]] = None

    def dit_for(self, expert: str) -> DiTCheckpoint:
        return self.experts[expert] if self.experts else self.dit


def _shapes(state: Dict[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _entries(path: str, state: Dict[str, torch.Tensor]) -> Dict[str, TensorEntry]:
    return {k: TensorEntry(path, str(v.dtype), tuple(v.shape)) for k, v in state.items()}


def missing_folder_message(directory: str, preset: ModelPreset) -> str:
    if preset.arch is None:
        layout = next((k for k, v in _tiny_layouts().items() if v == preset.name), "wan2.1-t2v")
        return ("checkpoint_dir %s not found. Write the tiny checkpoint with `wanport make-tiny %s --model %s` "
                "(or run ./run.sh with no argument, which does it)." % (directory, directory, layout))
    return ("checkpoint_dir %s not found. Download the official %s weights into it (%s)."
            % (directory, preset.name, ", ".join(expected_files(preset))))


def expected_files(preset: ModelPreset) -> Tuple[str, ...]:
    """The official file names a checkpoint folder of this model holds (for messages and docs)."""
    if preset.experts:
        dits = tuple("%s/{config.json, diffusion_pytorch_model*.safetensors}" % sub for _, sub in EXPERTS)
    else:
        dits = ("config.json", "diffusion_pytorch_model*.safetensors")
    extra = (CLIP_CHECKPOINT_NAME,) if preset.clip else ()
    return dits + (_VAES[preset.vae][0], T5_CHECKPOINT_NAME, "google/umt5-xxl/") + extra


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


def _inspect_dits(directory: str, preset: ModelPreset, policy: PrecisionPolicy) -> Dict[str, DiTCheckpoint]:
    with_image = bool(preset.clip)
    if not preset.experts:
        if not os.path.isfile(os.path.join(directory, CONFIG_NAME)) and any(
                os.path.isdir(os.path.join(directory, sub)) for _, sub in EXPERTS):
            raise CheckpointError("%s: holds %s/ expert folders (a Wan2.2 A14B checkpoint), but model %s has a single "
                                  "DiT; use a two-expert model (wan2.2-t2v-a14b, wan2.2-i2v-a14b)"
                                  % (directory, EXPERTS[0][1], preset.name))
        dit = inspect_dit(directory, policy, with_image=with_image)
        _check_arch(dit, preset)
        return {"": dit}
    out: Dict[str, DiTCheckpoint] = {}
    for name, sub in EXPERTS:
        folder = os.path.join(directory, sub)
        if not os.path.isdir(folder):
            raise CheckpointError("%s: expert folder missing; model %s is a two-expert checkpoint: %s/ and %s/, each "
                                  "with config.json and diffusion_pytorch_model*.safetensors"
                                  % (folder, preset.name, EXPERTS[0][1], EXPERTS[1][1]))
        out[name] = dit = inspect_dit(folder, policy, with_image=with_image)
        _check_arch(dit, preset)
    (n0, a), (n1, b) = out.items()
    if a.config != b.config:
        diff = ["%s %s vs %s" % (k, getattr(a.config, k), getattr(b.config, k)) for k in a.config.__dataclass_fields__
                if getattr(a.config, k) != getattr(b.config, k)]
        raise CheckpointError("%s: the two experts differ (%s); both must be the same architecture"
                              % (directory, ", ".join(diff)))
    return out


def inspect_checkpoint(directory: str, preset: ModelPreset, policy: PrecisionPolicy) -> CheckpointSet:
    """Every file, key and shape checked; reads headers (and memory-maps the small .pth files)."""
    if not os.path.isdir(directory):
        raise CheckpointError(missing_folder_message(directory, preset))
    dits = _inspect_dits(directory, preset, policy)
    dit = next(iter(dits.values()))
    experts = dits if preset.experts else None

    vae_name, vae_cls = _VAES[preset.vae]
    vae_path = os.path.join(directory, vae_name)
    if not os.path.exists(vae_path):
        other = [n for n, _ in _VAES.values() if n != vae_name and os.path.exists(os.path.join(directory, n))]
        hint = " (found %s: model %s uses the %s VAE)" % (other[0], preset.name, preset.vae.capitalize()) if other else ""
        raise CheckpointError("%s: file not found%s" % (vae_path, hint))
    vae_state = load_pth(vae_path)
    try:
        vae_cfg = vae_cls.config_from_shapes(_shapes(vae_state))
    except ValueError as exc:
        raise CheckpointError("%s: %s" % (vae_path, exc)) from None
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in vae_cls(**vae_cfg).state_dict().items()}
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

    clip_path = clip_cfg = None
    if preset.clip:
        clip_path = os.path.join(directory, CLIP_CHECKPOINT_NAME)
        clip_cfg = CLIPImageEncoder.check_file(clip_path)
        if clip_cfg is None:  # legacy (non-zip) file: key check needs a full read
            clip_cfg = check_clip_state(load_pth(clip_path), clip_path)
        if clip_cfg["hidden_size"] != dit.config.image_dim:
            raise CheckpointError("%s: CLIP width %d does not match the DiT's image embedding input "
                                  "(img_emb.proj.0.weight) %d" % (clip_path, clip_cfg["hidden_size"], dit.config.image_dim))
    return CheckpointSet(directory, dit, vae_path, vae_cfg, t5_path, t5_cfg, vae_kind=preset.vae, experts=experts,
                         clip_path=clip_path, clip_config=clip_cfg)


def load_vae(ckpts: CheckpointSet, policy: PrecisionPolicy, device: torch.device) -> torch.nn.Module:
    """The Wan2.1 or Wan2.2 VAE (``ckpts.vae_kind``) with its weights in ``policy.vae``."""
    state = load_pth(ckpts.vae_path)
    vae_cls = _VAES[ckpts.vae_kind][1]
    with torch.device("meta"):
        vae = vae_cls(**ckpts.vae_config)
    vae.load_state_dict({k: v.to(device=device, dtype=policy.vae) for k, v in state.items()},
                        strict=True, assign=True)
    return vae.eval().requires_grad_(False)


def load_clip(ckpts: CheckpointSet, policy: PrecisionPolicy, device: torch.device) -> CLIPImageEncoder:
    """The CLIP image encoder (Wan2.1 I2V) in ``policy.image_encoder``."""
    if ckpts.clip_path is None:
        raise CheckpointError("%s: this model has no CLIP image encoder" % ckpts.directory)
    return CLIPImageEncoder.load(ckpts.clip_path, dtype=policy.image_encoder, device=device)


__all__ = ["CheckpointSet", "inspect_checkpoint", "load_vae", "load_dit", "load_clip", "expected_files",
           "VAE21_NAME", "VAE22_NAME"]
