"""What the Wan2.1 and Wan2.2 VAEs share: the official chunked causal encode (1, 4, 4, ... frames)
and the one-latent-frame-at-a-time decode, both with a temporal feature cache, and the latent
normalisation ``(mu - mean) * (1/std)`` (the official form of applying the constants)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .cache import FeatureCache
from .layers import RMS_norm, VAEContext

ProgressFn = Callable[[int, int], None]


class CausalVideoVAE(nn.Module):
    """Subclasses build ``encoder``, ``conv1``, ``conv2``, ``decoder`` and set ``z_dim``,
    ``temporal_stride``, ``spatial_stride``, ``LATENT_MEAN``/``LATENT_STD`` and ``NAME``."""

    NAME = "VAE"
    LATENT_MEAN: Sequence[float] = ()
    LATENT_STD: Sequence[float] = ()
    #: the layout of the conv weights and of the activations (set_memory_format)
    memory_format: torch.memory_format = torch.contiguous_format
    #: channels-last data skips the layout moves that only copy (``VAEContext.direct_layout``); off
    #: for before/after measurements
    direct_layout: bool = True
    #: the implementation of each VAE op kind (bind_ops; the reference math until then)
    ops_bound: Dict[str, str] = {"channel_rms_norm": "reference.torch (standalone)"}

    # binding (once, after the weights are in place) ------------------------------------
    def bind_ops(self, ops: Any) -> "CausalVideoVAE":
        """Use the op table's ``channel_rms_norm`` (a ``ResolvedOp`` or a callable) in every RMS
        norm. A table resolved without the VAE's call site (``None``) keeps the reference math."""
        op = getattr(ops, "channel_rms_norm", None)
        if op is None:
            return self
        fn = getattr(op, "fn", op)
        for mod in self.modules():
            if isinstance(mod, RMS_norm):
                mod.bind(fn)
        self.ops_bound = {"channel_rms_norm": getattr(op, "impl", getattr(fn, "__name__", "?"))}
        return self

    def set_memory_format(self, memory_format: torch.memory_format) -> "CausalVideoVAE":
        """Lay the conv weights out in ``memory_format`` (``channels_last_3d``: the 5-D weights, and
        the per-frame 2-D convs' weights in ``channels_last``) and convert encode/decode inputs to it;
        the layers keep that layout. ``Module.to(memory_format=...)`` refuses the non-conv
        parameters, so each conv weight is converted on its own."""
        if memory_format not in (torch.contiguous_format, torch.channels_last_3d):
            raise ValueError("a VAE runs in contiguous_format or channels_last_3d, not %s" % (memory_format,))
        cl = memory_format is torch.channels_last_3d
        for mod in self.modules():
            if isinstance(mod, (nn.Conv3d, nn.Conv2d)):
                fmt = torch.contiguous_format if not cl else (
                    torch.channels_last_3d if mod.weight.dim() == 5 else torch.channels_last)
                mod.weight.data = mod.weight.data.contiguous(memory_format=fmt)
        self.memory_format = memory_format
        return self

    def report(self) -> Dict[str, Any]:
        """What ran: the op implementations and the memory format (for run and bench reports)."""
        return dict(self.ops_bound, memory_format=str(self.memory_format).replace("torch.", ""))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.memory_format is torch.contiguous_format else x.contiguous(memory_format=self.memory_format)

    # hooks of the per-version input/output layout --------------------------------------
    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _decode_frame(self, x: torch.Tensor, ctx: VAEContext, first: bool) -> torch.Tensor:
        return self.decoder(x, ctx)

    # -------------------------------------------------------------------------------------
    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    def _scale(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.z_dim != len(self.LATENT_MEAN):
            raise ValueError("the %s latent constants are for z_dim=%d, this VAE has z_dim=%d"
                             % (self.NAME, len(self.LATENT_MEAN), self.z_dim))
        mean = torch.tensor(self.LATENT_MEAN, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(self.LATENT_STD, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        return mean, inv_std

    @torch.no_grad()
    def encode(self, video: torch.Tensor, context: Optional[VAEContext] = None) -> torch.Tensor:
        """``[B,3,F,H,W]`` in [-1,1] -> normalised latent ``[B,z,(F-1)//s_t+1,H/s,W/s]`` (float32).

        ``context``: e.g. ``wanport.parallel.vae.SplitVAEContext`` for a spatially split run."""
        s, sp = self.temporal_stride, self.spatial_stride
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError("encode expects a video [B,3,F,H,W], got %s" % (list(video.shape),))
        f, h, w = video.shape[2:]
        if f < 1 or (f - 1) % s != 0:
            raise ValueError("encode needs F = %dn+1 frames, got F=%d" % (s, f))
        if h % sp or w % sp:
            raise ValueError("encode needs H and W multiples of %d, got %dx%d" % (sp, h, w))
        p = self._param()
        x = self._layout(self._encoder_input(video.to(device=p.device, dtype=p.dtype)))
        ctx = context if context is not None else VAEContext(FeatureCache(), self.direct_layout)
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
        """Normalised latent ``[B,z,T,h,w]`` -> video ``[B,3,1+s_t(T-1),s*h,s*w]`` float32 in [-1,1].

        ``progress(done, total)`` after each latent frame; ``context`` as for :meth:`encode`."""
        if z.dim() != 5 or z.shape[1] != self.z_dim:
            raise ValueError("decode expects a latent [B,%d,T,h,w], got %s" % (self.z_dim, list(z.shape)))
        b, _, t, h, w = z.shape
        if t < 1:
            raise ValueError("decode needs at least one latent frame")
        p = self._param()
        mean, inv_std = self._scale(p.device)
        x = z.to(device=p.device, dtype=torch.float32) / inv_std + mean
        x = self.conv2(self._layout(x.to(p.dtype)))
        s, sp = self.temporal_stride, self.spatial_stride
        n_frames = 1 + s * (t - 1)
        video = torch.empty(b, 3, n_frames, h * sp, w * sp, dtype=torch.float32, device=p.device)
        ctx = context if context is not None else VAEContext(FeatureCache(), self.direct_layout)
        pos = 0
        for i in range(t):
            y = self._decode_frame(x[:, :, i:i + 1], ctx, i == 0)
            video[:, :, pos:pos + y.shape[2]].copy_(y).clamp_(-1.0, 1.0)
            pos += y.shape[2]
            del y
            if progress is not None:
                progress(i + 1, t)
        if pos != n_frames:  # pragma: no cover - structural invariant
            raise RuntimeError("decoder produced %d frames, expected %d" % (pos, n_frames))
        return video
