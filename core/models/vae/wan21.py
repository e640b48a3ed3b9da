"""Wan2.1 VAE (``Wan2.1_VAE.pth``): causal 3D conv autoencoder, 4x temporal / 8x spatial.

Written from the math in spec §5.1-§5.2. The module's ``state_dict`` has exactly the official
key names and shapes (194 tensors at ``dim=96, z_dim=16``), so the official file loads with
``load_state_dict(..., strict=True)``.

* ``encode``: video ``[B,3,F,H,W]`` in [-1,1], ``F = 4n+1`` -> normalised latent
  ``(mu - mean) * (1/std)`` ``[B,16,n+1,H/8,W/8]``; the encoder runs on chunks of 1, 4, 4, ...
  frames sharing one temporal feature cache; deterministic ``mu`` (no sampling).
* ``decode``: normalised latent -> ``z / (1/std) + mean`` -> ``conv2`` over all frames -> the
  decoder one latent frame at a time with the cache -> ``[B,3,1+4(T-1),8h,8w]`` float32 clamped
  to [-1,1].

(``* (1/std)`` and ``/ (1/std)`` are how the official code applies the constants; they differ
from ``/ std`` and ``* std`` by at most an ulp.)
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .cache import FeatureCache
from .layers import AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMS_norm, VAEContext

# Latent normalisation constants of the Wan2.1 VAE (16 channels), spec §5.1.
VAE21_MEAN: Tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
VAE21_STD: Tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

ProgressFn = Callable[[int, int], None]


class Encoder3d(nn.Module):
    """conv1 -> downsamples (res blocks + Resample) -> middle [Res, Attn, Res] -> head."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temperal_downsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in [1] + list(dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: List[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        self.head = nn.Sequential(RMS_norm(c), nn.SiLU(), CausalConv3d(c, z_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:  # type: ignore[override]
        x = ctx.causal_conv(self.conv1, x)
        for layer in self.downsamples:
            x = layer(x, ctx)
        for layer in self.middle:
            x = layer(x, ctx)
        return ctx.causal_conv(self.head[2], self.head[1](self.head[0](x)))


