"""Official Wan CLIP key names -> transformers ``CLIPVisionModelWithProjection`` (docs/wan-model.md §4.2).

The official file holds the whole open-clip XLM-RoBERTa-large + ViT-H/14 model: ``visual.*``
(the image tower, used), ``textual.*`` and ``log_scale`` (not used for video generation).

| official (``visual.``) | transformers |
|---|---|
| ``patch_embedding.weight`` (conv, no bias) | ``vision_model.embeddings.patch_embedding.weight`` |
| ``cls_embedding`` [1, 1, D] | ``vision_model.embeddings.class_embedding`` [D] |
| ``pos_embedding`` [1, T, D] | ``vision_model.embeddings.position_embedding.weight`` [T, D] |
| ``pre_norm.*`` / ``post_norm.*`` | ``vision_model.pre_layrnorm.*`` / ``vision_model.post_layernorm.*`` |
| ``transformer.{i}.norm1/norm2.*`` | ``vision_model.encoder.layers.{i}.layer_norm1/layer_norm2.*`` |
| ``transformer.{i}.attn.to_qkv.*`` [3D, ...] | split in three along dim 0: ``...self_attn.{q,k,v}_proj.*`` |
| ``transformer.{i}.attn.proj.*`` | ``...self_attn.out_proj.*`` |
| ``transformer.{i}.mlp.0.*`` / ``mlp.2.*`` | ``...mlp.fc1.*`` / ``...mlp.fc2.*`` |
| ``head`` [D, E] | ``visual_projection.weight`` [E, D] (transposed) |

The number of heads is not visible in the shapes: ViT-H/14 has 16 heads of 80 dims at width
1280; wanport takes ``heads = width / 80`` (tiny checkpoints keep the head dim too).
"""

from __future__ import annotations

import math
import re
from typing import Dict, Mapping, Optional, Tuple, TypeVar

from ...errors import CheckpointError

T = TypeVar("T")

VISUAL = "visual."
#: keys of the official file that the image encoder does not use
IGNORED_PREFIXES = ("textual.",)
IGNORED_KEYS = ("log_scale",)
HEAD_DIM = 80  # ViT-H/14: 1280 / 16 heads
LAYER_NORM_EPS = 1e-5

_LAYER_RE = re.compile(r"^visual\.transformer\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "mlp.0.weight": "mlp.fc1.weight",
    "mlp.0.bias": "mlp.fc1.bias",
    "mlp.2.weight": "mlp.fc2.weight",
    "mlp.2.bias": "mlp.fc2.bias",
}


def is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _need(shapes: Mapping[str, Tuple[int, ...]], key: str, ndim: int, where: str) -> Tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError("%s: missing key %r (not the official Wan CLIP file?)" % (where, key))
    shape = tuple(int(s) for s in shapes[key])
    if len(shape) != ndim:
        raise CheckpointError("%s: key %r has shape %s, expected a %d-d tensor" % (where, key, list(shape), ndim))
    return shape


def clip_config_from_shapes(shapes: Mapping[str, Tuple[int, ...]], where: Optional[str] = None) -> Dict[str, int]:
    """Architecture numbers of the visual tower from the key shapes: ``hidden_size,
    intermediate_size, num_hidden_layers, num_attention_heads, image_size, patch_size,
    projection_dim``. Raises CheckpointError naming ``where`` and the key."""
    where = where or "CLIP weights"
    _, _, dim = _need(shapes, "visual.cls_embedding", 3, where)
    pdim, chans, ph, pw = _need(shapes, "visual.patch_embedding.weight", 4, where)
    if pdim != dim or chans != 3 or ph != pw:
        raise CheckpointError("%s: key 'visual.patch_embedding.weight' has shape %s, expected [%d, 3, p, p]"
                              % (where, [pdim, chans, ph, pw], dim))
    _, tokens, pos_dim = _need(shapes, "visual.pos_embedding", 3, where)
    grid = int(round(math.sqrt(tokens - 1)))
    if grid * grid != tokens - 1 or pos_dim != dim:
        raise CheckpointError("%s: key 'visual.pos_embedding' has shape %s, expected [1, 1 + g*g, %d]"
                              % (where, [1, tokens, pos_dim], dim))
    layers = sorted({int(m.group(1)) for m in (_LAYER_RE.match(k) for k in shapes) if m})
    if not layers:
        raise CheckpointError("%s: missing key 'visual.transformer.0.attn.to_qkv.weight'" % where)
    mlp = _need(shapes, "visual.transformer.0.mlp.0.weight", 2, where)[0]
    head_in, proj = _need(shapes, "visual.head", 2, where)
    if dim % HEAD_DIM:
        raise CheckpointError("%s: CLIP width %d is not a multiple of the ViT-H/14 head dim %d"
                              % (where, dim, HEAD_DIM))
    return {
        "hidden_size": dim,
        "intermediate_size": mlp,
        "num_hidden_layers": layers[-1] + 1,
        "num_attention_heads": dim // HEAD_DIM,
        "image_size": grid * ph,
        "patch_size": ph,
        "projection_dim": proj,
    }


