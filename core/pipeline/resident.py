"""The models of a pipeline, loaded once and kept between calls.

Each model is loaded on first use, in the order a call uses them: text encoder, CLIP (Wan2.1
I2V), VAE, then the DiT (or the two Wan2.2 A14B experts, after the others so that the automatic
parking decision sees the memory they leave). With ``resident=True`` (``Pipeline.from_recipe``)
all of them are loaded before the first call and stay. With ``resident=False`` (``wanport run``,
one video per process) the text encoder and CLIP are released right after they have encoded, so
they never share the device with the DiT (on the 14B, about 11 GB of T5 less at the peak); a
later call loads them again, and the DiT is released after the denoising loop, before the decode.

Offloading (``offload:``, ``wanport.offload``): a DiT kept in host memory (``dit: model``) gets its
device copy for the denoising loop only (:meth:`denoising`); a VAE kept in host memory
(``vae: host_until_decode``) for the decode and encode only (:meth:`vae_in_use`); streamed blocks
(``dit: block``) move by themselves inside every forward.
"""

from __future__ import annotations

import contextlib
from contextlib import nullcontext
from typing import Any, Dict

from ..models.vae.setup import prepare_vae
from ..offload.whole import HostResident, offload_of
from .moe import load_expert_models


class ResidentModels:
    def __init__(self, prep, resident: bool = True, uses_clip: bool = False) -> None:
        self.prep = prep
        self.resident = bool(resident)
        self.uses_clip = bool(uses_clip)
        self._text = None
        self._clip = None
        self._vae = None
        self._dit = None
        #: Wan2.2 A14B: (models by name, ExpertParking or None, parking report)
        self._experts = None

    # every loader takes the clock of the call (or of the pipeline's load) to time its "load" stage
    def _timed(self, clock):
        return clock.stage("load") if clock is not None else nullcontext()

    def text_encoder(self, clock=None):
        if self._text is None:
            prep = self.prep
            with self._timed(clock):
                self._text = prep.weights.load_text_encoder(prep.plan.checkpoint_dir, dtype=prep.plan.policy.text_encoder,
                                                            device=prep.text_device,
                                                            text_len=prep.ckpts.dit.config.text_len)
        return self._text

    def clip(self, clock=None):
        if self._clip is None:
            prep = self.prep
            with self._timed(clock):
                self._clip = prep.weights.load_clip(prep.ckpts, prep.plan.policy, prep.device)
        return self._clip

    def vae(self, clock=None):
        if self._vae is None:
            prep = self.prep
            with self._timed(clock):
                self._vae = prepare_vae(prep.weights.load_vae(prep.ckpts, prep.plan.policy, prep.device),
                                        prep.ops, prep.runtime)
        return self._vae

    def dit(self, clock=None):
        """The single DiT (not bound to a call's op table yet)."""
        if self._dit is None:
            prep = self.prep
            with self._timed(clock):
                self._dit = prep.weights.load_dit(prep.ckpts.dit, prep.plan.policy, prep.device).bind_ops(prep.ops)
        return self._dit

    def experts(self, clock=None):
        """(models by name, parking or None, parking report) of a two-expert model."""
        if self._experts is None:
            prep = self.prep
            with self._timed(clock):
                self._experts = load_expert_models(prep.ckpts, prep.plan.policy, prep.device, prep.runtime, prep.ops,
                                                   prep.plan.park_inactive_expert, prep.weights.load_dit,
                                                   prep.plan.quant if prep.quant is not None else None)
        return self._experts

    def dit_models(self):
        """The loaded DiT modules (one, or both Wan2.2 A14B experts); empty before they load."""
        if self._experts is not None:
            return list(self._experts[0].values())
        return [self._dit] if self._dit is not None else []

    def done_encoding(self) -> None:
        """After a call's text and image encoders ran: released unless resident."""
        if not self.resident and (self._text is not None or self._clip is not None):
            self._text = self._clip = None
            self.prep.runtime.empty_cache()

    @contextlib.contextmanager
    def denoising(self):
        """The DiT(s) on the device for the loop (``offload.dit: model``), back in host memory after."""
        held = [h for h in map(offload_of, self.dit_models()) if isinstance(h, HostResident)]
        try:
            for h in held:
                h.to_device()
            yield
        finally:
            for h in held:
                h.to_host()

    def done_denoising(self) -> None:
        """After the loop: a one-video pipeline releases the DiT before the decode."""
        if not self.resident and (self._dit is not None or self._experts is not None):
            self._dit = self._experts = None
            self.prep.runtime.empty_cache()

    @contextlib.contextmanager
    def vae_in_use(self, clock=None):
        """The VAE, on the device for the block (``offload.vae: host_until_decode``: only then)."""
        vae = self.vae(clock)
        held = offload_of(vae)
        if isinstance(held, HostResident):
            with held.in_use():
                yield vae
            self.prep.runtime.empty_cache()
        else:
            yield vae

    def offload_report(self) -> Dict[str, Any]:
        """What the offload settings did: per model, where its weights live and the moves made."""
        out: Dict[str, Any] = {}
        off = self.prep.plan.offload
        if off is not None:
            out["settings"] = {"dit": off.dit, "prefetch": off.prefetch, "text_encoder": off.text_encoder,
                               "vae": off.vae}
        for model in self.dit_models():
            held = offload_of(model)
            if held is not None:
                out.setdefault("dit", []).append(held.describe())
        held = offload_of(self._vae)
        if held is not None:
            out["vae"] = dict(held.describe(), moves=len(held.moves))
        out["text_encoder_device"] = str(self.prep.text_device)
        return out

    def load_all(self, clock=None) -> None:
        """Every model of the pipeline, in the order a call uses them."""
        self.text_encoder(clock)
        if self.uses_clip:
            self.clip(clock)
        self.vae(clock)
        if self.prep.ckpts.experts:
            self.experts(clock)
        else:
            self.dit(clock)

    def loaded(self) -> Dict[str, bool]:
        return {"text_encoder": self._text is not None, "clip": self._clip is not None, "vae": self._vae is not None,
                "dit": self._dit is not None or self._experts is not None}

    def close(self) -> None:
        """Drop every model (the device memory goes back to the allocator, then to the device)."""
        self._text = self._clip = self._vae = self._dit = self._experts = None
        self.prep.runtime.empty_cache()


__all__ = ["ResidentModels"]
