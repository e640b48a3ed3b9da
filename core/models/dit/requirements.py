"""What each call site of the DiT asks of its op implementation (input to the resolver)."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ...ops.impl import Requirements
from ...precision import PrecisionPolicy
from .config import DiTConfig


def dit_requirements(
    cfg: DiTConfig,
    policy: PrecisionPolicy,
    device_type: str,
    *,
    padded_keys: bool = False,
    ring_lse: bool = False,
    per_token_timesteps: bool = False,
    batch_gt1: bool = False,
    quant_scheme: Optional[str] = None,
    attention_quant: Optional[str] = None,
) -> Dict[str, Requirements]:
    """Dtypes follow the precision policy: q/k/v reach attention in ``policy.attention``; the
    q/k RMSNorm sees Linear outputs (``policy.matmul``); RoPE sees the norm's promoted output;
    the residual stream is ``promote(matmul, modulation)`` after the first gated add; the
    image-context embedding of Wan2.1 i2v adds float32 and ``matmul`` inputs to ``layer_norm``.
    ``per_token_timesteps`` (Wan2.2 TI2V) asks for per-token modulation shapes; ``quant_scheme``
    (the recipe's ``quant.dit``) adds the ``quant_linear`` site; ``attention_quant`` (``quant.attention``
    when not ``none``) asks the self-attention for that scheme (docs/quantization.md, "FP8 attention";
    the cross-attention over the text's 512 tokens stays exact)."""
    residual = torch.promote_types(policy.matmul, policy.modulation)
    rope_in = torch.promote_types(policy.matmul, policy.norm_params)
    common = dict(device_type=device_type, batch_gt1=batch_gt1)
    layer_norm_in = {residual}
    if cfg.image_dim is not None:  # img_emb: CLIP features in float32, then a Linear's output
        layer_norm_in |= {torch.float32, policy.matmul}
    reqs = {
        "self_attention": Requirements(dtypes=frozenset({policy.attention}), head_dim=cfg.head_dim,
                                       lse=ring_lse, kv_lens=padded_keys, quant_scheme=attention_quant, **common),
        "cross_attention": Requirements(dtypes=frozenset({policy.attention}), head_dim=cfg.head_dim, **common),
        "rotary": Requirements(dtypes=frozenset({rope_in}), head_dim=cfg.head_dim, **common),
        "rms_norm": Requirements(dtypes=frozenset({policy.matmul}), **common),
        "layer_norm": Requirements(dtypes=frozenset(layer_norm_in), **common),
        "layer_norm_modulate": Requirements(dtypes=frozenset({policy.matmul, residual}),
                                            per_token_modulation=per_token_timesteps, **common),
        # the cross-attention's residual add (residual stream + the branch's matmul-dtype output)
        "add_layer_norm_modulate": Requirements(dtypes=frozenset({policy.matmul, residual}),
                                                per_token_modulation=per_token_timesteps, **common),
        "qk_norm_rope": Requirements(dtypes=frozenset({policy.matmul}), head_dim=cfg.head_dim, **common),
        "gated_residual": Requirements(dtypes=frozenset({policy.matmul, residual}),
                                       per_token_modulation=per_token_timesteps, **common),
        "linear_gelu": Requirements(dtypes=frozenset({policy.matmul}), **common),
    }
    if quant_scheme is not None:  # the quantized Linears return (and keep their bias in) the matmul dtype
        reqs["quant_linear"] = Requirements(dtypes=frozenset({policy.matmul}), quant_scheme=quant_scheme, **common)
    return reqs