class Decoder3d(nn.Module):
    """conv1 -> middle [Res, Attn, Res] -> upsamples (res blocks + Resample) -> head."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temperal_upsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + list(dim_mult)[::-1]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        c = dims[0]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        layers: List[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim = in_dim // 2  # every Resample upsample halves the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        c = dims[-1]
        self.head = nn.Sequential(RMS_norm(c), nn.SiLU(), CausalConv3d(c, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:  # type: ignore[override]
        x = ctx.causal_conv(self.conv1, x)
        for layer in self.middle:
            x = layer(x, ctx)
        for layer in self.upsamples:
            x = layer(x, ctx)
        return ctx.causal_conv(self.head[2], self.head[1](self.head[0](x)))


class WanVAE21(nn.Module):
    """The Wan2.1 video VAE. Defaults are the official architecture (``_video_vae``)."""

    def __init__(
        self,
        dim: int = 96,
        z_dim: int = 16,
        *,
        dim_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temperal_downsample: Sequence[bool] = (False, True, True),
    ) -> None:
        super().__init__()
        if len(temperal_downsample) != len(dim_mult) - 1:
            raise ValueError("temperal_downsample needs len(dim_mult) - 1 entries")
        self.dim = int(dim)
        self.z_dim = int(z_dim)
        self.temporal_stride = 2 ** sum(bool(t) for t in temperal_downsample)
        self.spatial_stride = 2 ** (len(dim_mult) - 1)
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, temperal_downsample)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, list(temperal_downsample)[::-1])

    # ------------------------------------------------------------------------------------
    @staticmethod
    def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> Dict[str, int]:
        """``dim`` from ``encoder.conv1.weight [dim,3,3,3,3]``, ``z_dim`` from ``conv2.weight [z,z,1,1,1]``."""
        need = ("encoder.conv1.weight", "conv2.weight")
        missing = [k for k in need if k not in shapes]
        if missing:
            raise ValueError(
                "not a Wan2.1 VAE state dict: missing key(s) %s (expected the official Wan2.1_VAE.pth "
                "names without a prefix; got %d keys, e.g. %s)" % (missing, len(shapes), sorted(shapes)[:3])
            )
        enc = tuple(int(s) for s in shapes["encoder.conv1.weight"])
        post = tuple(int(s) for s in shapes["conv2.weight"])
        if len(enc) != 5 or enc[1] != 3:
            raise ValueError("encoder.conv1.weight should be [dim, 3, 3, 3, 3], got %s" % (list(enc),))
        if len(post) != 5 or post[0] != post[1] or post[2:] != (1, 1, 1):
            raise ValueError("conv2.weight should be [z_dim, z_dim, 1, 1, 1], got %s" % (list(post),))
        return {"dim": enc[0], "z_dim": post[0]}

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    def _scale(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.z_dim != len(VAE21_MEAN):
            raise ValueError("the Wan2.1 latent constants are for z_dim=16, this VAE has z_dim=%d" % self.z_dim)
        mean = torch.tensor(VAE21_MEAN, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(VAE21_STD, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        return mean, inv_std

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: torch.Tensor, context: Optional[VAEContext] = None) -> torch.Tensor:
        """``[B,3,F,H,W]`` in [-1,1] -> normalised latent ``[B,z,(F-1)//4+1,H/8,W/8]`` (float32)."""
        s, sp = self.temporal_stride, self.spatial_stride
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError("encode expects a video [B,3,F,H,W], got %s" % (list(video.shape),))
        f, h, w = video.shape[2:]
        if f < 1 or (f - 1) % s != 0:
            raise ValueError("encode needs F = %dn+1 frames, got F=%d" % (s, f))
        if h % sp or w % sp:
            raise ValueError("encode needs H and W multiples of %d, got %dx%d" % (sp, h, w))
        p = self._param()
        x = video.to(device=p.device, dtype=p.dtype)
        # ``context``: e.g. wanport.parallel.vae.SplitVAEContext for a spatially split run
        ctx = context if context is not None else VAEContext(FeatureCache())
        outs = [self.encoder(x[:, :, :1], ctx)]
        for start in range(1, f, s):
            outs.append(self.encoder(x[:, :, start:start + s], ctx))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        del outs, ctx
        mu = self.conv1(out)[:, : self.z_dim]
        mean, inv_std = self._scale(mu.device)
        return (mu.float() - mean) * inv_std

    @torch.no_grad()
    def decode(self, z: torch.Tensor, progress: Optional[ProgressFn] = None,
               context: Optional[VAEContext] = None) -> torch.Tensor:
        """Normalised latent ``[B,z,T,h,w]`` -> video ``[B,3,1+4(T-1),8h,8w]`` float32 in [-1,1]."""
        if z.dim() != 5 or z.shape[1] != self.z_dim:
            raise ValueError("decode expects a latent [B,%d,T,h,w], got %s" % (self.z_dim, list(z.shape)))
        b, _, t, h, w = z.shape
        if t < 1:
            raise ValueError("decode needs at least one latent frame")
        p = self._param()
        mean, inv_std = self._scale(p.device)
        x = z.to(device=p.device, dtype=torch.float32) / inv_std + mean
        x = self.conv2(x.to(p.dtype))
        s, sp = self.temporal_stride, self.spatial_stride
        n_frames = 1 + s * (t - 1)
        video = torch.empty(b, 3, n_frames, h * sp, w * sp, dtype=torch.float32, device=p.device)
        # ``context``: e.g. wanport.parallel.vae.SplitVAEContext for a spatially split run
        ctx = context if context is not None else VAEContext(FeatureCache())
        pos = 0
        for i in range(t):
            y = self.decoder(x[:, :, i:i + 1], ctx)
            video[:, :, pos:pos + y.shape[2]].copy_(y).clamp_(-1.0, 1.0)
            pos += y.shape[2]
            del y
            if progress is not None:
                progress(i + 1, t)
        if pos != n_frames:  # pragma: no cover - structural invariant
            raise RuntimeError("decoder produced %d frames, expected %d" % (pos, n_frames))
        return video
