"""A tiny random-weight CLIP file in the official Wan layout, written without downloads.

``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` holds the whole open-clip model under
the official key names: the visual tower (``visual.*``; few layers and a narrow MLP, the real
width when make-tiny writes it (the official ``img_emb`` is built for 1280-wide tokens), the real
224 px input, 14 px patches, so the real 257 tokens and the ViT-H head dim 80), a small text tower (``textual.*``,
XLM-RoBERTa layout) and ``log_scale``. The text tower is there only so the file looks like the
official one; inference ignores it.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from ...checkpoints.pth_files import save_pth_atomic
from .keymap import HEAD_DIM, expected_visual_shapes


def _textual_shapes(dim: int, layers: int, vocab: int, max_len: int, out_dim: int) -> Dict[str, tuple]:
    out = {
        "textual.token_embedding.weight": (vocab, dim),
        "textual.type_embedding.weight": (1, dim),
        "textual.pos_embedding.weight": (max_len, dim),
    }
    for i in range(layers):
        p = "textual.blocks.%d." % i
        for n in "qkvo":
            out[p + "attn.%s.weight" % n] = (dim, dim)
            out[p + "attn.%s.bias" % n] = (dim,)
        out.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                    p + "ffn.0.weight": (4 * dim, dim), p + "ffn.0.bias": (4 * dim,),
                    p + "ffn.2.weight": (dim, 4 * dim), p + "ffn.2.bias": (dim,),
                    p + "norm2.weight": (dim,), p + "norm2.bias": (dim,)})
    mid = (dim + out_dim) // 2
    out.update({"textual.norm.weight": (dim,), "textual.norm.bias": (dim,),
                "textual.head.0.weight": (mid, dim), "textual.head.2.weight": (out_dim, mid)})
    return out


def tiny_clip_state(seed: int = 0, width: int = 2 * HEAD_DIM, layers: int = 3, projection_dim: int = 32,
                    dtype: torch.dtype = torch.float16, mlp: int = 0) -> Dict[str, torch.Tensor]:
    """``mlp``: the MLP's hidden width (0: ``4 * width``, ViT-H's ratio; the official
    ``VisionTransformer`` takes it as ``mlp_ratio = mlp / width``)."""
    cfg = {"hidden_size": width, "intermediate_size": mlp or 4 * width, "num_hidden_layers": layers,
           "num_attention_heads": width // HEAD_DIM, "image_size": 224, "patch_size": 14,
           "projection_dim": projection_dim}
    shapes = dict(expected_visual_shapes(cfg))
    shapes.update(_textual_shapes(dim=32, layers=1, vocab=64, max_len=514, out_dim=projection_dim))
    gen = torch.Generator().manual_seed(seed)
    state: Dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        name = key.rsplit(".", 1)[-1]
        if ("norm" in key) and name == "weight":
            w = 1.0 + 0.1 * noise
        elif name == "bias":
            w = 0.02 * noise
        elif len(shape) >= 2 and key not in ("visual.pos_embedding", "visual.cls_embedding"):
            fan_in = int(torch.Size(shape[1:]).numel())
            w = noise / math.sqrt(fan_in)
        else:
            w = 0.5 * noise
        state[key] = w.to(dtype).contiguous()
    state["log_scale"] = torch.tensor(math.log(1 / 0.07), dtype=dtype)
    return state


def write_tiny_clip(path: str, seed: int = 0, width: int = 2 * HEAD_DIM, layers: int = 3,
                    projection_dim: int = 32, mlp: int = 0) -> Dict[str, int]:
    """Write the tiny file (fp16, like ``clip_dtype``) atomically; returns the visual numbers."""
    state = tiny_clip_state(seed, width, layers, projection_dim, mlp=mlp)
    save_pth_atomic(state, path)
    return {"hidden_size": width, "num_hidden_layers": layers, "projection_dim": projection_dim,
            "intermediate_size": mlp or 4 * width}


__all__ = ["write_tiny_clip", "tiny_clip_state"]
