"""Building blocks of the Wan2.1 VAE (docs/wan-model.md §5.1), written from the math.

Every layer's ``forward`` takes the activation and a :class:`VAEContext`. The context holds the
temporal :class:`FeatureCache` of the current encode/decode call and the two places where
a spatially split (multi-device) decode has to step in:

* :meth:`VAEContext.pad` -- every conv with a spatial kernel pads through it (the convs
  themselves have ``padding=0``); a split decode overrides it to fill the interior borders with
  halo rows from the neighbouring shards instead of zeros;
* :meth:`VAEContext.attention` -- the mid-block attention over all H*W positions of a frame;
  a split decode overrides it to gather K/V.

Parameter names and shapes are the official ``Wan2.1_VAE.pth`` ones (``residual.{0,2,3,6}``,
``shortcut``, ``resample.1``, ``time_conv``, ``norm.gamma``, ``to_qkv``, ``proj``).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...reference.channel_rms_norm import channel_rms_norm as reference_channel_rms_norm
from .cache import FIRST_CHUNK_DONE, FeatureCache


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``channels_last_3d`` for a 5-D tensor laid out so (and not also plain contiguous), else
    ``contiguous_format``."""
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _layout(x: torch.Tensor) -> torch.memory_format:
    """:func:`memory_format_of`, and ``channels_last`` for 4-D data laid out so."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return memory_format_of(x)


def assemble_padded(x: torch.Tensor, pads: Sequence[int], context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` ([N, C, H, W] or [B, C, T, H, W]) with zero borders ``pads`` (``F.pad`` order: 4 or 6
    entries) and, for 5-D data, ``context`` frames in front in time (after the front padding): one
    allocation in x's memory format, only the borders zeroed."""
    pads = list(pads) + [0] * (2 * (x.dim() - 2) - len(pads))
    wl, wr, ht, hb = pads[:4]
    lead = x.shape[:-2]
    if x.dim() == 5:
        tf, tb = pads[4], pads[5]
        ct = 0 if context is None else context.shape[2]
        lead = x.shape[:2] + (tf + ct + x.shape[2] + tb,)
    h, w = x.shape[-2:]
    out = torch.empty(lead + (ht + h + hb, wl + w + wr), dtype=x.dtype, device=x.device, memory_format=_layout(x))
    hh, ww = out.shape[-2:]
    regions = [out[..., :ht, :], out[..., hh - hb:, :], out[..., :wl], out[..., ww - wr:]]
    if x.dim() == 5:
        tt = out.shape[2]
        regions += [out[:, :, :tf], out[:, :, tt - tb:]]
    for region in regions:
        if region.numel():
            region.zero_()
    inner = out[..., ht:ht + h, wl:wl + w]
    if x.dim() == 5:
        if context is not None:
            inner[:, :, tf:tf + ct].copy_(context)
        inner[:, :, tf + ct:tf + ct + x.shape[2]].copy_(x)
    else:
        inner.copy_(x)
    return out


