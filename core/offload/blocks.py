"""``offload.dit: block``: the DiT's blocks live in (page-locked) host memory and stream through
the device, in their fixed order, once per forward.

Schedule of one forward over ``n`` blocks with ``prefetch = N`` (the blocks copied ahead of the
running one):

* forward start (a pre-hook on the model, before the patch and text embeddings run): copies of
  blocks ``0..N`` are issued.
* block ``i`` starts (its pre-hook): the compute stream waits for block ``i``'s copy (the host does
  not) and the block's parameters and buffers are pointed at the device copies.
* block ``i`` ends (its hook): an event is recorded on the compute stream, the block points back
  at its host tensors (the device copy is released: the allocator frees it once the compute
  stream has passed it), then block ``j = i + N + 1`` is copied. Before issuing it the host waits
  for block ``i - 1``'s end event, so at most ``N + 2`` blocks have device copies at any time (the
  running one, the ``N`` prefetched, and the one being copied) however far the host runs ahead.

The order never changes, so every copy is issued ahead of its use and none waits on the host.
Everything outside ``model.blocks`` (embeddings, head, their modulation) stays on the device.
A copy that fails raises :class:`~.transfers.OffloadError` out of the forward; the next forward
starts from a clean state (every block on its host tensors, nothing pending).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from .tensors import Slot, nbytes, slots
from .transfers import OffloadError, Pending, Transfers


class BlockStreamer:
    def __init__(self, model: torch.nn.Module, transfers: Transfers, prefetch: int = 1,
                 blocks_attr: str = "blocks") -> None:
        self.model = model
        self.transfers = transfers
        self.prefetch = int(prefetch)
        blocks = getattr(model, blocks_attr)
        self.blocks = list(blocks)
        self.n = len(self.blocks)
        prefix = blocks_attr + "."
        # the root (everything outside the blocks) goes to the device and stays there
        device = transfers.device
        for slot in slots(model, skip=lambda name: name.startswith(prefix)):
            t = slot.get()
            if t.device != device:
                slot.set(t.to(device))
        # each block's tensors: one host copy (page-locked where the runtime can)
        self.slots: List[List[Slot]] = [slots(b) for b in self.blocks]
        self.host: List[List[torch.Tensor]] = []
        for block_slots in self.slots:
            host = transfers.to_host_all([s.get() for s in block_slots])
            for s, t in zip(block_slots, host):
                s.set(t)
            self.host.append(host)
        self.block_bytes = [nbytes(h) for h in self.host]
        self._pending: Dict[int, Pending] = {}
        self._done: Dict[int, object] = {}
        self._issued = -1  # the highest block whose copy was issued in this forward
        #: (event, block) in order -- "copy", "attach", "release" -- when recording (tests, reports)
        self.log: Optional[List[Tuple[str, int]]] = None
        self.forwards = 0
        self._handles = [model.register_forward_pre_hook(self._start)]
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._attach_hook(i)))
            self._handles.append(block.register_forward_hook(self._release_hook(i)))

    # ------------------------------------------------------------------ facts
    @property
    def largest_block_bytes(self) -> int:
        return max(self.block_bytes) if self.block_bytes else 0

    def describe(self) -> Dict[str, object]:
        return {"mode": "block", "blocks": self.n, "prefetch": self.prefetch,
                "block_bytes": self.largest_block_bytes, "host_bytes": sum(self.block_bytes),
                "asynchronous": self.transfers.asynchronous,
                "pinned": self.transfers.asynchronous and self.transfers.pin_failed is None}

    # ------------------------------------------------------------------ the schedule
    def _note(self, what: str, i: int) -> None:
        if self.log is not None:
            self.log.append((what, i))

    def _issue(self, i: int) -> None:
        self._note("copy", i)
        self._pending[i] = self.transfers.copy_in(self.host[i], "DiT block %d of %d" % (i, self.n))
        self._issued = i

    def reset(self) -> None:
        """Every block back on its host tensors, nothing pending (after a failed forward too)."""
        for block_slots, host in zip(self.slots, self.host):
            for s, t in zip(block_slots, host):
                s.set(t)
        self._pending.clear()
        self._done.clear()
        self._issued = -1

    def _start(self, module, args) -> None:
        self.reset()
        self.forwards += 1
        try:
            for i in range(min(self.n, self.prefetch + 1)):
                self._issue(i)
        except BaseException:
            self.reset()
            raise

    def _attach_hook(self, i: int):
        def hook(module, args):
            try:
                pending = self._pending.pop(i, None)
                if pending is None:  # the block runs outside a model forward (or out of order)
                    raise OffloadError("DiT block %d ran without its device copy: the streamed blocks run only "
                                       "through the model's forward, in order" % i)
                tensors = self.transfers.ready(pending)
                for s, t in zip(self.slots[i], tensors):
                    s.set(t)
                self._note("attach", i)
            except BaseException:
                self.reset()
                raise
        return hook

    def _release_hook(self, i: int):
        def hook(module, args, output):
            try:
                self._done[i] = self.transfers.compute_event()
                for s, t in zip(self.slots[i], self.host[i]):
                    s.set(t)
                self._note("release", i)
                j = self._issued + 1
                if j < self.n and j <= i + self.prefetch + 1:
                    # bound the device copies: block i - 1 has finished before block j is copied
                    self.transfers.host_wait(self._done.pop(i - 1, None), "DiT block %d" % (i - 1))
                    self._issue(j)
                if i == self.n - 1:
                    self._done.clear()
            except BaseException:
                self.reset()
                raise
        return hook

    def close(self) -> None:
        """Remove the hooks (the blocks keep their host tensors)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.reset()


def stream_blocks(model: torch.nn.Module, transfers: Transfers, prefetch: int = 1) -> BlockStreamer:
    """Put ``model``'s blocks in host memory and stream them through every forward; the streamer
    is kept on the model (``model.offload``) for the pipeline and the report."""
    streamer = BlockStreamer(model, transfers, prefetch)
    model.__dict__["offload"] = streamer
    return streamer


__all__ = ["BlockStreamer", "stream_blocks", "OffloadError"]
