"""Precision policy: which parts of the pipeline compute in which dtype. Configuration only.

``official`` reproduces the official Wan single-GPU flow (``wan/text2video.py``: fp32 master
weights under bf16 autocast). Autocast's bf16 copy of an fp32 weight is exactly ``w.to(bf16)``, so
wanport stores those weights in bf16 once at load (half the memory, identical math) and keeps
the float32 islands (time embedding, modulation, gated residual stream, norms' parameters,
head) in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .errors import ConfigError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str
    #: weights and activations of every Linear / patch Conv3d in the DiT (text_embedding too)
    matmul: torch.dtype
    #: q, k, v as handed to the attention op
    attention: torch.dtype
    #: time embedding, modulation tables, gated residual adds (the residual stream), head
    modulation: torch.dtype
    #: parameters of RMSNorm / affine LayerNorm (statistics are always float32)
    norm_params: torch.dtype
    #: VAE weights and activations
    vae: torch.dtype
    #: text encoder weights and activations
    text_encoder: torch.dtype
    #: CLIP image encoder (Wan2.1 I2V) weights and activations; official: fp16 (``clip_dtype``)
    image_encoder: torch.dtype = torch.float16

    def to_dict(self) -> Dict[str, str]:
        out = {"name": self.name}
        for f in fields(self):
            if f.name != "name":
                out[f.name] = str(getattr(self, f.name)).replace("torch.", "")
        return out


PRESETS: Dict[str, PrecisionPolicy] = {
    "official": PrecisionPolicy(
        name="official",
        matmul=torch.bfloat16,
        attention=torch.bfloat16,
        modulation=torch.float32,
        norm_params=torch.float32,
        vae=torch.float32,
        text_encoder=torch.bfloat16,
        image_encoder=torch.float16,
    ),
    "bf16": PrecisionPolicy(
        name="bf16",
        matmul=torch.bfloat16,
        attention=torch.bfloat16,
        modulation=torch.bfloat16,
        norm_params=torch.bfloat16,
        vae=torch.bfloat16,
        text_encoder=torch.bfloat16,
        image_encoder=torch.bfloat16,
    ),
    "fp32": PrecisionPolicy(
        name="fp32",
        matmul=torch.float32,
        attention=torch.float32,
        modulation=torch.float32,
        norm_params=torch.float32,
        vae=torch.float32,
        text_encoder=torch.float32,
        image_encoder=torch.float32,
    ),
}

_FIELDS = [f.name for f in fields(PrecisionPolicy) if f.name != "name"]


def parse_dtype(value: Any, where: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    key = str(value).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ConfigError("%s: unknown dtype %r; use one of bf16, fp16, fp32" % (where, value))
    return _DTYPES[key]


#: ``precision: auto``: ``official`` where the device computes bf16 matmuls natively, ``fp32``
#: where bf16 would be emulated (a CPU without AVX512-BF16/AMX or ARM BF16: ~80x slower than fp32)
AUTO = "auto"
AUTO_NATIVE, AUTO_EMULATED = "official", "fp32"


def is_auto(value: Union[str, Mapping[str, Any], None]) -> bool:
    """Whether the recipe's precision leaves the preset to the device (``auto`` or ``{preset: auto}``)."""
    if isinstance(value, Mapping):
        value = value.get("preset", "official")
    return value == AUTO


def _with_preset(value: Union[str, Mapping[str, Any], None], preset: str) -> Union[str, Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return dict(value, preset=preset)
    return preset


def resolve_policy(value: Union[str, Mapping[str, Any], None],
                   native_bf16: Optional[Tuple[bool, str]] = None) -> Tuple[PrecisionPolicy, Dict[str, Any]]:
    """The policy a run uses and how it was chosen (for the report).

    ``native_bf16``: what the backend's runtime says about the device, ``(fast, why)``; read
    only when the recipe asks for ``auto``. Returns ``(policy, {"requested", "resolved", "why"})``.
    """
    requested = value if value is not None else "official"
    if not is_auto(value):
        policy = policy_from_config(value)
        return policy, {"requested": requested, "resolved": policy.name, "why": "as the recipe asks"}
    if native_bf16 is None:
        raise ValueError("precision: auto needs the device's bf16 capability")
    fast, why = native_bf16
    preset = AUTO_NATIVE if fast else AUTO_EMULATED
    policy = policy_from_config(_with_preset(value, preset))
    because = ("%s: bf16 matmuls run natively, so the official flow" if fast else
               "%s: bf16 matmuls would be emulated (far slower than fp32), so fp32 throughout") % why
    return policy, {"requested": requested, "resolved": policy.name, "why": because}


def policy_from_config(value: Union[str, Mapping[str, Any], None]) -> PrecisionPolicy:
    """``precision: official`` or ``precision: {preset: official, vae: bf16, ...}``.

    ``auto`` (also as the mapping's ``preset``) is decided once the backend has started
    (:func:`resolve_policy`); before that it stands for ``official`` (e.g. to check a recipe)."""
    if value is None:
        return PRESETS["official"]
    if isinstance(value, str):
        if value == AUTO:
            return PRESETS[AUTO_NATIVE]
        if value not in PRESETS:
            raise ConfigError(
                "precision: unknown preset %r; use auto or one of %s (or a mapping with `preset:` and "
                "per-part dtypes: %s)" % (value, ", ".join(PRESETS), ", ".join(_FIELDS))
            )
        return PRESETS[value]
    if isinstance(value, Mapping):
        preset = value.get("preset", "official")
        base = policy_from_config(str(preset))
        changes = {}
        for key, dt in value.items():
            if key == "preset":
                continue
            if key not in _FIELDS:
                raise ConfigError(
                    "precision.%s: unknown part; parts are %s" % (key, ", ".join(_FIELDS))
                )
            changes[key] = parse_dtype(dt, "precision.%s" % key)
        if not changes:
            return base
        return replace(base, name="%s+custom" % base.name, **changes)
    raise ConfigError("precision: expected a preset name or a mapping, got %r" % (value,))
