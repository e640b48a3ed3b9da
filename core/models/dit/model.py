"""The Wan DiT (``WanModel``), written from the math of docs/wan-model.md §2, official state-dict keys.

All fused math goes through the op table bound with :meth:`WanDiT.bind_ops`; the precision
policy decides each parameter's stored dtype (:func:`param_dtype`) and therefore the dtype
each Linear computes in.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.table import OpTable
from ...precision import PrecisionPolicy
from .block import Head, WanBlock
from .config import DiTConfig
from .layers import LayerNormParams, init_random_, linear, sinusoid
from .rope import rope_tables

_MODULATION_PREFIXES = ("time_embedding.", "time_projection.", "head.")
_NORM_SUFFIXES = (".norm_q.weight", ".norm_k.weight", ".norm3.weight", ".norm3.bias", ".norm_k_img.weight")
#: the two LayerNorms of the image-context embedding (official autocast runs them in float32)
_NORM_PREFIXES = ("img_emb.proj.0.", "img_emb.proj.4.")

#: LayerNorm eps of ``img_emb`` (torch.nn.LayerNorm's default in the official MLPProj)
IMG_EMB_EPS = 1e-5


def param_dtype(name: str, policy: PrecisionPolicy) -> torch.dtype:
    """Stored dtype of one parameter under a precision policy."""
    if name.startswith(_MODULATION_PREFIXES) or name.endswith(".modulation"):
        return policy.modulation
    if name.endswith(_NORM_SUFFIXES) or name.startswith(_NORM_PREFIXES):
        return policy.norm_params
    return policy.matmul


class ImageEmbedding(nn.Module):
    """``img_emb`` of Wan2.1 i2v (official ``MLPProj``): ``proj`` = LayerNorm(image_dim) ->
    Linear -> GELU (exact) -> Linear(image_dim, dim) -> LayerNorm(dim), both norms affine with
    eps 1e-5. Maps the CLIP tokens [B, 257, image_dim] to image-context tokens [B, 257, dim]."""

    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(LayerNormParams(image_dim), nn.Linear(image_dim, image_dim), nn.GELU(),
                                  nn.Linear(image_dim, dim), LayerNormParams(dim))

    def forward(self, clip_fea: torch.Tensor, ops) -> torch.Tensor:
        p = self.proj
        # the first LayerNorm sees the CLIP features in (at least) float32, as under autocast
        x = clip_fea.to(torch.promote_types(clip_fea.dtype, torch.float32))
        h = ops.layer_norm.fn(x, p[0].weight, p[0].bias, IMG_EMB_EPS, out_dtype=p[1].weight.dtype)
        h = linear(F.gelu(linear(h, p[1])), p[3])
        return ops.layer_norm.fn(h, p[4].weight, p[4].bias, IMG_EMB_EPS)


class WanDiT(nn.Module):
    def __init__(self, cfg: DiTConfig, policy: PrecisionPolicy):
        super().__init__()
        self.cfg = cfg
        self.policy = policy
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        image = cfg.image_dim is not None
        self.blocks = nn.ModuleList(
            [WanBlock(dim, cfg.ffn_dim, cfg.num_heads, cfg.eps, image_context=image) for _ in range(cfg.num_layers)]
        )
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        if image:
            self.img_emb = ImageEmbedding(cfg.image_dim, dim)
        self.ops: Optional[OpTable] = None
        self._rope_cache: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def on_meta(cls, cfg: DiTConfig, policy: PrecisionPolicy) -> "WanDiT":
        """Structure only, no memory: for key/shape checks and for loading with assign."""
        with torch.device("meta"):
            model = cls(cfg, policy)
        return model.eval().requires_grad_(False)

    @classmethod
    def random(cls, cfg: DiTConfig, policy: PrecisionPolicy, device: torch.device, seed: int = 0) -> "WanDiT":
        """Real structure, random weights of sensible scale, stored per the policy (benchmarks, tests)."""
        model = cls.on_meta(cfg, policy)
        model.apply_policy_dtypes()  # on meta: free, so each parameter is allocated once, in its dtype
        model.to_empty(device=device)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        init_random_(model, gen)
        return model

    def apply_policy_dtypes(self) -> None:
        for name, p in self.named_parameters():
            want = param_dtype(name, self.policy)
            if p.dtype != want:
                p.data = p.data.to(want)

    def expected_shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}

    def bind_ops(self, ops: OpTable) -> "WanDiT":
        from .quant_linear import quantized_layers

        layers = quantized_layers(self)
        if layers:
            if ops.quant_linear is None:
                raise RuntimeError("this DiT holds quantized Linears but the op table has no quant_linear "
                                   "implementation (the recipe's quant.dit is none?)")
            kernels = ops.quant_linear.fn
            for _, layer in layers:
                if layer.scheme.name != kernels.scheme.name:
                    raise RuntimeError("Linear quantized as %s, op table's kernels are %s"
                                       % (layer.scheme.name, kernels.scheme.name))
                layer.kernels, layer.impl = kernels, ops.quant_linear.impl
        self.ops = ops
        return self

    # ---------------------------------------------------------------- forward pieces
    def rope(self, grid: Tuple[int, int, int], total_len: int, device: torch.device):
        key = (tuple(grid), total_len, str(device))
        if key not in self._rope_cache:
            cos, sin = rope_tables(grid, self.cfg.head_dim, total_len)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def embed_time(self, t: torch.Tensor, device: torch.device):
        """t: [B] or [B, L] (per token) -> e [B, C] / [B, L, C], e0 [B, 6, C] / [B, L, 6, C].

        Per-token timesteps take few distinct values (TI2V: 0 for the first frame's tokens, t
        elsewhere): the embedding is computed once per distinct value and gathered."""
        if t.dim() == 2:
            values, inverse = torch.unique(t.detach().cpu(), return_inverse=True)
            e, e0 = self.embed_time(values, device)
            index = inverse.to(device)
            return e[index], e0[index]
        dt = self.policy.modulation
        sin_emb = sinusoid(t, self.cfg.freq_dim).to(device=device, dtype=dt)
        e = linear(F.silu(linear(sin_emb, self.time_embedding[0])), self.time_embedding[2])
        e0 = linear(F.silu(e), self.time_projection[1])
        return e, e0.unflatten(-1, (6, self.cfg.dim))

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, text_len, text_dim] zero-padded T5 states -> [B, text_len, C]."""
        h = F.gelu(linear(context, self.text_embedding[0]), approximate="tanh")
        return linear(h, self.text_embedding[2])

    def unpatchify(self, x: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
        b = x.shape[0]
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        x = x[:, : f * h * w].reshape(b, f, h, w, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, f * pt, h * ph, w * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        kv_lens: Optional[Sequence[int]] = None,
        *,
        y: Optional[torch.Tensor] = None,
        clip_fea: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: [B, out_dim, F, H, W] noisy latents; t: [B] or [B, L] timesteps, L = the token
        count (host tensor is fine); context: [B, text_len, text_dim].
        i2v models: ``y`` [B, in_dim - out_dim, F, H, W] conditioning (mask + first-frame
        latent), concatenated after x along channels; Wan2.1 i2v also ``clip_fea``
        [B, 257, image_dim] CLIP tokens. Returns the flow prediction [B, out_dim, F, H, W] in
        float32."""
        if self.ops is None:
            raise RuntimeError("WanDiT.forward before bind_ops(): resolve an op table first")
        ops = self.ops
        cfg = self.cfg
        if cfg.cond_channels and y is None:
            raise ValueError("model_type %r needs the conditioning y (%d channels)" % (cfg.model_type, cfg.cond_channels))
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        if x.shape[1] != cfg.in_dim:
            raise ValueError("the DiT takes %d input channels (latent + conditioning), got %d"
                             % (cfg.in_dim, x.shape[1]))
        if cfg.image_dim is not None and clip_fea is None:
            raise ValueError("this model has an image-context embedding (img_emb): pass clip_fea, the CLIP tokens")
        if cfg.image_dim is None and clip_fea is not None:
            raise ValueError("clip_fea given, but this model has no image-context embedding (img_emb)")
        device = x.device
        pe = self.patch_embedding
        h = F.conv3d(x.to(pe.weight.dtype), pe.weight, pe.bias, stride=pe.stride)
        grid = tuple(h.shape[2:])
        h = h.flatten(2).transpose(1, 2)
        n = h.shape[1]
        if t.dim() == 2 and t.shape[1] != n:
            raise ValueError("per-token timesteps: got %d per sample for %d tokens" % (t.shape[1], n))
        sp = ops.sequence  # sequence parallel: this rank keeps one chunk of the (padded) tokens
        total = sp.padded_len(n) if sp is not None else n
        if sp is not None:
            h = sp.local(sp.pad(h, total))
            if t.dim() == 2:
                t = sp.local(sp.pad(t, total))
            if kv_lens is None:
                kv_lens = [n] * h.shape[0]  # global lengths: the padding is masked out of attention
        e, e0 = self.embed_time(t, device)
        ctx = self.embed_text(context)
        ctx_img = self.img_emb(clip_fea.to(device), ops) if clip_fea is not None else None
        cos, sin = self.rope(grid, total, device)
        if sp is not None:
            cos, sin = sp.local(cos, dim=0), sp.local(sin, dim=0)
        attn_dtype = self.policy.attention

        def run(x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
            for block in self.blocks[start:stop]:
                x = block(x, e0, ctx, cos, sin, ops, attn_dtype, kv_lens, ctx_img)
            return x

        cache = self.__dict__.get("feature_cache")  # attached per call by wanport.cache (docs/caching.md)
        h = run(h) if cache is None else cache.blocks(h, run, e=e, e0=e0, tokens=n, sp=sp)
        out = self.head(h, e, ops)
        if sp is not None:
            out = sp.gather(out)
        return self.unpatchify(out, grid).float()
