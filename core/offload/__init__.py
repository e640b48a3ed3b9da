"""Offloading: model weights kept in host memory and brought to the device when they run.

* :mod:`.settings` -- the recipe's ``offload:`` section as a checked, frozen plan.
* :mod:`.transfers` -- host<->device copies through the backend runtime's optional stream, event
  and page-locked memory methods (synchronous copies where a runtime has none).
* :mod:`.tensors` -- every tensor a module holds (parameters and buffers, of any dtype), read and
  swapped in place.
* :mod:`.blocks` -- ``offload.dit: block``: the DiT's blocks streamed through the device, the next
  ones copied on a side stream while one runs, each device copy released once its block has run.
* :mod:`.whole` -- a whole module in host memory with a device copy only while it is in use
  (``offload.dit: model``, ``offload.vae: host_until_decode``).
* :mod:`.weights` -- the weight-source wrapper that loads each model where the settings put it.
"""

from .settings import DIT_MODES, TEXT_ENCODER_MODES, VAE_MODES, OffloadPlan
from .transfers import OffloadError, Transfers

__all__ = ["OffloadPlan", "DIT_MODES", "TEXT_ENCODER_MODES", "VAE_MODES", "OffloadError", "Transfers"]
