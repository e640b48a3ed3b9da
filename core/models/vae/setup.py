"""A loaded VAE made ready for its device: the backend's VAE ops bound and the conv layout the
runtime prefers (docs/architecture.md, "The VAE on a device")."""

from __future__ import annotations

from typing import Any, Dict

import torch

from .base import CausalVideoVAE
from .requirements import vae_requirements

#: the layouts a VAE runs in
MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last_3d)


def preferred_memory_format(runtime: Any) -> torch.memory_format:
    """The runtime's optional ``conv_memory_format()`` (cuda: ``channels_last_3d``, where cuDNN's
    3-D convs run without layout transposes); a runtime without it, or with an answer a VAE cannot
    use, keeps ``contiguous_format`` (NCDHW)."""
    probe = getattr(runtime, "conv_memory_format", None)
    if probe is None:
        return torch.contiguous_format
    try:
        fmt = probe()
    except Exception:  # a layout hint must never take the run down
        return torch.contiguous_format
    return fmt if fmt in MEMORY_FORMATS else torch.contiguous_format


def prepare_vae(vae: CausalVideoVAE, ops: Any, runtime: Any) -> CausalVideoVAE:
    """Bind the op table's VAE ops (once, at load) and lay the weights out as the runtime prefers."""
    return vae.bind_ops(ops).set_memory_format(preferred_memory_format(runtime))


def vae_report(vae: Any) -> Dict[str, Any]:
    """The VAE's ops and memory format for a report (empty for a model that is not ours)."""
    report = getattr(vae, "report", None)
    return report() if callable(report) else {}


__all__ = ["preferred_memory_format", "prepare_vae", "vae_report", "vae_requirements", "MEMORY_FORMATS"]
