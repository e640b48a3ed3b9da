"""Wan2.2 VAE (``Wan2.2_VAE.pth``): causal 3D conv autoencoder, 4x temporal / 16x spatial, z_dim 48.

Written from the math in docs/wan-model.md §5.4. What it shares with the Wan2.1 VAE (:mod:`.wan21`) is taken
from :mod:`.layers` unchanged: causal convs with the temporal feature cache, RMS norms, residual
blocks, the mid-block attention, the resample stages (upsampling keeps the channel count here).
What is new lives in this file:

* the video is ``patchify``-ed 2x2 into 12 channels before the encoder and the decoder's 12
  output channels are ``unpatchify``-ed back (channel order ``(c, r, q)``: colour, column offset,
  row offset), so 8x spatial compression inside becomes 16x overall;
* encoder stages (``encoder.downsamples.{s}``) are residual blocks + resample with a
  parameter-free shortcut ``AvgDown3D`` (space/time-to-channel, then a mean over channel
  groups) added to the stage output; decoder stages (``decoder.upsamples.{s}``) have three
  residual blocks + resample and a parameter-free ``DupUp3D`` shortcut (channel repeat, then
  channel-to-space/time; on the first latent frame the leading ``factor_t - 1`` frames are
  dropped, as the main path does not upsample that frame in time);
* its own 48-channel latent mean/std.

The module's ``state_dict`` has exactly the official key names and shapes (196 tensors,
704.69 M parameters at ``dim=160, dec_dim=256, z_dim=48``). ``encode``/``decode`` follow the
same chunking as Wan2.1: encoder on 1, 4, 4, ... frames, decoder one latent frame at a time,
both with one :class:`FeatureCache` per call.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CausalVideoVAE
from .layers import AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMS_norm, VAEContext, memory_format_of

# Latent normalisation constants of the Wan2.2 VAE (48 channels), docs/wan-model.md §5.4.
VAE22_MEAN: Tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
VAE22_STD: Tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

PATCH = 2  # the 2x2 patchify around encoder and decoder
IO_CHANNELS = 3 * PATCH * PATCH

def patchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """``[B, C, F, H*p, W*p] -> [B, C*p*p, F, H, W]``, channel index ``c*p*p + r*p + q`` for the
    pixel at row offset q, column offset r (official ``b c f (h q) (w r) -> b (c r q) f h w``)."""
    b, c, f, hh, ww = x.shape
    x = x.reshape(b, c, f, hh // p, p, ww // p, p)  # b c f h q w r
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, f, hh // p, ww // p)


def unpatchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, cpp, f, h, w = x.shape
    c = cpp // (p * p)
    x = x.reshape(b, c, p, p, f, h, w)  # b c r q f h w
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, c, f, h * p, w * p)


class AvgDown3D(nn.Module):
    """Parameter-free shortcut of an encoder stage: front zero-pad time to a multiple of
    ``factor_t``, move each ``factor_t x factor_s x factor_s`` block into channels, then average
    consecutive groups of channels down to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        factor = factor_t * factor_s * factor_s
        if (in_channels * factor) % out_channels:
            raise ValueError("AvgDown3D: %d channels x %d do not group into %d" % (in_channels, factor, out_channels))
        self.out_channels = out_channels
        self.group_size = in_channels * factor // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        pad_t = (ft - x.shape[2] % ft) % ft
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # b c ft fs fs t h w
        x = x.reshape(b, self.out_channels, self.group_size, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut of a decoder stage: repeat each channel, then move channels into
    ``factor_t x factor_s x factor_s`` blocks of time and space. On the first chunk the first
    ``factor_t - 1`` output frames are dropped."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        factor = factor_t * factor_s * factor_s
        if (out_channels * factor) % in_channels:
            raise ValueError("DupUp3D: %d channels do not spread into %d x %d" % (in_channels, out_channels, factor))
        self.out_channels = out_channels
        self.repeats = out_channels * factor // in_channels

    def forward(self, x: torch.Tensor, first_chunk: bool = False, direct: bool = False) -> torch.Tensor:
        """``direct``: channels-last input gives channels-last output written in one pass (the
        same values; see :meth:`_channels_last`)."""
        ft, fs = self.factor_t, self.factor_s
        if direct and memory_format_of(x) is torch.channels_last_3d:
            out = self._channels_last(x)
            if out is not None:
                return out[:, :, ft - 1:] if first_chunk else out
        x = x.repeat_interleave(self.repeats, dim=1)
        b, _, t, h, w = x.shape
        x = x.reshape(b, self.out_channels, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_channels, t * ft, h * fs, w * fs)
        if first_chunk:
            x = x[:, :, ft - 1:]
        return x


    def _channels_last(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The shortcut of channels-last ``x`` written once into channels-last memory, as a
        broadcast view of x (no repeat_interleave temporary, no second reshuffling copy); None when
        the repeat count does not line up with the (t, row, column) blocks.

        Expanded channel ``c' = co * F + (i * fs + j) * fs + k`` (F = ft * fs * fs) comes from input
        channel ``c' // repeats`` and lands at time ``t * ft + i``, row ``h * fs + j``, column
        ``w * fs + k``: with ``repeats`` a multiple of F each input channel fills ``repeats / F``
        whole output channels; with ``repeats`` in (1, fs, fs * fs) it spans the trailing ones of
        (i, j, k)."""
        ft, fs = self.factor_t, self.factor_s
        b, cin, t, h, w = x.shape
        cout, rep, factor = self.out_channels, self.repeats, ft * fs * fs
        xl = x.permute(0, 2, 3, 4, 1)  # [b, t, h, w, C_in]: contiguous for channels-last x
        out = torch.empty((b, cout, t * ft, h * fs, w * fs), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last_3d)
        dst = out.permute(0, 2, 3, 4, 1).view(b, t, ft, h, fs, w, fs, cout)
        if rep % factor == 0:
            g = rep // factor
            src = xl.reshape(b, t, 1, h, 1, w, 1, cin, 1).expand(b, t, ft, h, fs, w, fs, cin, g)
            dst.view(b, t, ft, h, fs, w, fs, cin, g).copy_(src)
            return out
        kept = {1: (ft, fs, fs), fs: (ft, fs, 1), fs * fs: (ft, 1, 1)}.get(rep)
        if kept is None or factor % rep:
            return None
        src = xl.reshape(b, t, h, w, cout, *kept).permute(0, 1, 5, 2, 6, 3, 7, 4)
        dst.copy_(src.expand(b, t, ft, h, fs, w, fs, cout))
        return out


class DownStage(nn.Module):
    """Official ``Down_ResidualBlock``: ``downsamples`` (residual blocks, optional Resample) +
    the ``AvgDown3D`` shortcut of the stage input."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        layers: List[nn.Module] = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:  # type: ignore[override]
        h = x
        for layer in self.downsamples:
            h = layer(h, ctx)
        return h + self.avg_shortcut(x)


class UpStage(nn.Module):
    """Official ``Up_ResidualBlock``: ``upsamples`` (residual blocks, optional Resample keeping
    the channels) + the ``DupUp3D`` shortcut of the stage input when the stage upsamples."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, temporal: bool, up: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        layers: List[nn.Module] = []
        for _ in range(num_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", upsample_out_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, ctx: VAEContext, first_chunk: bool = False) -> torch.Tensor:  # type: ignore[override]
        h = x
        for layer in self.upsamples:
            h = layer(h, ctx)
        if self.avg_shortcut is None:
            return h
        return h + self.avg_shortcut(x, first_chunk, direct=ctx.direct_layout)


class Encoder22(nn.Module):
    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temperal_downsample: Sequence[bool]) -> None:
        super().__init__()
        dims = [dim * u for u in [1] + list(dim_mult)]
        self.conv1 = CausalConv3d(IO_CHANNELS, dims[0], 3, padding=1)
        last = len(dim_mult) - 1
        self.downsamples = nn.Sequential(*[
            DownStage(i_dim, o_dim, num_res_blocks, bool(temperal_downsample[i]) if i < last else False, i != last)
            for i, (i_dim, o_dim) in enumerate(zip(dims[:-1], dims[1:]))
        ])
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        self.head = nn.Sequential(RMS_norm(c), nn.SiLU(), CausalConv3d(c, z_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:  # type: ignore[override]
        x = ctx.causal_conv(self.conv1, x)
        for stage in self.downsamples:
            x = stage(x, ctx)
        for layer in self.middle:
            x = layer(x, ctx)
        return ctx.causal_conv(self.head[2], self.head[0](x, silu=True))


class Decoder22(nn.Module):
    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temperal_upsample: Sequence[bool]) -> None:
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + list(dim_mult)[::-1]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        c = dims[0]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        last = len(dim_mult) - 1
        self.upsamples = nn.Sequential(*[
            UpStage(i_dim, o_dim, num_res_blocks + 1, bool(temperal_upsample[i]) if i < last else False, i != last)
            for i, (i_dim, o_dim) in enumerate(zip(dims[:-1], dims[1:]))
        ])
        c = dims[-1]
        self.head = nn.Sequential(RMS_norm(c), nn.SiLU(), CausalConv3d(c, IO_CHANNELS, 3, padding=1))

    def forward(self, x: torch.Tensor, ctx: VAEContext, first_chunk: bool = False) -> torch.Tensor:  # type: ignore[override]
        x = ctx.causal_conv(self.conv1, x)
        for layer in self.middle:
            x = layer(x, ctx)
        for stage in self.upsamples:
            x = stage(x, ctx, first_chunk)
        return ctx.causal_conv(self.head[2], self.head[0](x, silu=True))


class WanVAE22(CausalVideoVAE):
    """The Wan2.2 video VAE. Defaults are the official architecture (``Wan2_2_VAE``)."""

    NAME = "Wan2.2 VAE"
    LATENT_MEAN = VAE22_MEAN
    LATENT_STD = VAE22_STD

    def __init__(
        self,
        dim: int = 160,
        dec_dim: int = 256,
        z_dim: int = 48,
        *,
        dim_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temperal_downsample: Sequence[bool] = (False, True, True),
    ) -> None:
        super().__init__()
        if len(temperal_downsample) != len(dim_mult) - 1:
            raise ValueError("temperal_downsample needs len(dim_mult) - 1 entries")
        self.dim, self.dec_dim, self.z_dim = int(dim), int(dec_dim), int(z_dim)
        self.temporal_stride = 2 ** sum(bool(t) for t in temperal_downsample)
        self.spatial_stride = 2 ** (len(dim_mult) - 1) * PATCH
        self.encoder = Encoder22(dim, z_dim * 2, dim_mult, num_res_blocks, temperal_downsample)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder22(dec_dim, z_dim, dim_mult, num_res_blocks, list(temperal_downsample)[::-1])

    # ------------------------------------------------------------------------------------
    @staticmethod
    def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> Dict[str, int]:
        """``dim`` from ``encoder.conv1.weight [dim,12,3,3,3]``, ``dec_dim`` from
        ``decoder.head.2.weight [12,dec_dim,3,3,3]``, ``z_dim`` from ``conv2.weight [z,z,1,1,1]``."""
        need = ("encoder.conv1.weight", "decoder.head.2.weight", "conv2.weight")
        missing = [k for k in need if k not in shapes]
        if missing:
            raise ValueError(
                "not a Wan2.2 VAE state dict: missing key(s) %s (expected the official Wan2.2_VAE.pth "
                "names without a prefix; got %d keys, e.g. %s)" % (missing, len(shapes), sorted(shapes)[:3]))
        enc = tuple(int(s) for s in shapes["encoder.conv1.weight"])
        head = tuple(int(s) for s in shapes["decoder.head.2.weight"])
        post = tuple(int(s) for s in shapes["conv2.weight"])
        if len(enc) != 5 or enc[1] != IO_CHANNELS:
            raise ValueError("encoder.conv1.weight should be [dim, %d, 3, 3, 3] (a Wan2.2 VAE takes the 2x2-"
                             "patchified video), got %s" % (IO_CHANNELS, list(enc)))
        if len(head) != 5 or head[0] != IO_CHANNELS:
            raise ValueError("decoder.head.2.weight should be [%d, dec_dim, 3, 3, 3], got %s" % (IO_CHANNELS, list(head)))
        if len(post) != 5 or post[0] != post[1] or post[2:] != (1, 1, 1):
            raise ValueError("conv2.weight should be [z_dim, z_dim, 1, 1, 1], got %s" % (list(post),))
        return {"dim": enc[0], "dec_dim": head[1], "z_dim": post[0]}

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x)

    def _decode_frame(self, x: torch.Tensor, ctx: VAEContext, first: bool) -> torch.Tensor:
        return unpatchify(self.decoder(x, ctx, first_chunk=first))


__all__ = ["WanVAE22", "VAE22_MEAN", "VAE22_STD", "patchify", "unpatchify", "AvgDown3D", "DupUp3D"]