class VAEContext:
    """State and hooks of one encode/decode call (single device: zero padding, plain SDPA).

    ``direct_layout`` (default on): channels-last data skips the layout moves that only copy --
    symmetric zero borders go to the conv as its own padding (no padded copy of the input), the
    decoder's channel-to-space shortcut is written straight into channels-last memory, and the
    half-precision nearest upsampling runs in its own dtype. Each gives the same values; the conv
    may sum in another order (another cuDNN algorithm). Off: the moves as they were, for
    before/after measurements (``benchmarks/vae_profile.py``, flag ``prev``)."""

    def __init__(self, cache: Optional[FeatureCache] = None, direct_layout: bool = True) -> None:
        self.cache = cache
        self.direct_layout = bool(direct_layout)

    def conv_pads(self, x: torch.Tensor) -> bool:
        """Whether a conv on ``x`` may take its symmetric H/W zero borders as its own padding:
        channels-last data, ``direct_layout``, and zero borders (a context that overrides
        :meth:`pad`, the split decode's halo exchange, pads its own way)."""
        return self.direct_layout and type(self).pad is VAEContext.pad and _layout(x) in (
            torch.channels_last_3d, torch.channels_last)

    # -- hooks a spatially split decode overrides ------------------------------------------
    def pad(self, x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
        """Zero-pad ``x`` with ``F.pad`` order ``(w_left, w_right, h_top, h_bottom[, t_front, t_back])``."""
        if not any(pads):
            return x
        return F.pad(x, tuple(pads))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Single-head attention over the sequence dim of ``[N, 1, L, C]`` tensors."""
        return F.scaled_dot_product_attention(q, k, v)

    def causal_input(self, x: torch.Tensor, context: Optional[torch.Tensor], pads: Sequence[int]) -> torch.Tensor:
        """A causal conv's input: ``context`` frames (or zeros) in front of ``x`` in time, zero
        borders in H and W, ``pads`` in ``F.pad`` order with the front time padding already
        reduced by the context's frames. One allocation in x's memory format; only the borders
        are zeroed. A context that overrides :meth:`pad` (the split decode's halo exchange) gets
        ``cat`` + its ``pad``."""
        if type(self).pad is not VAEContext.pad:
            if context is not None:
                x = torch.cat([context, x], dim=2)
            return self.pad(x, pads)
        if context is None and not any(pads):
            return x
        return assemble_padded(x, pads, context)

    # -- temporal cache rule -------------------------------------------------------------
    def causal_conv(self, conv: "CausalConv3d", x: torch.Tensor) -> torch.Tensor:
        """Run a causal conv on the current chunk, with (and updating) its cached left context."""
        if self.cache is None:
            return conv(x, self)
        prev = self.cache.get(conv)
        new = FeatureCache.next_context(x, prev)
        out = conv(x, self, prev if isinstance(prev, torch.Tensor) else None)
        self.cache.put(conv, new)
        return out


def _triple(v) -> Tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    return tuple(int(i) for i in v)  # type: ignore[return-value]


class CausalConv3d(nn.Conv3d):
    """3D conv, causal in time: all ``2*pad_t`` temporal padding goes in front.

    ``padding`` is the symmetric padding of an ordinary conv; the module itself is built
    with ``padding=0`` and pads through :meth:`VAEContext.pad`. ``context`` (earlier frames)
    replaces as much of the front zero padding as it has frames (only when ``pad_t > 0``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__(in_channels, out_channels, _triple(kernel_size), stride=_triple(stride), padding=0)
        pt, ph, pw = _triple(padding)
        self.causal_pad = (pw, pw, ph, ph, 2 * pt, 0)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        ctx: Optional[VAEContext] = None,
        context: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        pads = list(self.causal_pad)
        if context is not None and pads[4] > 0:
            pads[4] = max(pads[4] - context.shape[2], 0)
        else:
            context = None
        c = ctx or _DEFAULT_CTX
        if (pads[0] or pads[2]) and pads[0] == pads[1] and pads[2] == pads[3] and c.conv_pads(x):
            # channels-last: only the time context is assembled (a copy of whole frames), the
            # H/W borders are the conv's own padding
            x = c.causal_input(x, context, [0, 0, 0, 0, pads[4], pads[5]])
            return F.conv3d(x, self.weight, self.bias, self.stride, (0, pads[2], pads[0]), self.dilation, self.groups)
        x = c.causal_input(x, context, pads)
        if _fold_as_conv2d(x, self):
            return _conv3d_as_conv2d(x, self.weight, self.bias, self.stride)
        return F.conv3d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


#: PyTorch's host conv3d takes its oneDNN kernel only when ``B*C*T*H > 20480`` (or for batch > 1;
#: aten/src/ATen/native/Convolution.cpp, ``use_mkldnn``); below that it runs an im2col kernel
#: several times slower, which is what the few-channel convs of a small VAE hit. Folding the
#: temporal taps into channels makes the same sums one 2D conv, which takes the fast kernel.
_FOLD_MAX = 20480


def _fold_as_conv2d(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    # not for channels-last data: the fold's transposes would leave it in neither layout (the
    # fold is for the host's small NCDHW convs)
    return (x.shape[0] == 1 and x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] <= _FOLD_MAX
            and conv.groups == 1 and tuple(conv.dilation) == (1, 1, 1)
            and memory_format_of(x) is not torch.channels_last_3d)


def _conv3d_as_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      stride: Sequence[int]) -> torch.Tensor:
    """``conv3d(x, weight)`` (no padding, no dilation) as one conv2d over ``[B*T', kt*C, H, W]``:
    output frame ``t`` sees input frames ``t*st .. t*st+kt-1``, stacked along the channels in the
    order of the kernel's temporal taps."""
    b, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape
    st = stride[0]
    t_out = (t - kt) // st + 1
    if kt == 1 and st == 1:
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    else:
        # [B, T', kt, C, H, W]: tap k of output frame i is input frame i*st + k
        frames = x.transpose(1, 2).unfold(1, kt, st)[:t_out]  # [B, T', C, H, W, kt]
        frames = frames.permute(0, 1, 5, 2, 3, 4).reshape(b * t_out, kt * c, h, w)
    w2 = weight.permute(0, 2, 1, 3, 4).reshape(o, kt * c, kh, kw)
    y = F.conv2d(frames, w2, bias, tuple(stride[1:]))
    return y.reshape(b, t_out, o, y.shape[-2], y.shape[-1]).transpose(1, 2)


class SpatialConv2d(nn.Conv2d):
    """Per-frame 2D conv (on ``[N, C, H, W]``) whose padding ``hw_pad`` goes through the context."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, hw_pad: Sequence[int]) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.hw_pad = tuple(hw_pad)

    def forward(self, x: torch.Tensor, ctx: Optional[VAEContext] = None) -> torch.Tensor:  # type: ignore[override]
        c = ctx or _DEFAULT_CTX
        p = self.hw_pad
        if any(p) and p[0] == p[1] and p[2] == p[3] and c.conv_pads(x):  # channels-last: the conv pads
            return F.conv2d(x, self.weight, self.bias, self.stride, (p[2], p[0]), self.dilation, self.groups)
        x = c.pad(x, p)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class RMS_norm(nn.Module):  # noqa: N801  (official class name)
    """``x / ||x||_channels * sqrt(C) * gamma`` per position; ``gamma`` is ``[C,1,1,1]`` (video)
    or ``[C,1,1]`` (``images=True``). Computed by the ``channel_rms_norm`` op bound with
    :meth:`bind` (default: the reference math; low-precision inputs normalised in float32);
    ``forward(x, silu=True)`` also applies the SiLU that follows every norm but the attention's."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = math.sqrt(dim)
        self.gamma = nn.Parameter(torch.ones(shape))
        self._op: Callable = reference_channel_rms_norm

    def bind(self, op: Callable) -> None:
        """Use ``op`` (a ``channel_rms_norm`` implementation) from now on."""
        self._op = op

    def forward(self, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
        return self._op(x, self.gamma, silu=silu)


class ResidualBlock(nn.Module):
    """``RMS → SiLU → CausalConv3d 3³ → RMS → SiLU → (Dropout) → CausalConv3d 3³`` + shortcut."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim),
            nn.SiLU(),
            nn.Identity(),  # dropout 0 in the official model (inference)
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:
        h = self.shortcut(x, ctx) if isinstance(self.shortcut, CausalConv3d) else x
        r = self.residual
        x = ctx.causal_conv(r[2], r[0](x, silu=True))  # r[1] is that SiLU
        x = ctx.causal_conv(r[6], r[5](r[3](x, silu=True)))  # r[4] is that SiLU
        return x + h


class AttentionBlock(nn.Module):
    """Per-frame single-head self-attention over the H*W positions, with residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # channels-last 3-D data: this reshape is a view in 2-D channels_last, and so are the ones
        # below (q/k/v rows, the way back); NCDHW data is copied per frame as before
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(y))  # [bt, 3c, h, w]
        qkv = qkv.reshape(b * t, 1, 3 * c, h * w).transpose(2, 3)  # [bt, 1, hw, 3c]
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        y = ctx.attention(q, k, v)  # [bt, 1, hw, c]
        y = y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        y = self.proj(y)
        return x + y.reshape(b, t, c, h, w).transpose(1, 2)


class Upsample2x(nn.Module):
    """Nearest-exact x2 in H and W, computed in float32 (official ``Upsample``). ``native``: half
    precision data stays in its dtype -- nearest copies values, so the result is the same without
    the two float32 copies."""

    def forward(self, x: torch.Tensor, native: bool = False) -> torch.Tensor:
        if native and x.dtype in (torch.float16, torch.bfloat16):
            return F.interpolate(x, scale_factor=(2.0, 2.0), mode="nearest-exact")
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").to(x.dtype)


def interleave_halves(y: torch.Tensor) -> torch.Tensor:
    """``[b, 2c, t, h, w] -> [b, c, 2t, h, w]``: channels ``[0:c]`` become frame ``2i``, ``[c:2c]``
    frame ``2i+1`` (the temporal upsample); channels-last data stays channels-last."""
    b, c2, t, h, w = y.shape
    c = c2 // 2
    if memory_format_of(y) is torch.channels_last_3d:  # the same move, in the [b, t, h, w, c] order
        y = y.permute(0, 2, 3, 4, 1).reshape(b, t, h, w, 2, c).permute(0, 1, 4, 2, 3, 5)
        return y.reshape(b, 2 * t, h, w, c).contiguous().permute(0, 4, 1, 2, 3)  # t=1: a view until here
    return y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)


class Resample(nn.Module):
    """Spatial (and optionally temporal) down/upsampling; modes as in the official code.

    * ``downsample2d``: ZeroPad(right 1, bottom 1) + Conv2d 3x3 stride 2 (pad held by
      ``resample.1.hw_pad`` so it goes through the context; ``resample.0`` is a placeholder).
    * ``downsample3d``: same, then ``time_conv`` (3,1,1) stride 2 over [last cached frame, chunk];
      skipped on the first chunk.
    * ``upsample2d``: nearest-exact x2 (fp32) + Conv2d 3x3 ``dim -> dim//2`` (Wan2.1; the
      Wan2.2 VAE keeps ``dim``: ``upsample_out_dim``).
    * ``upsample3d``: first ``time_conv`` ``dim -> 2*dim`` (causal pad 2) whose two halves become
      two consecutive frames (first half earlier); skipped on the first chunk.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_out_dim: Optional[int] = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError("Resample mode must be one of %s, got %r" % (self.MODES, mode))
        self.mode = mode
        if mode.startswith("up"):
            out = dim // 2 if upsample_out_dim is None else upsample_out_dim
            self.resample = nn.Sequential(Upsample2x(), SpatialConv2d(dim, out, 3, 1, (1, 1, 1, 1)))
        else:
            self.resample = nn.Sequential(nn.Identity(), SpatialConv2d(dim, dim, 3, 2, (0, 1, 0, 1)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0)

    def _upsample_time(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:
        cache = ctx.cache
        if cache is None:
            raise ValueError("upsample3d needs the chunked decode (a FeatureCache)")
        prev = cache.get(self)
        if prev is None:  # first chunk: frame 0 is not upsampled in time
            cache.put(self, FIRST_CHUNK_DONE)
            return x
        if prev is FIRST_CHUNK_DONE:
            new = x[:, :, -2:].clone()
            if new.shape[2] < 2:
                new = torch.cat([torch.zeros_like(new), new], dim=2)
            y = self.time_conv(x, ctx)  # plain zero causal padding
        else:
            new = FeatureCache.next_context(x, prev)
            y = self.time_conv(x, ctx, prev)
        cache.put(self, new)
        return interleave_halves(y)

    def _downsample_time(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:
        cache = ctx.cache
        if cache is None:
            raise ValueError("downsample3d needs the chunked encode (a FeatureCache)")
        prev = cache.get(self)
        if prev is None:  # first chunk: 1 frame stays 1 frame
            cache.put(self, x.clone())
            return x
        cache.put(self, x[:, :, -1:].clone())
        assert isinstance(prev, torch.Tensor)
        return self.time_conv(torch.cat([prev[:, :, -1:], x], dim=2), ctx)

    def forward(self, x: torch.Tensor, ctx: VAEContext) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._upsample_time(x, ctx)
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)  # channels-last 3-D: a channels_last 2-D view
        if self.mode.startswith("up"):
            y = self.resample[0](y, native=ctx.direct_layout)
        y = self.resample[1](y, ctx)
        x = y.reshape(b, t, y.shape[1], y.shape[2], y.shape[3]).transpose(1, 2)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, ctx)
        return x


_DEFAULT_CTX = VAEContext()
