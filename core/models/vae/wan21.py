"""Wan2.1 VAE (``Wan2.1_VAE.pth``): causal 3D conv autoencoder, 4x temporal / 8x spatial.

Written from the math in docs/wan-model.md §5.1, §5.2. The module's ``state_dict`` has exactly the official
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

from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

from .base import CausalVideoVAE
from .layers import AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMS_norm, VAEContext

# Latent normalisation constants of the Wan2.1 VAE (16 channels), docs/wan-model.md §5.1.
VAE21_MEAN: Tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
VAE21_STD: Tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

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
        return ctx.causal_conv(self.head[2], self.head[0](x, silu=True))


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
        return ctx.causal_conv(self.head[2], self.head[0](x, silu=True))


class WanVAE21(CausalVideoVAE):
    """The Wan2.1 video VAE. Defaults are the official architecture (``_video_vae``)."""

    NAME = "Wan2.1 VAE"
    LATENT_MEAN = VAE21_MEAN
    LATENT_STD = VAE21_STD

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

