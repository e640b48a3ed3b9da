"""UMT5-XXL text encoder (docs/wan-model.md §4.1): official Wan checkpoint -> transformers' UMT5EncoderModel,
official cleaning / tokenisation / trim rule and fp32-softmax attention numerics."""

from .encoder import T5_CHECKPOINT_NAME, TOKENIZER_SUBDIR, WanTextEncoder, check_wan_t5_state
from .keymap import expected_wan_t5_shapes, hf_umt5_config_kwargs, t5_config_from_shapes, wan_t5_to_hf
from .text_clean import clean_text
from .tiny import write_tiny_t5

__all__ = [
    "T5_CHECKPOINT_NAME",
    "TOKENIZER_SUBDIR",
    "WanTextEncoder",
    "check_wan_t5_state",
    "clean_text",
    "expected_wan_t5_shapes",
    "hf_umt5_config_kwargs",
    "t5_config_from_shapes",
    "wan_t5_to_hf",
    "write_tiny_t5",
]
