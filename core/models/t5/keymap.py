"""Official Wan UMT5 encoder key names <-> transformers ``UMT5EncoderModel`` (docs/wan-model.md §4.1).

Wan's file ``models_t5_umt5-xxl-enc-bf16.pth`` holds the encoder of ``wan/modules/t5.py``:

    token_embedding.weight                      [V, D]
    blocks.{i}.norm1.weight                     [D]
    blocks.{i}.attn.{q,k,v}.weight              [H*d_kv, D]
    blocks.{i}.attn.o.weight                    [D, H*d_kv]
    blocks.{i}.pos_embedding.embedding.weight   [buckets, H]   (one table per layer)
    blocks.{i}.norm2.weight                     [D]
    blocks.{i}.ffn.gate.0.weight                [F, D]         (the GELU branch)
    blocks.{i}.ffn.fc1.weight                   [F, D]         (the linear branch)
    blocks.{i}.ffn.fc2.weight                   [D, F]
    norm.weight                                 [D]
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Tuple, TypeVar

from ...errors import CheckpointError

T = TypeVar("T")

#: umt5-xxl numbers that the key shapes cannot tell (official ``T5RelativeEmbedding`` default).
RELATIVE_MAX_DISTANCE = 128
LAYER_NORM_EPS = 1e-6

EMBED_KEY = "token_embedding.weight"
NORM_KEY = "norm.weight"

# Wan per-block suffix -> transformers per-block suffix
_BLOCK_MAP: Dict[str, str] = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def hf_keys_for(wan_key: str) -> List[str]:
    """The transformers key(s) that one Wan key loads into (the embedding feeds two)."""
    if wan_key == EMBED_KEY:
        return ["shared.weight", "encoder.embed_tokens.weight"]
    if wan_key == NORM_KEY:
        return ["encoder.final_layer_norm.weight"]
    m = _BLOCK_RE.match(wan_key)
    if m and m.group(2) in _BLOCK_MAP:
        return ["encoder.block.%s.%s" % (m.group(1), _BLOCK_MAP[m.group(2)])]
    raise CheckpointError("unexpected key %r in the UMT5 encoder weights (not an official Wan T5 key)" % wan_key)


def wan_t5_to_hf(sd: Mapping[str, T]) -> Dict[str, T]:
    """Rename a Wan T5 state dict to ``UMT5EncoderModel`` names. The token embedding goes to
    ``shared.weight`` and ``encoder.embed_tokens.weight`` as the same object (no copy)."""
    out: Dict[str, T] = {}
    for k, v in sd.items():
        for hf_key in hf_keys_for(k):
            out[hf_key] = v
    return out


def _need(shapes: Mapping[str, Tuple[int, ...]], key: str, ndim: int, where: str) -> Tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError("%s: missing key %r" % (where, key))
    shape = tuple(int(s) for s in shapes[key])
    if len(shape) != ndim:
        raise CheckpointError("%s: key %r has shape %s, expected a %d-d tensor" % (where, key, list(shape), ndim))
    return shape


def t5_config_from_shapes(shapes: Mapping[str, Tuple[int, ...]], where: Optional[str] = None) -> Dict[str, int]:
    """Architecture numbers from the Wan key shapes (names as in transformers' ``UMT5Config``):
    ``vocab_size, d_model, d_kv, num_heads, d_ff, num_layers, relative_attention_num_buckets,
    relative_attention_max_distance``. Raises CheckpointError (naming ``where`` and the key)
    when a key the numbers come from is missing or malformed; it does not check every key —
    compare with :func:`expected_wan_t5_shapes` for that."""
    where = where or "UMT5 encoder weights"
    vocab, d_model = _need(shapes, EMBED_KEY, 2, where)
    layers = sorted({int(m.group(1)) for m in (_BLOCK_RE.match(k) for k in shapes) if m})
    if not layers:
        raise CheckpointError("%s: no 'blocks.{i}.*' keys (missing key %r)" % (where, "blocks.0.attn.q.weight"))
    num_layers = layers[-1] + 1
    buckets, num_heads = _need(shapes, "blocks.0.pos_embedding.embedding.weight", 2, where)
    inner, q_in = _need(shapes, "blocks.0.attn.q.weight", 2, where)
    if num_heads <= 0 or inner % num_heads:
        raise CheckpointError("%s: key %r has %d rows, not a multiple of %d heads (from %r)"
                              % (where, "blocks.0.attn.q.weight", inner, num_heads,
                                 "blocks.0.pos_embedding.embedding.weight"))
    if q_in != d_model:
        raise CheckpointError("%s: key %r has shape %s, expected [*, %d]"
                              % (where, "blocks.0.attn.q.weight", [inner, q_in], d_model))
    d_ff = _need(shapes, "blocks.0.ffn.fc1.weight", 2, where)[0]
    return {
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": inner // num_heads,
        "num_heads": num_heads,
        "d_ff": d_ff,
        "num_layers": num_layers,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": RELATIVE_MAX_DISTANCE,
    }


def expected_wan_t5_shapes(cfg: Mapping[str, int]) -> Dict[str, Tuple[int, ...]]:
    """Every key of the official encoder file with its shape, for ``cfg`` as returned by
    :func:`t5_config_from_shapes`."""
    d, f = int(cfg["d_model"]), int(cfg["d_ff"])
    h = int(cfg["num_heads"])
    inner = h * int(cfg["d_kv"])
    buckets = int(cfg.get("relative_attention_num_buckets", 32))
    out: Dict[str, Tuple[int, ...]] = {EMBED_KEY: (int(cfg["vocab_size"]), d)}
    per_block = {
        "norm1.weight": (d,),
        "attn.q.weight": (inner, d),
        "attn.k.weight": (inner, d),
        "attn.v.weight": (inner, d),
        "attn.o.weight": (d, inner),
        "pos_embedding.embedding.weight": (buckets, h),
        "norm2.weight": (d,),
        "ffn.gate.0.weight": (f, d),
        "ffn.fc1.weight": (f, d),
        "ffn.fc2.weight": (d, f),
    }
    for i in range(int(cfg["num_layers"])):
        for suffix, shape in per_block.items():
            out["blocks.%d.%s" % (i, suffix)] = shape
    out[NORM_KEY] = (d,)
    return out


def hf_umt5_config_kwargs(cfg: Mapping[str, int]) -> Dict[str, object]:
    """Keyword arguments for ``transformers.UMT5Config``: the architecture numbers plus the
    fixed umt5-xxl settings (gated tanh-GELU FFN, eps 1e-6, no dropout, encoder only)."""
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "d_model": int(cfg["d_model"]),
        "d_kv": int(cfg["d_kv"]),
        "d_ff": int(cfg["d_ff"]),
        "num_layers": int(cfg["num_layers"]),
        "num_heads": int(cfg["num_heads"]),
        "relative_attention_num_buckets": int(cfg.get("relative_attention_num_buckets", 32)),
        "relative_attention_max_distance": int(cfg.get("relative_attention_max_distance", RELATIVE_MAX_DISTANCE)),
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "dropout_rate": 0.0,
        "is_encoder_decoder": False,
        "use_cache": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


__all__ = ["wan_t5_to_hf", "hf_keys_for", "t5_config_from_shapes", "expected_wan_t5_shapes",
           "hf_umt5_config_kwargs", "RELATIVE_MAX_DISTANCE", "LAYER_NORM_EPS"]
