"""The DiT folder of an official checkpoint: ``config.json`` + (sharded) safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ..errors import CheckpointError
from ..files import regular_file
from ..models.dit import DiTConfig, WanDiT, param_dtype
from ..precision import PrecisionPolicy
from .safetensors_files import TensorEntry, check_against, index_weights, iter_tensors

CONFIG_NAME = "config.json"
WEIGHTS_STEM = "diffusion_pytorch_model"
IMAGE_EMBED_KEY = "img_emb.proj.0.weight"  # [image_dim]: the CLIP width, when the DiT has img_emb
DEFAULT_IMAGE_DIM = 1280  # ViT-H/14


@dataclass(frozen=True)
class DiTCheckpoint:
    """A validated DiT folder: its config and the location of every tensor (nothing loaded)."""

    directory: str
    config: DiTConfig
    entries: Dict[str, TensorEntry]


def read_dit_config(directory: str) -> Dict:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.lexists(path):
        raise CheckpointError("%s: missing (the DiT folder needs the official config.json)" % path)
    regular_file(path, CheckpointError)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError("%s: not valid JSON (%s)" % (path, exc)) from None


def inspect_dit(directory: str, policy: PrecisionPolicy, with_image: Optional[bool] = None) -> DiTCheckpoint:
    """Read config + safetensors headers and check every key and shape. Loads no weights.

    ``with_image``: whether the model has the image-context embedding (Wan2.1 i2v); None: as
    the weights say. True builds the expected keys with it (missing ``img_emb``/``k_img``...
    are then named), False without (present ones are named as unexpected)."""
    data = read_dit_config(directory)
    entries = index_weights(directory, WEIGHTS_STEM)
    text = entries.get("text_embedding.0.weight")
    text_dim = text.shape[1] if text is not None and len(text.shape) == 2 else None
    img = entries.get(IMAGE_EMBED_KEY)
    image_dim = img.shape[0] if img is not None and len(img.shape) == 1 else None
    if with_image is False:
        image_dim = None
    elif with_image and image_dim is None:
        image_dim = DEFAULT_IMAGE_DIM
    cfg = DiTConfig.from_json(data, os.path.join(directory, CONFIG_NAME), text_dim=text_dim, image_dim=image_dim)
    expected = WanDiT.on_meta(cfg, policy).expected_shapes()
    check_against(entries, expected, "DiT weights in %s" % directory)
    return DiTCheckpoint(directory, cfg, entries)


def load_dit(ckpt: DiTCheckpoint, policy: PrecisionPolicy, device: torch.device,
             progress: Optional[callable] = None, transform: Optional[callable] = None,
             quantize=None) -> WanDiT:
    """Materialise the DiT on ``device``, each tensor cast to its policy dtype as it is read.

    ``transform(key, tensor, device, dtype)``, when given, does that cast instead (merged LoRAs:
    ``wanport.lora.merge.Merger`` adds their deltas in float32 first).
    ``quantize`` (``wanport.quant.weights.LoadQuantizer``), when given, swaps the Linears it names
    for quantized ones and quantizes each of their weights as it is read (after the transform,
    from float32), or takes an already quantized weight and its scale as they are."""
    model = WanDiT.on_meta(ckpt.config, policy)
    if quantize is not None:
        quantize.prepare(model)
    state = {}
    total = len(ckpt.entries)
    for i, (key, tensor) in enumerate(iter_tensors(ckpt.entries)):
        if quantize is not None and quantize.handles(key):
            state.update(quantize.load(key, tensor, device, transform))
        elif transform is not None:
            state[key] = transform(key, tensor, device, param_dtype(key, policy))
        else:
            state[key] = tensor.to(device=device, dtype=param_dtype(key, policy))
        if progress is not None:
            progress(i + 1, total)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
