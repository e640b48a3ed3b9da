"""The DiT folder of an official checkpoint: ``config.json`` + (sharded) safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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
    #: pre-quantized Linears (module -> "<safetensors dtype>:<channel|tensor>"), empty for a bf16 checkpoint
    prequantized: Dict[str, str] = field(default_factory=dict)


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
    pre = prequantized_linears(entries, directory)
    plain = {k: e for k, e in entries.items() if not (k.endswith(".weight_scale") and k[: -len("_scale")] in entries)}
    check_against(plain, expected, "DiT weights in %s" % directory)
    return DiTCheckpoint(directory, cfg, entries, pre)


def prequantized_linears(entries: Dict[str, TensorEntry], directory: str) -> Dict[str, str]:
    """The Linears stored quantized (an 8-bit ``<m>.weight`` with a float32 ``<m>.weight_scale``
    of one value per output row or one for the tensor: the layout of docs/quantization.md, which
    LightX2V's FP8/INT8 Wan checkpoints use), module -> "dtype:granularity"; a half-written pair
    is a CheckpointError."""
    out = {}
    for key, e in entries.items():
        if not key.endswith(".weight_scale"):
            continue
        module = key[: -len(".weight_scale")]
        w = entries.get(module + ".weight")
        if w is None:
            raise CheckpointError("%s: %r has no %s.weight beside it" % (e.file, key, module))
        if w.dtype not in ("F8_E4M3", "I8") or len(w.shape) != 2:
            raise CheckpointError("%s: %s.weight is %s %s; a tensor with a weight_scale must be an 8-bit [out, in] "
                                  "matrix (F8_E4M3 or I8)" % (w.file, module, w.dtype, list(w.shape)))
        n = w.shape[0]
        numel = 1
        for d in e.shape:
            numel *= d
        if e.dtype != "F32" or numel not in (1, n) or len(e.shape) > 2:
            raise CheckpointError("%s: %s has dtype %s shape %s; expected float32 [%d, 1] (per output channel) or "
                                  "[1, 1] (per tensor)" % (e.file, key, e.dtype, list(e.shape), n))
        out[module] = "%s:%s" % (w.dtype, "channel" if numel == n and n > 1 else "tensor")
    for key, e in entries.items():
        if e.dtype in ("F8_E4M3",) and key.endswith(".weight") and key[: -len(".weight")] not in out:
            raise CheckpointError("%s: %s is %s without a %s_scale beside it" % (e.file, key, e.dtype, key))
    return out


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