def expected_visual_shapes(cfg: Mapping[str, int]) -> Dict[str, Tuple[int, ...]]:
    """Every ``visual.*`` key of the official file with its shape."""
    d, m, p = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["patch_size"])
    tokens = (int(cfg["image_size"]) // p) ** 2 + 1
    out: Dict[str, Tuple[int, ...]] = {
        "visual.patch_embedding.weight": (d, 3, p, p),
        "visual.cls_embedding": (1, 1, d),
        "visual.pos_embedding": (1, tokens, d),
        "visual.pre_norm.weight": (d,),
        "visual.pre_norm.bias": (d,),
    }
    per_layer = {
        "norm1.weight": (d,), "norm1.bias": (d,),
        "attn.to_qkv.weight": (3 * d, d), "attn.to_qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
        "norm2.weight": (d,), "norm2.bias": (d,),
        "mlp.0.weight": (m, d), "mlp.0.bias": (m,),
        "mlp.2.weight": (d, m), "mlp.2.bias": (d,),
    }
    for i in range(int(cfg["num_hidden_layers"])):
        for suffix, shape in per_layer.items():
            out["visual.transformer.%d.%s" % (i, suffix)] = shape
    out["visual.post_norm.weight"] = (d,)
    out["visual.post_norm.bias"] = (d,)
    out["visual.head"] = (d, int(cfg["projection_dim"]))
    return out


def wan_clip_to_hf(state: Mapping[str, T]) -> Dict[str, T]:
    """The ``visual.*`` tensors renamed (and split / reshaped / transposed) to
    ``CLIPVisionModelWithProjection`` names; ignored keys are dropped. Expects a validated state."""
    out: Dict[str, T] = {}
    emb = "vision_model.embeddings."
    for key, v in state.items():
        if is_ignored(key):
            continue
        if key == "visual.patch_embedding.weight":
            out[emb + "patch_embedding.weight"] = v
        elif key == "visual.cls_embedding":
            out[emb + "class_embedding"] = v.reshape(-1)
        elif key == "visual.pos_embedding":
            out[emb + "position_embedding.weight"] = v.reshape(v.shape[-2], v.shape[-1])
        elif key.startswith("visual.pre_norm."):
            out["vision_model.pre_layrnorm." + key.rsplit(".", 1)[1]] = v
        elif key.startswith("visual.post_norm."):
            out["vision_model.post_layernorm." + key.rsplit(".", 1)[1]] = v
        elif key == "visual.head":
            out["visual_projection.weight"] = v.t()
        else:
            m = _LAYER_RE.match(key)
            if m is None:
                raise CheckpointError("unexpected key %r in the CLIP weights (not an official Wan CLIP key)" % key)
            prefix = "vision_model.encoder.layers.%s." % m.group(1)
            tail = m.group(2)
            if tail in ("attn.to_qkv.weight", "attn.to_qkv.bias"):
                kind = tail.rsplit(".", 1)[1]
                for name, part in zip(("q", "k", "v"), v.chunk(3, dim=0)):
                    out["%sself_attn.%s_proj.%s" % (prefix, name, kind)] = part
            elif tail in _LAYER_MAP:
                out[prefix + _LAYER_MAP[tail]] = v
            else:
                raise CheckpointError("unexpected key %r in the CLIP weights (not an official Wan CLIP key)" % key)
    return out


def hf_clip_config_kwargs(cfg: Mapping[str, int]) -> Dict[str, object]:
    """``transformers.CLIPVisionConfig`` arguments: the numbers plus the fixed open-clip ViT-H/14
    settings (exact GELU, LayerNorm eps 1e-5, no dropout)."""
    out: Dict[str, object] = {k: int(cfg[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                         "num_attention_heads", "image_size", "patch_size",
                                                         "projection_dim")}
    out.update(num_channels=3, hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS, attention_dropout=0.0)
    return out


__all__ = ["clip_config_from_shapes", "expected_visual_shapes", "wan_clip_to_hf", "hf_clip_config_kwargs",
           "is_ignored", "HEAD_DIM"]
