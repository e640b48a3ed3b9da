"""The process mesh: torch.distributed started with the backend's process-group name and a bounded
timeout, and the CFG / sequence (Ulysses x ring) groups.

Rank layout (the sequence dims innermost, as xDiT/yunchang order them)::

    rank = cfg_index * (ring * ulysses) + ring_index * ulysses + ulysses_index

so the ``ulysses`` ranks of one ring slot are adjacent, and after the Ulysses all-to-all the
ranks of one ring slot hold one contiguous stretch of the sequence.
"""

from __future__ import annotations

import atexit
import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class Mesh:
    rank: int
    world: int
    local_rank: int
    cfg: int
    ulysses: int
    ring: int
    cfg_index: int
    ring_index: int
    ulysses_index: int
    cfg_group: Any  # the ranks of the other CFG branch with the same sequence slot (size cfg)
    sp_group: Any  # all sequence ranks of this CFG branch (size ulysses * ring)
    ulysses_group: Any
    ring_group: Any
    ring_ranks: List[int]  # global ranks of this ring, in ring order
    timeout_s: float

    @property
    def sp_degree(self) -> int:
        return self.ulysses * self.ring

    @property
    def sp_rank(self) -> int:
        return self.ring_index * self.ulysses + self.ulysses_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world() -> int:
    """WORLD_SIZE from the launcher (torchrun), 1 when started as one plain process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_rank() -> int:
    """RANK from the launcher (torchrun), 0 when started as one plain process."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_kwargs(timeout_s: float, device: Optional[torch.device] = None,
                init_fn: Callable = dist.init_process_group) -> Dict[str, Any]:
    """Keyword arguments of ``init_process_group`` beyond the backend name: the bounded timeout
    and, where this torch has it (``device_id`` appeared after torch 2.1) and the device has an
    index (an accelerator, not the host), this rank's device -- so the collective library binds
    the right device instead of guessing it from the global rank."""
    kwargs: Dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if device is not None and device.index is not None:
        try:
            params = inspect.signature(init_fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "device_id" in params:
            kwargs["device_id"] = device
    return kwargs


def check_launch(needed: int) -> None:
    """The recipe's process count against how this process was started."""
    world = launched_world()
    if needed > 1 and world == 1:
        raise ConfigError(
            "parallel: the recipe needs %d processes (cfg x ulysses x ring) but this is a single process; "
            "launch it with ./run.sh RECIPE (which starts torchrun) or torchrun --nproc_per_node %d -m wanport run RECIPE"
            % (needed, needed))
    if world != needed:
        raise ConfigError("parallel: launched with %d processes but cfg x ulysses x ring = %d; "
                          "start %d processes or change the parallel section" % (world, needed, needed))


def init_mesh(cfg: int, ulysses: int, ring: int, dist_backend: str, timeout_s: float,
              set_device=None, device: Union[None, torch.device, Callable[[], torch.device]] = None) -> Mesh:
    """Start torch.distributed (env:// from torchrun) and build every group, on every rank.

    ``set_device(local_rank)`` and ``device`` (a device, or a callable returning this rank's
    device once set -- e.g. the backend runtime's ``device``) come from the backend runtime; the
    device is handed to ``init_process_group`` where torch accepts it. The process group is torn
    down once, by :func:`shutdown` or at interpreter exit, whichever comes first."""
    world = cfg * ulysses * ring
    check_launch(world)
    rank = launched_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if set_device is not None:
        set_device(local_rank)
    if not dist.is_initialized():
        dev = device() if callable(device) else device
        kwargs = init_kwargs(timeout_s, dev)
        try:
            dist.init_process_group(backend=dist_backend, **kwargs)
        except (TypeError, ValueError):
            # a torch / collective-library pair that declares device_id but refuses this device
            # (checked before anything is started): fall back to the unbound start
            if "device_id" not in kwargs or dist.is_initialized():
                raise
            kwargs.pop("device_id")
            dist.init_process_group(backend=dist_backend, **kwargs)
        _register_teardown()
    sp = ulysses * ring
    cfg_index, rest = divmod(rank, sp)
    ring_index, ulysses_index = divmod(rest, ulysses)

    def groups(rank_lists):
        mine = None
        for ranks in rank_lists:  # every rank creates every group, in the same order
            g = dist.new_group(ranks=ranks, timeout=datetime.timedelta(seconds=timeout_s))
            if rank in ranks:
                mine = g
        return mine

    cfg_group = groups([[c * sp + s for c in range(cfg)] for s in range(sp)])
    sp_group = groups([[c * sp + s for s in range(sp)] for c in range(cfg)])
    ulysses_group = groups([[c * sp + r * ulysses + u for u in range(ulysses)]
                            for c in range(cfg) for r in range(ring)])
    ring_lists = [[c * sp + r * ulysses + u for r in range(ring)] for c in range(cfg) for u in range(ulysses)]
    ring_group = groups(ring_lists)
    ring_ranks = next(r for r in ring_lists if rank in r)
    return Mesh(rank, world, local_rank, cfg, ulysses, ring, cfg_index, ring_index, ulysses_index,
                cfg_group, sp_group, ulysses_group, ring_group, ring_ranks, timeout_s)


_TEARDOWN_REGISTERED = False


def _register_teardown() -> None:
    global _TEARDOWN_REGISTERED
    if not _TEARDOWN_REGISTERED:
        atexit.register(shutdown)
        _TEARDOWN_REGISTERED = True


def shutdown() -> None:
    """Destroy the default process group (and with it every group of the mesh); idempotent: a
    no-op for one process or when already torn down. Registered at exit by :func:`init_mesh`, so
    a command that returns without calling it still tears the group down once."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class CommClock:
    """Exposed communication time, collectives and bytes of one process.

    ``seconds`` is the time the computation waited for communication: a blocking collective
    (``with clock:``) counts whole; an asynchronous one counts only its wait (:meth:`wait`), so
    what overlapped with compute is not in it. With a ``runtime`` the times come from the
    runtime's timing events recorded on the current (compute) stream around the call or the
    wait -- on a GPU that is how long the compute stream stood still for the collective's stream --
    and are read only when ``seconds`` is asked for (no host synchronisation while running, except
    one every ``FLUSH`` pairs to bound the pending events). Without a runtime the host clock is
    used (right where collectives block the host: gloo on the CPU). ``timing=False``: counts and
    bytes only, no events at all. ``bytes`` are those this process sent in the collectives that
    report them (sequence-parallel exchanges, ring passes, sequence gather, CFG exchange)."""

    FLUSH = 8192

    def __init__(self, runtime=None, timing: bool = True) -> None:
        self.runtime = runtime
        self.timing = timing
        self.calls = 0
        self.bytes = 0
        self._seconds = 0.0
        self._pairs: List[Any] = []
        self._open: List[Any] = []

    @property
    def seconds(self) -> float:
        if self._pairs:
            self._seconds += sum(start.elapsed_ms(end) for start, end in self._pairs) / 1000.0
            self._pairs = []
        return self._seconds

    def _start(self) -> Any:
        if not self.timing:
            return None
        if self.runtime is None:
            import time

            return time.perf_counter()
        ev = self.runtime.event()
        ev.record()
        return ev

    def _stop(self, start: Any) -> None:
        if start is None:
            return
        if self.runtime is None:
            import time

            self._seconds += time.perf_counter() - start
            return
        end = self.runtime.event()
        end.record()
        self._pairs.append((start, end))
        if len(self._pairs) >= self.FLUSH:
            self.seconds  # noqa: B018 -- folds the pairs (one synchronisation per FLUSH pairs)

    def __enter__(self):
        self._open.append(self._start())
        return self

    def __exit__(self, *exc):
        self._stop(self._open.pop())
        self.calls += 1
        return False

    def sent(self, nbytes: int) -> None:
        """Bytes sent by a collective timed with ``with clock:``."""
        self.bytes += int(nbytes)

    def issued(self, nbytes: int = 0) -> None:
        """An asynchronous collective was issued (sending ``nbytes``); its :meth:`wait` is timed."""
        self.calls += 1
        self.bytes += int(nbytes)

    def wait(self, work) -> None:
        """Wait for an asynchronous collective's work handle; the wait is the exposed time."""
        start = self._start()
        work.wait()
        self._stop(start)

    def snapshot(self) -> Dict[str, float]:
        """(seconds, calls, bytes) now, to take differences over a stretch of work."""
        return {"seconds": self.seconds, "calls": self.calls, "bytes": self.bytes}


def tensor_like_all_gather(t: torch.Tensor, group, world: int) -> List[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


__all__ = ["Mesh", "init_mesh", "init_kwargs", "check_launch", "launched_world", "launched_rank", "shutdown",
           "CommClock", "tensor_like_all_gather"]
