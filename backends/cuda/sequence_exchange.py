"""The Ulysses all-to-all moved by the copy engines (``parallel.ulysses_exchange: copy_engine``).

NCCL's all-to-all runs as kernels on SMs; overlapped with the attention and GEMMs of the other head
chunks it takes SMs from them (two H200s, 14B 480p CFG step: compute 2.843 s per step under the
overlapped collective, 2.689 s when NCCL is held to 4 CTAs, which then exposes its transfer;
docs/measurements.md). This exchange leaves the SMs alone:

- the send buffers are symmetric memory (``torch.distributed._symmetric_memory``: the same-size
  buffer on every rank of the group, mapped into each peer's address space), handed out by
  :meth:`CopyEngineExchange.send_buffer` so the caller writes the data there directly;
- :meth:`CopyEngineExchange.start` then, on a side stream that first waits for the current one:
  a barrier (every rank has written its buffer), one device-to-device copy per rank of the chunk
  that rank holds for this one -- a copy of contiguous memory on a peer, which the driver gives to a
  copy engine over NVLink -- and a second barrier (every rank has finished reading, so the buffers
  may be written again). The work handle's ``wait()`` makes the current stream wait for an event
  recorded after it.
- A buffer returns to its pool (one pool per size) when its exchange is waited for; every rank
  takes and returns buffers in the same order, so the collective allocations (``rendezvous``)
  happen at the same point on every rank.

The values are only moved: the result is bit-for-bit the collective's. The barriers have a bounded
timeout (``parallel.timeout_s``), so a rank that dies does not hang the others forever.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


def copy_engine_reason() -> str:
    """Why the copy-engine exchange cannot run here ("" when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import torch.distributed._symmetric_memory as symm_mem  # noqa: F401
    except ImportError as exc:  # torch without symmetric memory (before 2.5)
        return "torch %s has no symmetric memory (%s)" % (torch.__version__, exc)
    if not dist.is_available() or not dist.is_initialized():
        return "torch.distributed is not started"
    return ""


class _Done:
    """The work handle of one exchange: ``wait()`` orders the current stream after it and returns
    the send buffer to its pool."""

    __slots__ = ("event", "owner", "key", "slot")

    def __init__(self, event, owner: "CopyEngineExchange", key, slot) -> None:
        self.event, self.owner, self.key, self.slot = event, owner, key, slot

    def wait(self) -> bool:
        torch.cuda.current_stream().wait_event(self.event)
        if self.slot is not None:
            self.owner._free.setdefault(self.key, []).append(self.slot)
            self.slot = None
        return True


class CopyEngineExchange:
    """The all-to-all of a ``[world, ...]`` tensor through symmetric memory and the copy engines."""

    name = "copy_engine"

    def __init__(self, group, timeout_s: float = 600.0) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self._symm = symm_mem
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.timeout_ms = max(1, int(timeout_s * 1000))
        self._free: Dict[Tuple[int, torch.device], List[tuple]] = {}
        self._lent: Dict[int, Tuple[tuple, tuple]] = {}
        self._streams: Dict[torch.device, "torch.cuda.Stream"] = {}

    def send_buffer(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != self.world:
            raise ValueError("a copy-engine all-to-all sends [world=%d, ...], not %s" % (self.world, list(shape)))
        nbytes = 1
        for s in shape:
            nbytes *= s
        nbytes *= torch.empty((), dtype=dtype).element_size()
        key = (nbytes, torch.device(device))
        pool = self._free.setdefault(key, [])
        if pool:
            slot = pool.pop()
        else:  # a collective: every rank reaches it at the same call (same code path, same sizes)
            buf = self._symm.empty(nbytes, dtype=torch.uint8, device=device)
            slot = (buf, self._symm.rendezvous(buf, self.group))
        view = slot[0].view(dtype).view(shape)
        self._lent[view.data_ptr()] = (key, slot)
        return view

    def _stream(self, device: torch.device) -> "torch.cuda.Stream":
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return self._streams[device]

    def start(self, send: torch.Tensor, group=None):
        lent = self._lent.pop(send.data_ptr(), None)
        if lent is None:
            raise ValueError("copy-engine all-to-all: send a tensor from send_buffer()")
        key, slot = lent
        handle = slot[1]
        recv = torch.empty_like(send)
        side = self._stream(send.device)
        side.wait_stream(torch.cuda.current_stream(send.device))
        per_rank = send[0].numel()
        with torch.cuda.stream(side):
            handle.barrier(channel=0, timeout_ms=self.timeout_ms)  # every rank has written its buffer
            for step in range(self.world):
                peer = (self.rank - step) % self.world
                src = handle.get_buffer(peer, tuple(send.shape[1:]), send.dtype, per_rank * self.rank)
                recv[peer].copy_(src)  # contiguous device-to-device: a copy engine, no SMs
            handle.barrier(channel=0, timeout_ms=self.timeout_ms)  # every rank has read: buffers free
            done = torch.cuda.Event()
            done.record(side)
        recv.record_stream(side)
        return recv, _Done(done, self, key, slot)


def make_copy_engine_exchange(group, timeout_s: float = 600.0) -> Tuple[Optional[CopyEngineExchange], str]:
    why = copy_engine_reason()
    if why:
        return None, why
    return CopyEngineExchange(group, timeout_s), ""


__all__ = ["CopyEngineExchange", "copy_engine_reason", "make_copy_engine_exchange"]
