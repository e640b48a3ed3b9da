"""The recipe's ``offload:`` section, checked (``config/validate.py``) into a frozen :class:`OffloadPlan`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

#: where the DiT's weights live: on the device (none), in host memory with a device copy only
#: while denoising (model), or in host memory streamed block by block through every forward (block)
DIT_MODES = ("none", "model", "block")
#: where the text encoder runs: on the device, or on the host (like the official ``--t5_cpu``)
TEXT_ENCODER_MODES = ("device", "host")
#: where the VAE's weights live: on the device, or in host memory until the decode (and, for
#: image-conditioned tasks, during the encode) needs them
VAE_MODES = ("device", "host_until_decode")
#: the most blocks copied ahead of the running one
MAX_PREFETCH = 8


@dataclass(frozen=True)
class OffloadPlan:
    dit: str = "none"
    #: blocks copied ahead of the running one (``dit: block``)
    prefetch: int = 1
    text_encoder: str = "device"
    vae: str = "device"

    @property
    def active(self) -> bool:
        return self.dit != "none" or self.text_encoder != "device" or self.vae != "device"

    def describe(self) -> str:
        parts = []
        if self.dit != "none":
            parts.append("dit-%s%s" % (self.dit, "-prefetch%d" % self.prefetch if self.dit == "block" else ""))
        if self.text_encoder == "host":
            parts.append("t5-on-host")
        if self.vae != "device":
            parts.append("vae-host")
        return "+".join(parts)


def check_offload(section, *, experts: bool, park, dit_fsdp: bool, t5_fsdp: bool, compile_: bool,
                  problems: List[str]) -> OffloadPlan:
    """The section's values checked against each other and the run; problems appended."""
    dit = section.dit
    if dit not in DIT_MODES:
        problems.append("offload.dit: %r is not one of %s" % (dit, " | ".join(DIT_MODES)))
        dit = "none"
    text = section.text_encoder
    if text not in TEXT_ENCODER_MODES:
        problems.append("offload.text_encoder: %r is not one of %s" % (text, " | ".join(TEXT_ENCODER_MODES)))
        text = "device"
    vae = section.vae
    if vae not in VAE_MODES:
        problems.append("offload.vae: %r is not one of %s" % (vae, " | ".join(VAE_MODES)))
        vae = "device"
    prefetch = section.prefetch
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or not 0 <= prefetch <= MAX_PREFETCH:
        problems.append("offload.prefetch: blocks copied ahead of the running one, an integer in 0..%d, got %r"
                        % (MAX_PREFETCH, prefetch))
        prefetch = 1
    if dit != "none":
        if dit_fsdp:
            problems.append("offload.dit: %s keeps the whole DiT in each process's host memory; parallel.dit_fsdp "
                            "shards it instead -- use one of them" % dit)
        if experts and park is True:
            problems.append("offload.dit: %s already keeps both experts in host memory; "
                            "drop offload.park_inactive_expert: true" % dit)
        if compile_:
            problems.append("offload.dit: %s swaps the blocks' weights between forwards, which compiled blocks "
                            "do not support; set compile: false" % dit)
    if text == "host" and t5_fsdp:
        problems.append("offload.text_encoder: host runs the T5 on the host; parallel.t5_fsdp shards it across "
                        "devices -- use one of them")
    return OffloadPlan(dit=dit, prefetch=prefetch, text_encoder=text, vae=vae)


__all__ = ["OffloadPlan", "DIT_MODES", "TEXT_ENCODER_MODES", "VAE_MODES", "MAX_PREFETCH", "check_offload"]
