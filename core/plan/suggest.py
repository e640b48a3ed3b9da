"""Layouts that fit: every combination of today's memory knobs for a device count, predicted,
kept when they fit, ordered by a simple predicted step time.

Knobs enumerated (each only where it applies): CFG parallel (2 when guidance is on), the
sequence degree split into Ulysses x ring (Ulysses must divide the heads), DiT FSDP, T5 FSDP,
T5 on the host, the split VAE, parking the inactive expert (Wan2.2 A14B), DiT offload (model or
block, prefetch 1), the VAE on the host until the decode.

Extension point: quantization is not planned here yet; add its values to ``QUANTIZATION_MODES``
(memory.py), its bytes to ``memory.predict`` and its cost to :func:`step_time` -- :func:`candidates`
already iterates over that tuple.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List

from . import constants as K
from .memory import DIT_OFFLOAD_MODES, QUANTIZATION_MODES, Layout, MemoryPlan, predict


@dataclass
class Suggestion:
    layout: Layout
    plan: MemoryPlan
    step_s: float
    overrides: List[str]

    def to_dict(self) -> Dict[str, object]:
        return {"layout": self.layout.describe(), "world": self.layout.world, "peak_bytes": self.plan.peak,
                "required_bytes": self.plan.required, "host_peak_bytes": self.plan.host_peak,
                "peak_stage": max(self.plan.ranks, key=lambda r: r.peak).peak_stage,
                "predicted_step_s": round(self.step_s, 4), "overrides": list(self.overrides)}


def _factor_pairs(sp: int, heads: int):
    for u in range(1, sp + 1):
        if sp % u == 0 and heads % u == 0:
            yield u, sp // u


def candidates(plan, arch, devices: int, resident: bool = False) -> List[Layout]:
    """Every layout of today's knobs on exactly ``devices`` ranks (1 device: single-device knobs)."""
    experts = arch.experts > 1
    cfgs = (1, 2) if plan.needs_uncond and devices % 2 == 0 else (1,)
    out = []
    for cfg in cfgs:
        sp = devices // cfg
        if cfg * sp != devices:
            continue
        multi = devices > 1
        for (u, r), dit_fsdp, t5_fsdp, t5_cpu, vae, park, off, vae_host, quant in itertools.product(
                _factor_pairs(sp, arch.dit.num_heads), (False, True) if multi else (False,),
                (False, True) if multi else (False,), (False, True), (False, True) if multi else (False,),
                (False, True) if experts else ("auto",), DIT_OFFLOAD_MODES, (False, True), QUANTIZATION_MODES):
            if t5_fsdp and t5_cpu or dit_fsdp and park is True:
                continue  # excluded by parallel/config.py
            if off != "none" and (dit_fsdp or park is True):
                continue  # excluded by offload/settings.py
            if vae and arch.vae_config and plan.height // plan.preset.vae_stride[1] < devices:
                continue
            out.append(Layout(cfg=cfg, ulysses=u, ring=r, dit_fsdp=dit_fsdp, t5_fsdp=t5_fsdp, t5_cpu=t5_cpu,
                              vae_split=vae, park_inactive_expert=park, offload_dit=off, vae_host=vae_host,
                              quantization=quant, resident=resident))
    return out


def step_time(plan, arch, layout: Layout, mem: MemoryPlan) -> float:
    """Predicted seconds per denoising step: the step's DiT FLOPs over the layout's devices at
    ``NOMINAL_FLOPS`` and the efficiency factors, plus once-per-run costs spread over the steps
    (the expert switch when parking, the text encoder on the host)."""
    from ..bench.flops import dit_forward_flops

    d = arch.dit
    fwd = dit_forward_flops(d.dim, d.ffn_dim, d.num_layers, mem.tokens.total, d.text_len)["total"]
    forwards = 2 if plan.needs_uncond else 1
    eff = 1.0
    if layout.cfg > 1:
        eff *= K.EFFICIENCY["cfg"]
    if layout.ulysses > 1:
        eff *= K.EFFICIENCY["ulysses"]
    if layout.ring > 1:
        eff *= K.EFFICIENCY["ring"]
    if layout.dit_fsdp and layout.world > 1:
        eff *= K.EFFICIENCY["dit_fsdp"]
    t = forwards * fwd / (K.NOMINAL_FLOPS * layout.world * eff)
    steps = max(1, plan.num_steps)
    if layout.park_inactive_expert is True and arch.experts > 1:
        one = sum(mem.weights["dit"].values()) / arch.experts
        t += 2 * one / K.HOST_DEVICE_BANDWIDTH / steps  # load the first expert, switch once
    dit_bytes = sum(mem.weights["dit"].values()) / arch.experts  # one expert
    if layout.offload_dit == "block":
        # every forward streams the blocks once; the copies overlap the compute, so the forward
        # takes the longer of the two (plus the hooks' host time per block)
        per_rank = forwards / layout.cfg if layout.cfg > 1 else forwards
        stream = per_rank * (dit_bytes / K.HOST_DEVICE_BANDWIDTH + d.num_layers * K.BLOCK_STREAM_OVERHEAD_S)
        t = max(t, stream)
    elif layout.offload_dit == "model":
        t += arch.experts * dit_bytes / K.HOST_DEVICE_BANDWIDTH / steps  # the device copy, once per call
    if layout.vae_host:
        t += sum(mem.weights["vae"].values()) / K.HOST_DEVICE_BANDWIDTH / steps
    if layout.t5_cpu:
        t5_flops = 2.0 * arch.dit.text_len * sum(mem.weights["t5"].values()) / 2 * (2 if plan.needs_uncond else 1)
        t += t5_flops / K.HOST_FLOPS / steps
    return t


def suggest(plan, arch, devices: int, device_memory: int, size=None, limit: int = 8,
            device_is_host: bool = False, resident: bool = False) -> List[Suggestion]:
    """The layouts that fit ``device_memory`` on ``devices`` ranks, fastest first (ties: less
    device memory first), at most ``limit``."""
    found: List[Suggestion] = []
    for layout in candidates(plan, arch, devices, resident):
        mem = predict(plan, arch, layout, device_memory=device_memory, device_memory_source="given", size=size,
                      device_is_host=device_is_host)
        if not mem.fits:
            continue
        found.append(Suggestion(layout, mem, step_time(plan, arch, layout, mem), layout.overrides(arch.experts > 1)))
    found = [s for s in found if not any(_simpler(o.layout, s.layout) for o in found)]
    found.sort(key=lambda s: (round(s.step_s, 6), s.plan.required, len(s.layout.describe())))
    return found[:limit]


_KNOBS = ("dit_fsdp", "t5_fsdp", "t5_cpu", "vae_split", "park_inactive_expert", "vae_host")


def _knobs_on(layout: Layout):
    on = {k for k in _KNOBS if getattr(layout, k) is True}
    if layout.offload_dit != "none":
        on.add("offload_dit_" + layout.offload_dit)
    return on


def _simpler(a: Layout, b: Layout) -> bool:
    """True when ``a`` is ``b`` with some of its memory knobs off (same degrees): ``b`` adds
    knobs that the fit does not need, so only ``a`` is listed."""
    same = (a.cfg, a.ulysses, a.ring, a.quantization) == (b.cfg, b.ulysses, b.ring, b.quantization)
    return same and _knobs_on(a) < _knobs_on(b)


__all__ = ["Suggestion", "candidates", "step_time", "suggest"]
