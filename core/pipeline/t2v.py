"""Text-to-video, recipe to mp4: Wan2.1 T2V (one DiT) and Wan2.2 T2V-A14B (two experts) (docs/wan-model.md §6.2, §3).

Order of work: validate the recipe -> choose the backend -> inspect every checkpoint file
(keys, shapes) -> start the runtime and resolve the op table -> load -> encode text ->
denoise -> decode -> write the video and the report. Every user error is raised before the
first weight is read.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from ..config import RunConfig
from ..registry import Registry
from .common import base_report, encode_prompts, pad_context, prepare, save_report, vae_decode, write_video
from .moe import load_experts
from .noise import initial_noise
from .sampling import SingleExpert, denoise_loop
from .timing import StageClock


def denoise(dit, scheduler, latent: torch.Tensor, ctx_cond: torch.Tensor, ctx_uncond: Optional[torch.Tensor],
            guide_scale: float, clock: Optional[StageClock] = None, progress: bool = True,
            cfg_parallel=None, observer=None) -> torch.Tensor:
    """The single-model sampling loop: CFG as the official formula, two batch-1 forwards per
    step (the unconditional one skipped when guide_scale == 1)."""
    latent, _ = denoise_loop(SingleExpert(dit, guide_scale), scheduler, latent, {"context": ctx_cond},
                             {"context": ctx_uncond} if ctx_uncond is not None else None, clock, progress,
                             observer=observer, cfg_parallel=cfg_parallel)
    return latent


def run_t2v(cfg: RunConfig, raw: Mapping[str, Any], registry: Optional[Registry] = None,
            progress: bool = True, source: str = "recipe", observer=None, weights=None) -> Dict[str, Any]:
    prep = prepare(cfg, registry, source, weights, observer)
    plan, ckpts, runtime, device, clock = prep.plan, prep.ckpts, prep.runtime, prep.device, prep.clock
    policy = plan.policy
    experts_info = None

    with torch.no_grad():
        # the text encoder is loaded, used and released before the DiT arrives: the two never share
        # the device (on the 14B: about 11 GB of T5 less at the peak)
        with clock.stage("load"):
            text_encoder = prep.weights.load_text_encoder(plan.checkpoint_dir, dtype=policy.text_encoder,
                                                          device=prep.text_device,
                                                          text_len=ckpts.dit.config.text_len)
        with clock.stage("text_encode"):
            ctx_cond, ctx_uncond = encode_prompts(text_encoder, plan, ckpts.dit.config.text_len, device)
        del text_encoder
        runtime.empty_cache()

        with clock.stage("load"):
            if not ckpts.experts:
                dit = prep.weights.load_dit(ckpts.dit, policy, device).bind_ops(prep.ops)
            vae = prep.weights.load_vae(ckpts, policy, device)

        if ckpts.experts:  # after the text encoder is gone: the auto parking decision sees free memory
            with clock.stage("load"):
                switch, experts_info = load_experts(ckpts, policy, device, runtime, prep.ops,
                                                    plan.park_inactive_expert, prep.weights.load_dit, plan.boundary,
                                                    plan.guide_scales)

        # drawn in the official shape (no batch dim), so `noise: device` matches the official draw
        latent = initial_noise(plan.latent_shape, plan.seed, plan.noise, device)[None]
        with clock.stage("denoise"):
            if ckpts.experts:
                latent, names = denoise_loop(switch, prep.scheduler, latent, {"context": ctx_cond},
                                             {"context": ctx_uncond} if ctx_uncond is not None else None,
                                             clock, progress, observer=prep.observer,
                                             cfg_parallel=prep.cfg_parallel)
                experts_info["moves"] = switch.moves()
                del switch
            else:
                latent = denoise(dit, prep.scheduler, latent, ctx_cond, ctx_uncond, plan.guide_scale, clock,
                                 progress, prep.cfg_parallel, prep.observer)
                del dit
        runtime.empty_cache()

        with clock.stage("vae_decode"):
            video = vae_decode(prep, vae, latent)

    summary = write_video(prep, video)
    report = base_report(prep, cfg, raw, plan.width, plan.height, plan.frame_num)
    if experts_info is not None:
        report["experts"] = experts_report(plan, experts_info, names)
    return save_report(prep, report, summary)


def experts_report(plan, info: Dict[str, Any], names) -> Dict[str, Any]:
    """The MoE part of a report: the boundary, the expert and guide scale of every step."""
    low, high = plan.guide_scales
    out = {
        "boundary": plan.boundary,
        "boundary_timestep": plan.boundary * 1000,
        "guide_scale": {"low_noise": low, "high_noise": high},
        "per_step": names,
        "guide_scale_per_step": [high if n == "high_noise" else low for n in names],
        "steps": {n: names.count(n) for n in ("high_noise", "low_noise")},
    }
    out.update(info)
    return out


__all__ = ["run_t2v", "denoise", "pad_context", "experts_report"]
