"""The Wan2.1 I2V image encoder: official CLIP file -> transformers' ``CLIPVisionModelWithProjection``.

Usage::

    clip = CLIPImageEncoder.load(path, dtype=torch.float16, device=device)
    tokens = clip.encode(image)   # image [3, H, W] in [-1, 1] -> [1, 257, 1280]

Official numerics (``wan/modules/clip.py``, docs/wan-model.md §4.2): the image at its own resolution,
``bicubic`` to 224x224 (aspect not kept, no crop, no antialias), back to [0, 1], normalised with
the OpenAI CLIP mean/std, the visual tower run in fp16 (``clip_dtype``), and the hidden states
after block 31 of 32 (the penultimate block, all 257 tokens incl. CLS, no post-norm) returned.
The last block is dropped after the strict load: it would be computed and thrown away.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ...checkpoints.pth_files import load_pth, pth_format
from ...errors import CheckpointError
from .keymap import clip_config_from_shapes, expected_visual_shapes, hf_clip_config_kwargs, is_ignored, wan_clip_to_hf

CLIP_CHECKPOINT_NAME = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

_MAX_LISTED = 5


def _listed(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    text = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    if len(keys) > _MAX_LISTED:
        text += " and %d more" % (len(keys) - _MAX_LISTED)
    return text


def check_clip_state(state: Mapping[str, Any], where: str) -> Dict[str, int]:
    """Every ``visual.*`` key and shape of an official CLIP state dict (tensors or anything with
    ``.shape``) against the layout its own shapes imply; other keys must be the unused
    ``textual.*`` / ``log_scale``. Returns the architecture numbers; CheckpointError names
    ``where`` and the offending key(s)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    cfg = clip_config_from_shapes(shapes, where)
    expected = expected_visual_shapes(cfg)
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise CheckpointError("%s: missing key %s" % (where, _listed(missing)))
    unexpected = [k for k in shapes if k not in expected and not is_ignored(k)]
    if unexpected:
        raise CheckpointError("%s: unexpected key %s (not an official Wan CLIP key)" % (where, _listed(unexpected)))
    for k, shape in expected.items():
        if tuple(shapes[k]) != shape:
            raise CheckpointError("%s: key %r has shape %s, expected %s (from the other keys)"
                                  % (where, k, list(shapes[k]), list(shape)))
    for k in expected:
        dt = getattr(state[k], "dtype", None)
        if isinstance(dt, torch.dtype) and not dt.is_floating_point:
            raise CheckpointError("%s: key %r has dtype %s, expected a floating-point tensor" % (where, k, dt))
    return cfg


def build_clip_vision(state: Mapping[str, torch.Tensor], cfg: Mapping[str, int], dtype: torch.dtype,
                      device: torch.device, where: str = "CLIP weights") -> torch.nn.Module:
    """``CLIPVisionModelWithProjection`` on the meta device, filled from the (validated) official
    state with ``load_state_dict(strict=True, assign=True)``: every visual key lands, each
    tensor materialised once in ``dtype`` on ``device``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**hf_clip_config_kwargs(cfg))
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    hf_state = {k: v.to(device=device, dtype=dtype) for k, v in wan_clip_to_hf(state).items()}
    try:
        model.load_state_dict(hf_state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError("%s: does not load into CLIPVisionModelWithProjection (%s)"
                              % (where, str(exc).strip().splitlines()[0][:300])) from None
    del hf_state
    vm = model.vision_model
    pos_ids = getattr(vm.embeddings, "position_ids", None)  # a non-persistent buffer: not in the state
    if pos_ids is not None and pos_ids.is_meta:
        vm.embeddings.position_ids = torch.arange(pos_ids.shape[-1], device=device).expand((1, -1))
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise CheckpointError("%s: nothing loaded into %r" % (where, name))
    return model.eval().requires_grad_(False)


class CLIPImageEncoder:
    """The penultimate-layer tokens of the official CLIP visual tower for one image."""

    def __init__(self, model: torch.nn.Module, config: Mapping[str, int], dtype: torch.dtype,
                 device: torch.device) -> None:
        self.model = model
        self.config = dict(config)
        self.dtype = dtype
        self.device = torch.device(device)
        layers = model.vision_model.encoder.layers
        if len(layers) == int(config["num_hidden_layers"]):
            # the last block's output is never used: drop it (penultimate = new last hidden state)
            model.vision_model.encoder.layers = layers[:-1]

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def width(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def tokens(self) -> int:
        return (self.image_size // int(self.config["patch_size"])) ** 2 + 1

    @staticmethod
    def check_file(path: str) -> Optional[Dict[str, int]]:
        """Header check of the file; for the zip format every key and shape, memory-mapped (no
        tensor data read). Returns the architecture numbers (None for a legacy file)."""
        if pth_format(path) != "zip":
            return None
        state = load_pth(path)
        return check_clip_state(state, path)

    @classmethod
    def load(cls, path: str, dtype: torch.dtype = torch.float16,
             device: Optional[torch.device] = None) -> "CLIPImageEncoder":
        device = torch.device("cpu") if device is None else torch.device(device)
        state = load_pth(path)
        cfg = check_clip_state(state, path)
        model = build_clip_vision({k: v for k, v in state.items() if not is_ignored(k)}, cfg, dtype, device,
                                  where=path)
        del state
        return cls(model, cfg, dtype, device)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                        device: Optional[torch.device] = None, where: str = "CLIP weights") -> "CLIPImageEncoder":
        device = torch.device("cpu") if device is None else torch.device(device)
        cfg = check_clip_state(state, where)
        model = build_clip_vision({k: v for k, v in state.items() if not is_ignored(k)}, cfg, dtype, device,
                                  where=where)
        return cls(model, cfg, dtype, device)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """[3, H, W] (or [B, 3, H, W]) in [-1, 1] -> normalised [B, 3, S, S] float32 on the encoder's
        device: bicubic to S x S (no antialias), to [0, 1], OpenAI CLIP mean/std."""
        x = image[None] if image.dim() == 3 else image
        x = x.to(device=self.device, dtype=torch.float32)
        s = self.image_size
        x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False)
        x = x.mul(0.5).add(0.5)
        mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[3, H, W] (or [B, 3, H, W]) in [-1, 1] -> [B, tokens, width] in the encoder's dtype."""
        pixels = self.preprocess(image).to(self.dtype)
        return self.model.vision_model(pixel_values=pixels).last_hidden_state


__all__ = ["CLIP_CHECKPOINT_NAME", "CLIPImageEncoder", "check_clip_state", "build_clip_vision", "MEAN", "STD"]
