"""The CLIP image encoder of Wan2.1 I2V (docs/wan-model.md §4.2): the ViT-H/14 visual tower of the official
``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` loaded into transformers'
``CLIPVisionModelWithProjection`` by key map; the official preprocessing; the penultimate layer's
257 tokens."""

from .encoder import CLIP_CHECKPOINT_NAME, CLIPImageEncoder, check_clip_state
from .keymap import clip_config_from_shapes, expected_visual_shapes, hf_clip_config_kwargs, wan_clip_to_hf
from .tiny import write_tiny_clip

__all__ = [
    "CLIP_CHECKPOINT_NAME",
    "CLIPImageEncoder",
    "check_clip_state",
    "clip_config_from_shapes",
    "expected_visual_shapes",
    "hf_clip_config_kwargs",
    "wan_clip_to_hf",
    "write_tiny_clip",
]
