"""The weight source (``pipeline/weights.py``) of a run with ``offload:`` settings: each model is
loaded where the settings put it.

* ``dit: block`` -- the DiT is read into host memory, its root (embeddings, head) moved to the
  device and its blocks left in page-locked host memory for :class:`~.blocks.BlockStreamer`.
* ``dit: model`` -- the whole DiT in page-locked host memory; ``pipeline/resident.py`` gives it a
  device copy for the denoising loop only (:class:`~.whole.HostResident`).
* ``vae: host_until_decode`` -- the VAE in host memory, on the device only while it decodes (or
  encodes the conditioning of an image task).
* ``text_encoder: host`` needs no loader change: the text encoder is loaded on
  ``Prepared.text_device``, the host.

Each model gets its own :class:`~.transfers.Transfers` (its own side stream).
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from .blocks import stream_blocks
from .settings import OffloadPlan
from .transfers import Transfers
from .whole import keep_on_host

HOST = torch.device("cpu")


class OffloadWeights:
    def __init__(self, base, offload: OffloadPlan, runtime, device: torch.device) -> None:
        self.base = base
        self.offload = offload
        self.runtime = runtime
        self.device = torch.device(device)

    def __getattr__(self, name):
        return getattr(self.base, name)

    def describe(self) -> Dict[str, Any]:
        return dict(self.base.describe(), offload=self.offload.describe())

    def load_dit(self, ckpt, policy, device):
        if self.offload.dit == "none":
            return self.base.load_dit(ckpt, policy, device)
        model = self.base.load_dit(ckpt, policy, HOST)
        transfers = Transfers(self.runtime, self.device)
        if self.offload.dit == "block":
            stream_blocks(model, transfers, self.offload.prefetch)
        else:
            keep_on_host(model, transfers, "the DiT")
        return model

    def load_vae(self, ckpts, policy, device):
        if self.offload.vae == "device":
            return self.base.load_vae(ckpts, policy, device)
        vae = self.base.load_vae(ckpts, policy, HOST)
        keep_on_host(vae, Transfers(self.runtime, self.device), "the VAE")
        return vae


__all__ = ["OffloadWeights"]
