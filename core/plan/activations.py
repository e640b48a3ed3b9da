"""Activation memory: one DiT forward, the text and image encoders, the VAE's chunked encode/decode.

DiT: the peak of one forward is the peak inside its largest block, found by adding up the
tensors alive in each phase of ``models/dit/block.py`` (self-attention, cross-attention, FFN),
written out below with the lifetimes the code gives them. Units: ``U = S_local * dim`` elements
(this rank's tokens times the model width); ``r``, ``b``, ``a`` are the byte sizes of the
residual stream (the promotion of the matmul and modulation dtypes: float32 under ``official``),
the matmul dtype and the attention dtype. Attention kernels are flash-style (memory O(S), no
S x S scores). Batch is 1: the conditional and unconditional forwards run one after the other
(``pipeline/sampling.py``), or one per rank group with CFG parallelism.

VAE: the decoder (encoder) runs one latent frame (4 video frames) at a time with a cache of the
last two input frames of every causal conv (``models/vae/cache.py``). The shapes are taken by
running the real module on the meta device for three chunks at the recipe's size (no memory,
no arithmetic); the estimate is ``VAE_WORK_FACTOR x`` the widest conv input of a chunk plus
``VAE_CACHE_FACTOR x`` the cache, plus the whole output video (decode) or input video (encode) in
float32 (both factors fitted to measured decodes: ``plan/constants.py``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

import torch

from ..models.dit import DiTConfig
from ..precision import PrecisionPolicy
from . import constants as K
from .weights import itemsize


@dataclass(frozen=True)
class Tokens:
    """The DiT's token grid for a latent, and this rank's share under sequence parallelism."""

    grid: Tuple[int, int, int]
    total: int
    #: tokens after padding to a multiple of the sequence degree
    padded: int
    #: tokens this rank keeps through the blocks
    local: int
    sp_degree: int


def tokens(latent_shape: Tuple[int, int, int, int], patch: Tuple[int, int, int], sp_degree: int = 1) -> Tokens:
    _, t, h, w = latent_shape
    grid = (t // patch[0], h // patch[1], w // patch[2])
    total = grid[0] * grid[1] * grid[2]
    padded = int(math.ceil(total / sp_degree) * sp_degree)
    return Tokens(grid, total, padded, padded // sp_degree, sp_degree)


def dit_forward_peak(cfg: DiTConfig, policy: PrecisionPolicy, tok: Tokens, ulysses: int = 1, ring: int = 1,
                     per_token_modulation: bool = False) -> Dict[str, int]:
    """Bytes alive at the peak of one DiT forward on one rank, by phase of the largest block.

    Returns ``{"self_attention", "cross_attention", "ffn", "block_peak", "outside_blocks",
    "peak"}``; ``peak`` = ``block_peak + outside_blocks``."""
    b = itemsize(policy.matmul)
    a = itemsize(policy.attention)
    r = itemsize(torch.promote_types(policy.matmul, policy.modulation))
    acc = itemsize(torch.promote_types(policy.matmul, policy.norm_params))
    u = tok.local * cfg.dim  # elements of one [S_local, dim] tensor
    f = cfg.ffn_dim / cfg.dim
    v_cast = 0 if policy.matmul == policy.attention else a  # v.to(attention dtype) makes a copy

    # self-attention. x_in (held by the caller) r, h = LN_mod(x) b; q/k projections (b each)
    # while the fused q/k norm + rotary writes q, k (a each); then v (b, + its cast), the
    # attention output (a) and the o projection (b).
    qk = r + 3 * b + 2 * a
    local = r + b + 2 * a + b + v_cast + a + b
    sa = max(qk, local)
    if ulysses > 1:
        # the wrapper's head-split q, k, v (3a) and output (a); back to sequence-split: the
        # contiguous send buffer, the receive buffer and the reshaped copy (3a)
        sa = max(sa, r + b + 3 * a + v_cast + 3 * a + a + 3 * a)
    if ring > 1:
        # K/V stacked (2a) and the block being received (2a); the float32 running output and the
        # merge's temporaries (4 x 4 bytes) and the partial output (a)
        base = r + b + 3 * a + v_cast + (3 * a if ulysses > 1 else 0)
        sa = max(sa, base + 2 * a + 2 * a + a + 16)

    # cross-attention: x_in r and x after the gated residual r (out of place), h and y of the
    # self-attention still bound (b each), the pre-norm output b, q a, the attention output a,
    # the o projection b. Wan2.1 i2v adds the image attention output (a) and the sum in the
    # normalised query's dtype (three copies of `acc`).
    ca = 2 * r + 3 * b + 2 * a + b
    if cfg.image_dim is not None:
        ca = max(ca, 2 * r + 3 * b + 3 * a + 3 * acc)

    # FFN: x_in r, x after cross-attention r, h (new) b, y of the self-attention b, the
    # [S, ffn_dim] intermediate(s) b, the down projection b.
    ffn = 2 * r + 3 * b + K.FFN_INTERMEDIATES * f * b

    # per-token timesteps (TI2V with an image): e0 [S, 6, C] and e [S, C] for the whole forward,
    # and each block's modulation sum [S, 6, C]
    mod = 13 * r if per_token_modulation else 0
    block = int((max(sa, ca, ffn) + mod) * u)

    # outside the blocks: rotary tables (cos, sin: float32 [S_padded, head_dim], cached whole);
    # with sequence parallelism the full patch embedding (b x S_padded x dim) stays alive through
    # the first block (the rank keeps a view of its chunk)
    outside = 2 * tok.padded * cfg.head_dim * 4
    if tok.sp_degree > 1:
        outside += tok.padded * cfg.dim * b
    return {"self_attention": int(sa * u), "cross_attention": int(ca * u), "ffn": int(ffn * u),
            "per_token_modulation": int(mod * u), "block_peak": block, "outside_blocks": int(outside),
            "peak": block + int(outside)}


def encoder_activation_bytes(tokens_: int, width: int, ffn: int, heads: int, dtype: torch.dtype,
                             fp32_scores: bool = True) -> int:
    """One transformer layer of a text/image encoder at batch 1: hidden copies, the FFN
    intermediates (gated: 3) and the attention scores (float32 softmax in the Wan T5)."""
    s = itemsize(dtype)
    hidden = K.ENCODER_HIDDEN_COPIES * tokens_ * width * s
    mlp = 3 * tokens_ * ffn * s
    if fp32_scores:  # the softmax's float32 input and output, and the compute-dtype [H, L, L] tensors
        scores = heads * tokens_ * tokens_ * (2 * 4 + K.T5_SCORE_COPIES * s)
    else:
        scores = 2 * heads * tokens_ * tokens_ * s
    return int(hidden + mlp + scores)


def t5_activation_bytes(t5: Mapping[str, int], dtype: torch.dtype, text_len: int = 512) -> int:
    return encoder_activation_bytes(text_len, int(t5["d_model"]), int(t5["d_ff"]), int(t5["num_heads"]), dtype)


def clip_activation_bytes(clip: Mapping[str, int], dtype: torch.dtype) -> int:
    n = (int(clip["image_size"]) // int(clip["patch_size"])) ** 2 + 1
    return encoder_activation_bytes(n, int(clip["hidden_size"]), int(clip["intermediate_size"]),
                                    int(clip["num_attention_heads"]), dtype, fp32_scores=False)


# ----------------------------------------------------------------------------- VAE


@dataclass(frozen=True)
class VAEProfile:
    """Element counts of a steady-state chunk at one latent size (dtype-free)."""

    #: the largest input of any causal conv within one chunk
    widest: int
    #: every conv's cached frames after a chunk
    cache: int


def _profile(kind: str, cfg_items, part: str, lat_h: int, lat_w: int) -> VAEProfile:
    return _profile_cached(kind, cfg_items, part, lat_h, lat_w)


@functools.lru_cache(maxsize=64)
def _profile_cached(kind: str, cfg_items, part: str, lat_h: int, lat_w: int) -> VAEProfile:
    from ..checkpoints.layout import _VAES
    from ..models.vae.cache import FeatureCache
    from ..models.vae.layers import CausalConv3d, VAEContext

    with torch.device("meta"):
        vae = _VAES[kind][1](**dict(cfg_items))
    module = vae.decoder if part == "decode" else vae.encoder
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].numel()))
             for m in module.modules() if isinstance(m, CausalConv3d)]
    ctx = VAEContext(FeatureCache())
    widest = 0
    try:
        with torch.no_grad():
            if part == "decode":
                x = torch.empty(1, vae.z_dim, 1, lat_h, lat_w, device="meta")
                for i in range(3):
                    seen.clear()
                    vae._decode_frame(x, ctx, i == 0)
                    widest = max([widest] + seen)
            else:
                sp, st = vae.spatial_stride, vae.temporal_stride
                for n in (1, st, st):
                    seen.clear()
                    video = torch.empty(1, 3, n, lat_h * sp, lat_w * sp, device="meta")
                    vae.encoder(vae._encoder_input(video), ctx)
                    widest = max([widest] + seen)
    finally:
        for h in hooks:
            h.remove()
    cache = sum(v.numel() for v in ctx.cache._slots.values() if isinstance(v, torch.Tensor))
    return VAEProfile(widest, cache)


def vae_peak(kind: str, vae_cfg: Mapping[str, int], part: str, frames: int, height: int, width: int,
             spatial_stride: int, dtype: torch.dtype, split: int = 1, main_rank: bool = True,
             norm_fused: bool = False) -> Dict[str, int]:
    """Bytes alive at the peak of a VAE decode (``part="decode"``) or encode on one rank.

    ``split``: ranks of a spatially split run (``parallel.vae``: each keeps 1/split of the rows);
    the decoded video is gathered whole on the main rank. ``norm_fused``: the backend's own
    ``channel_rms_norm`` (norm + SiLU in one kernel) runs the VAE, which keeps fewer copies alive."""
    prof = _profile(kind, tuple(sorted(vae_cfg.items())), part, height // spatial_stride, width // spatial_stride)
    s = itemsize(dtype)
    factor = K.VAE_WORK_FACTOR_FUSED if norm_fused else K.VAE_WORK_FACTOR
    work = int(factor * prof.widest * s / split)
    cache = int(K.VAE_CACHE_FACTOR * prof.cache * s / split)
    video = 3 * frames * height * width * 4  # float32 [3, F, H, W]
    if part == "decode":
        io = video if main_rank else video // split
    else:
        io = video // split + (video // split if dtype != torch.float32 else 0)  # the input and its cast
    return {"work": work, "cache": cache, "video": io, "peak": work + cache + io}


__all__ = ["Tokens", "tokens", "dit_forward_peak", "t5_activation_bytes", "clip_activation_bytes", "vae_peak",
           "VAEProfile"]
