"""Serving under torchrun: rank 0 runs the HTTP server and the queue; every rank runs the same
parallel pipeline call for each task.

Rank 0 and the others talk over a separate gloo process group (host tensors whatever the
accelerator's collective library is) with the recipe's ``parallel.timeout_s``:

* a task: ``("task", values, output)`` broadcast from rank 0, then every rank calls
  ``generate`` with those values (rank 0 alone writes the files);
* while no task waits, rank 0 sends ``("idle",)`` every couple of seconds, so the other ranks'
  receive never runs into the timeout and a dead rank is noticed between tasks too;
* after every denoising step all ranks agree whether the task is cancelled (an all-reduce of
  rank 0's flag): a cancelled task stops on every rank at the same step;
* ``("stop",)`` when the server shuts down.

Every message is followed by an all-reduce over all ranks, so rank 0 learns of a rank that died
(its connection closes, or the timeout passes) at the next message at the latest; it fails the
running task, reports the failure and exits non-zero (:class:`~wanport.serve.tasks.GroupFailure`).
A follower whose rank 0 died exits non-zero the same way.
"""

from __future__ import annotations

import datetime
import sys
from typing import Any

from ..errors import WanportError
from .tasks import GroupFailure, LocalRunner, Task, TaskCancelled


class Control:
    """The control channel: a gloo group over every rank of the pipeline's process group."""

    def __init__(self, timeout_s: float) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.timeout_s = float(timeout_s)
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=self.timeout_s))

    def _ack(self, flag: int = 0) -> int:
        import torch

        t = torch.tensor([int(flag)], dtype=torch.int64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return int(t.item())

    def send(self, message: Any) -> None:
        """Rank 0: broadcast ``message`` and wait until every rank has it."""
        box = [message]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        self._ack()

    def recv(self) -> Any:
        """Other ranks: the next message of rank 0."""
        box = [None]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        self._ack()
        return box[0]

    def agree(self, flag: bool) -> bool:
        """True on every rank when rank 0's flag is set."""
        return bool(self._ack(1 if (flag and self.rank == 0) else 0))


class GroupRunner(LocalRunner):
    """Rank 0's runner: each task is broadcast, then run on every rank."""

    def __init__(self, pipe, control: Control) -> None:
        super().__init__(pipe)
        self.control = control
        self.world = control.world
        self._stopped = False

    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except GroupFailure:
            raise
        except Exception as exc:
            raise GroupFailure("a rank of the serving group failed or stopped answering (%s): %s: %s; the server "
                               "stops (restart it with torchrun)" % (what, type(exc).__name__, exc)) from None

    def idle(self) -> None:
        self._guard("heartbeat", self.control.send, ("idle",))

    def cancel_agreed(self, asked: bool) -> bool:
        return self._guard("step", self.control.agree, asked)

    def run(self, task: Task, output: str, on_step, observer):
        self._guard("task %s" % task.id, self.control.send, ("task", task.id, dict(task.values), output))
        try:
            return self.pipe.generate(progress=False, output=output, on_step=on_step, observer=observer,
                                      **task.values)
        except (TaskCancelled, GroupFailure, WanportError):
            raise
        except Exception as exc:  # a collective failed: the ranks are out of step
            raise GroupFailure("task %s failed inside the parallel pipeline (%s: %s); a rank may have died; the "
                               "server stops (restart it with torchrun)" % (task.id, type(exc).__name__, exc)) from None

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.control.send(("stop",))


def follow(pipe, control: Control) -> int:
    """The loop of a rank other than 0: run each task rank 0 sends, until ``stop``. Returns the exit
    status (0 after ``stop``; a failure of rank 0 raises)."""
    while True:
        message = control.recv()
        kind = message[0]
        if kind == "idle":
            continue
        if kind == "stop":
            return 0
        _, task_id, values, output = message

        def on_step(step: int, total: int, stats) -> None:
            if control.agree(False):
                raise TaskCancelled()

        try:
            pipe.generate(progress=False, output=output, on_step=on_step, **values)
        except TaskCancelled:
            continue
        except WanportError as exc:  # the same on every rank: rank 0 records it
            print("wanport serve (rank %d): task %s: %s" % (control.rank, task_id, exc), file=sys.stderr)


__all__ = ["Control", "GroupRunner", "follow"]
