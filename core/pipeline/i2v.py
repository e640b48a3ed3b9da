"""Image-to-video: Wan2.1 I2V-14B (CLIP + one DiT) and Wan2.2 I2V-A14B (two
experts, no CLIP) (docs/wan-model.md §6.2, §3).

1. The image (opened and checked before any weight loads) sets the aspect ratio; the recipe's
   size is the maximum area: ``lat_h = round(sqrt(area * h/w) // 8 // 2 * 2)``, likewise lat_w.
2. Noise ``[16, T, lat_h, lat_w]`` from the seed.
3. The mask: 4 channels per latent frame, all ones on frame 0, zeros elsewhere.
4. Text: the prompt and the negative prompt through T5.
5. Wan2.1 only: CLIP tokens of the image (penultimate layer, 257 tokens).
6. The conditioning video: the image resized with torch bicubic to (h, w) as frame 0, then
   F-1 black frames, VAE-encoded; ``y = [mask | latent]`` (20 channels). The DiT input is
   ``[noisy latent 16 | y 20]`` = 36 channels.
7. The sampling loop (the expert switch for A14B), decode.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .common import image_report, vae_encode
from .generator import Denoising, Generator
from .images import resize_bicubic, to_tensor
from .noise import initial_noise


def i2v_mask(frame_num: int, lat_h: int, lat_w: int, stride_t: int = 4) -> torch.Tensor:
    """[4, T, lat_h, lat_w]: official construction -- a per-pixel-frame mask (frame 0 = 1), the
    first frame repeated ``stride_t`` times in front, grouped by ``stride_t`` into latent frames."""
    msk = torch.ones(1, frame_num, lat_h, lat_w)
    msk[:, 1:] = 0
    msk = torch.cat([torch.repeat_interleave(msk[:, 0:1], repeats=stride_t, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // stride_t, stride_t, lat_h, lat_w)
    return msk.transpose(1, 2)[0]


def i2v_condition(vae, image: torch.Tensor, frame_num: int, width: int, height: int,
                  device: torch.device, stride: int = 8, encode=None) -> torch.Tensor:
    """``y`` [1, 4 + z, T, h/8, w/8]: the mask and the VAE latent of [resized image, black frames].
    ``image`` is [3, H, W] in [-1, 1] on the host; the resize runs on the host (official).
    ``encode`` replaces ``vae.encode`` (e.g. a spatially split encode)."""
    frame0 = resize_bicubic(image, width, height)  # [3, h, w], not clamped
    video = torch.cat([frame0[:, None], torch.zeros(3, frame_num - 1, height, width)], dim=1)
    latent = (encode or vae.encode)(video[None].to(device))
    mask = i2v_mask(frame_num, height // stride, width // stride).to(device=device, dtype=latent.dtype)
    return torch.cat([mask[None], latent], dim=1)


class I2VGenerator(Generator):
    """Wan2.1 I2V-14B (CLIP tokens + ``y``) and Wan2.2 I2V-A14B (``y`` only, two experts)."""

    def __init__(self, prep, models) -> None:
        super().__init__(prep, models)
        self.uses_clip = bool(prep.plan.preset.clip)

    def condition(self, call, ctx_cond: torch.Tensor, ctx_uncond: Optional[torch.Tensor]) -> Denoising:
        prep, plan, clock = self.prep, call.plan, call.clock
        preset, device = plan.preset, prep.device
        st, sh, sw = preset.vae_stride
        width, height = call.size  # from the image's aspect ratio and the maximum area (checked per call)
        frames = plan.frame_num
        latent_shape = (preset.z_dim, (frames - 1) // st + 1, height // sh, width // sw)
        image = to_tensor(call.image.image)
        # the noise is the first draw of the official code (it does not depend on the order here)
        latent = initial_noise(latent_shape, plan.seed, plan.noise, device)[None]

        clip_fea = None
        if self.uses_clip:
            clip = self.models.clip(clock)
            with clock.stage("image_encode"):
                clip_fea = clip.encode(image)
            del clip
        self.models.done_encoding()

        with clock.stage("vae_encode"), self.models.vae_in_use(clock) as vae:
            y = i2v_condition(vae, image, frames, width, height, device, stride=sh,
                              encode=lambda v: vae_encode(prep, vae, v))
        experts, finish = self.experts(call)

        cond: Dict[str, Any] = {"context": ctx_cond, "y": y}
        if clip_fea is not None:
            cond["clip_fea"] = clip_fea
        uncond = dict(cond, context=ctx_uncond) if ctx_uncond is not None else None
        report = {"image": image_report(call.image, width, height),
                  "conditioning": {"y_channels": int(y.shape[1]),
                                   "clip_tokens": None if clip_fea is None else list(clip_fea.shape[1:]),
                                   "max_area": plan.width * plan.height}}
        return Denoising(experts, latent, cond, uncond, width, height, frames, report=report, finish=finish)


__all__ = ["I2VGenerator", "i2v_mask", "i2v_condition"]
