"""Wan2.2 A14B: two experts switched at a timestep boundary, one shared scheduler (docs/wan-model.md §3).

At a step with integer timestep ``t``: ``t >= boundary * 1000`` -> the high-noise expert with
``guide_scale[1]``, otherwise the low-noise expert with ``guide_scale[0]`` (the official tuple
order is (low, high)). The scheduler is not reset at the switch. With the default schedules this
gives T2V (40 steps, shift 12, boundary 0.875): 26 high + 14 low; I2V (40 steps, shift 5,
boundary 0.900): 15 high + 25 low.

Memory: two 14B experts take ~57 GB in the official precision (bf16 matmul weights). When they do
not both fit (``offload.park_inactive_expert: auto``) or when asked (``true``), each expert's
weights live in host memory (pinned where the backend allows it, so the host-to-device copy is
asynchronous and runs at full bandwidth) and only the active one has a device copy: switching
drops the device copy of the old expert (its weights never change, so nothing is copied back)
and copies the new one in. There is exactly one switch per run.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..config.models import EXPERTS
from ..models.dit import WanDiT
from ..precision import PrecisionPolicy
from .sampling import Expert

HIGH, LOW = EXPERTS[0][0], EXPERTS[1][0]
NUM_TRAIN_TIMESTEPS = 1000
#: auto parking keeps this share of the device's memory free for activations
ACTIVATION_RESERVE = 0.15

GIB = 2.0 ** 30


def expert_for(t: int, boundary: float) -> str:
    """The expert of one step: high-noise while ``t >= boundary * 1000``."""
    return HIGH if t >= boundary * NUM_TRAIN_TIMESTEPS else LOW


def expert_schedule(timesteps: Sequence[int], boundary: float) -> List[str]:
    """The expert used at each step of a schedule."""
    return [expert_for(int(t), boundary) for t in timesteps]


def expert_bytes(model_cfg, policy: PrecisionPolicy, quant=None) -> int:
    """Bytes of one expert's parameters, stored per the precision policy (computed on meta);
    with ``quant`` (the recipe's ``quant:``, a scheme in ``dit``) its quantized Linears as 8-bit
    weights + float32 scales, as they load (the memory plan counts the same tensors)."""
    if quant is not None and quant.dit != "none":
        from ..plan.weights import dit_tensors

        return dit_tensors(model_cfg, policy, quant.dit, tuple(quant.keep)).bytes
    model = WanDiT.on_meta(model_cfg, policy)
    model.apply_policy_dtypes()
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decide_parking(setting: Union[str, bool], runtime, device: torch.device, one_expert: int) -> Tuple[bool, str]:
    """(park, why) for ``offload.park_inactive_expert``: true/false as given; auto parks when the
    two experts would leave less than 15% of the device memory free."""
    if setting is True or setting is False:
        return bool(setting), "recipe: park_inactive_expert %s" % ("true" if setting else "false")
    if torch.device(device) == torch.device("cpu"):
        return False, "auto: the device is the host, nothing to park"
    info = runtime.memory_info()
    if info is None:
        return False, "auto: device memory unknown, both experts loaded"
    free, total = info
    need = 2 * one_expert
    room = free - ACTIVATION_RESERVE * total
    if need <= room:
        return False, "auto: both experts (%.1f GiB) fit in free device memory (%.1f of %.1f GiB)" % (
            need / GIB, free / GIB, total / GIB)
    return True, "auto: both experts (%.1f GiB) do not fit in free device memory (%.1f of %.1f GiB)" % (
        need / GIB, free / GIB, total / GIB)


class ExpertParking:
    """Host copies of every expert's parameters; at most one expert with a device copy."""

    def __init__(self, models: Dict[str, torch.nn.Module], device: torch.device, runtime) -> None:
        self.models = models
        self.device = torch.device(device)
        self.runtime = runtime
        self.pinned = False
        self.host: Dict[str, Dict[str, torch.Tensor]] = {}
        for name, model in models.items():
            self.host[name] = {pname: p.data for pname, p in model.named_parameters()}
        if self.device != torch.device("cpu"):
            self.pinned = self._pin()
        self.active: Optional[str] = None
        self.moves: List[Dict[str, object]] = []

    def _pin(self) -> bool:
        """Page-lock the host copies so the device copy is asynchronous; False where the
        backend's torch build cannot (then the copy is an ordinary synchronous one)."""
        try:
            for name, params in self.host.items():
                for pname in list(params):
                    params[pname] = params[pname].pin_memory()
                model_params = dict(self.models[name].named_parameters())
                for pname, t in params.items():
                    model_params[pname].data = t
        except Exception:  # a build without page-locked memory: ordinary copies
            return False
        return True

    def activate(self, name: str, step: Optional[int] = None) -> None:
        if name == self.active:
            return
        start = time.perf_counter()
        previous = self.active
        if previous is not None:
            for pname, p in self.models[previous].named_parameters():
                p.data = self.host[previous][pname]  # the device copy is dropped, not copied back
            self.runtime.empty_cache()
        host = self.host[name]
        for pname, p in self.models[name].named_parameters():
            p.data = host[pname].to(self.device, non_blocking=self.pinned)
        self.runtime.synchronize()
        self.active = name
        self.moves.append({"step": step, "parked": previous, "activated": name,
                           "seconds": round(time.perf_counter() - start, 4)})


class ExpertSwitch:
    """``select(t)`` for :func:`~wanport.pipeline.sampling.denoise_loop`: the expert of the step,
    its guide scale, and (when parking) the expert moved onto the device first."""

    def __init__(self, models: Dict[str, Callable], boundary: float, guide_scales: Tuple[float, float],
                 parking: Optional[ExpertParking] = None) -> None:
        if set(models) != {HIGH, LOW}:
            raise ValueError("two experts %s and %s expected, got %s" % (HIGH, LOW, sorted(models)))
        self.models = models
        self.boundary = float(boundary)
        self.guide_scales = (float(guide_scales[0]), float(guide_scales[1]))  # (low, high)
        self.parking = parking
        self._step = 0

    def moves(self) -> List[Dict[str, object]]:
        """The expert moves made while parking (step, parked, activated, seconds); [] without."""
        return list(self.parking.moves) if self.parking is not None else []

    def select(self, t: int) -> Expert:
        name = expert_for(t, self.boundary)
        if self.parking is not None:
            self.parking.activate(name, self._step)
        self._step += 1
        guide = self.guide_scales[1] if name == HIGH else self.guide_scales[0]
        return Expert(name, self.models[name], guide)


def load_expert_models(ckpts, policy: PrecisionPolicy, device: torch.device, runtime, ops, park_setting,
                       load_dit: Callable, quant=None):
    """Both experts loaded (on the device, or in host memory when parking) and bound to the op
    table; returns (models by name, ExpertParking or None, parking report dict). The models and
    the parking outlive a call; an :class:`ExpertSwitch` is made per call (its guide scales and
    boundary are per-call values). ``quant``: the recipe's ``quant:`` when the DiT is quantized
    as it loads (the parking decision weighs the quantized expert)."""
    one = expert_bytes(ckpts.dit.config, policy, quant)
    park, why = decide_parking(park_setting, runtime, device, one)
    target = torch.device("cpu") if park else device
    models = {name: load_dit(ckpts.experts[name], policy, target).bind_ops(ops) for name in (HIGH, LOW)}
    parking = ExpertParking(models, device, runtime) if park else None
    info = {"park_inactive_expert": park, "why": why, "expert_gib": round(one / GIB, 3),
            "pinned_host_memory": bool(parking and parking.pinned)}
    return models, parking, info


def load_experts(ckpts, policy: PrecisionPolicy, device: torch.device, runtime, ops, park_setting,
                 load_dit: Callable, boundary: float, guide_scales: Tuple[float, float], quant=None):
    """:func:`load_expert_models` and one switch over them; returns (ExpertSwitch, parking report dict)."""
    models, parking, info = load_expert_models(ckpts, policy, device, runtime, ops, park_setting, load_dit, quant)
    return ExpertSwitch(models, boundary, guide_scales, parking), info


__all__ = ["HIGH", "LOW", "expert_for", "expert_schedule", "expert_bytes", "decide_parking", "ExpertParking",
           "ExpertSwitch", "load_expert_models", "load_experts"]
