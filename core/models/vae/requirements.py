"""What each call site of the VAEs asks of its op implementation (input to the resolver)."""

from __future__ import annotations

from typing import Dict

from ...ops.impl import Requirements
from ...precision import PrecisionPolicy


def vae_requirements(policy: PrecisionPolicy, device_type: str) -> Dict[str, Requirements]:
    """The VAE computes in ``policy.vae`` throughout (weights and activations)."""
    return {"channel_rms_norm": Requirements(device_type=device_type, dtypes=frozenset({policy.vae}))}
