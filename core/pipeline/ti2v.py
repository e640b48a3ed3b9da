"""Wan2.2 TI2V-5B: text-to-video, or image-to-video with ``image:`` (docs/wan-model.md §3).

* Wan2.2 VAE (z 48, 4x16x16), DiT with 48 in/out channels, 24 fps, 121 frames by default.
* Text mode: exactly the T2V loop at the recipe's size (the official per-token timesteps are
  all equal to t then, which is the same computation as one timestep per sample).
* Image mode: the recipe's size is the maximum area; the output size is the multiple of 32 whose
  aspect ratio is closest to the image's (``best_output_size``); the image is scaled with PIL
  LANCZOS to cover it and centre-cropped, VAE-encoded as one latent frame ``z``; with
  ``mask`` = ones except latent frame 0, the sample is ``(1 - mask) * z + mask * sample`` before
  the loop and after every scheduler step, and every token gets its own timestep: 0 for the first
  frame's tokens, t for the rest.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .common import image_report, vae_encode
from .generator import Denoising, Generator
from .images import resize_crop_lanczos, to_tensor
from .noise import initial_noise


def first_frame_mask(latent_shape, device: torch.device) -> torch.Tensor:
    """[1, C, T, h, w]: zeros on latent frame 0 (kept from the image), ones elsewhere."""
    mask = torch.ones((1,) + tuple(latent_shape), device=device)
    mask[:, :, 0] = 0
    return mask


def token_timesteps(mask: torch.Tensor, patch_size=(1, 2, 2)):
    """``t -> [1, L]`` per-token timesteps: the mask's first channel sampled at the patch grid
    (``mask[0][0][:, ::2, ::2]``), flattened in token order, times t."""
    pt, ph, pw = patch_size
    grid = mask[0, 0, ::pt, ::ph, ::pw].flatten().cpu()

    def fn(t: torch.Tensor) -> torch.Tensor:
        return (grid * t).reshape(1, -1)

    return fn


class TI2VGenerator(Generator):
    def condition(self, call, ctx_cond: torch.Tensor, ctx_uncond: Optional[torch.Tensor]) -> Denoising:
        prep, plan, clock = self.prep, call.plan, call.clock
        preset, device = plan.preset, prep.device
        st, sh, sw = preset.vae_stride
        frames = plan.frame_num
        width, height = call.size  # image mode: best_output_size of the image within the maximum area
        frame = to_tensor(resize_crop_lanczos(call.image.image, width, height)) if call.image is not None else None
        latent_shape = (preset.z_dim, (frames - 1) // st + 1, height // sh, width // sw)
        self.models.vae(clock)  # loaded beside the text encoder (the decode needs it)
        latent = initial_noise(latent_shape, plan.seed, plan.noise, device)[None]

        timestep_fn = after_step = None
        report: Dict[str, Any] = {"mode": "image-to-video" if frame is not None else "text-to-video",
                                  "image": image_report(call.image, width, height)}
        if frame is not None:
            with clock.stage("vae_encode"), self.models.vae_in_use(clock) as vae:
                z = vae_encode(prep, vae, frame[None, :, None].to(device))  # [1, 48, 1, h/16, w/16]
            mask = first_frame_mask(latent_shape, device)

            def keep_first_frame(x: torch.Tensor) -> torch.Tensor:
                return (1.0 - mask) * z + mask * x

            after_step = keep_first_frame
            latent = keep_first_frame(latent)
            timestep_fn = token_timesteps(mask, prep.ckpts.dit.config.patch_size)
            report["conditioning"] = {"first_frame_latent": list(z.shape[1:]), "per_token_timesteps": True,
                                      "max_area": plan.width * plan.height}
        experts, finish = self.experts(call)
        return Denoising(experts, latent, {"context": ctx_cond},
                         {"context": ctx_uncond} if ctx_uncond is not None else None, width, height, frames,
                         timestep_fn=timestep_fn, after_step=after_step, report=report, finish=finish)


__all__ = ["TI2VGenerator", "first_frame_mask", "token_timesteps"]
