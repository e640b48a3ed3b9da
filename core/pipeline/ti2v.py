"""Wan2.2 TI2V-5B, recipe to mp4: text-to-video, or image-to-video with ``image:`` (docs/wan-model.md §3).

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

from typing import Any, Dict, Mapping, Optional

import torch

from ..config import RunConfig
from ..registry import Registry
from .common import (base_report, encode_prompts, image_report, prepare, save_report, vae_decode, vae_encode,
                     write_video)
from .images import resize_crop_lanczos, to_tensor
from .noise import initial_noise
from .sampling import SingleExpert, denoise_loop


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


def run_ti2v(cfg: RunConfig, raw: Mapping[str, Any], registry: Optional[Registry] = None,
             progress: bool = True, source: str = "recipe", observer=None, weights=None) -> Dict[str, Any]:
    prep = prepare(cfg, registry, source, weights, observer)
    plan, ckpts, runtime, device, clock = prep.plan, prep.ckpts, prep.runtime, prep.device, prep.clock
    policy, preset = plan.policy, plan.preset
    st, sh, sw = preset.vae_stride
    frames = plan.frame_num
    width, height = prep.size  # image mode: best_output_size of the image within the maximum area
    frame = to_tensor(resize_crop_lanczos(prep.image.image, width, height)) if prep.image is not None else None
    latent_shape = (preset.z_dim, (frames - 1) // st + 1, height // sh, width // sw)

    with torch.no_grad():
        with clock.stage("load"):
            text_encoder = prep.weights.load_text_encoder(plan.checkpoint_dir, dtype=policy.text_encoder,
                                                          device=prep.text_device,
                                                          text_len=ckpts.dit.config.text_len)
            vae = prep.weights.load_vae(ckpts, policy, device)
        latent = initial_noise(latent_shape, plan.seed, plan.noise, device)[None]
        with clock.stage("text_encode"):
            ctx_cond, ctx_uncond = encode_prompts(text_encoder, plan, ckpts.dit.config.text_len, device)
        del text_encoder
        runtime.empty_cache()

        timestep_fn = after_step = None
        if frame is not None:
            with clock.stage("vae_encode"):
                z = vae_encode(prep, vae, frame[None, :, None].to(device))  # [1, 48, 1, h/16, w/16]
            mask = first_frame_mask(latent_shape, device)

            def keep_first_frame(x: torch.Tensor) -> torch.Tensor:
                return (1.0 - mask) * z + mask * x

            after_step = keep_first_frame
            latent = keep_first_frame(latent)
            timestep_fn = token_timesteps(mask, ckpts.dit.config.patch_size)

        with clock.stage("load"):
            dit = prep.weights.load_dit(ckpts.dit, policy, device).bind_ops(prep.ops)
        cond = {"context": ctx_cond}
        uncond = {"context": ctx_uncond} if ctx_uncond is not None else None
        with clock.stage("denoise"):
            latent, _ = denoise_loop(SingleExpert(dit, plan.guide_scale), prep.scheduler, latent, cond, uncond,
                                     clock, progress, timestep_fn=timestep_fn, after_step=after_step,
                                     observer=prep.observer, cfg_parallel=prep.cfg_parallel)
        del dit
        runtime.empty_cache()

        with clock.stage("vae_decode"):
            video = vae_decode(prep, vae, latent)

    summary = write_video(prep, video)
    report = base_report(prep, cfg, raw, width, height, frames)
    report["mode"] = "image-to-video" if frame is not None else "text-to-video"
    report["image"] = image_report(prep.image, width, height)
    if frame is not None:
        report["conditioning"] = {"first_frame_latent": list(z.shape[1:]), "per_token_timesteps": True,
                                  "max_area": plan.width * plan.height}
    return save_report(prep, report, summary)


__all__ = ["run_ti2v", "first_frame_mask", "token_timesteps"]
