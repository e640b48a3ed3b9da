"""The task queue and its one worker.

Requests are checked before they get here (:mod:`.body`); :meth:`TaskQueue.submit` records the
task in the store and appends it to a bounded queue (:class:`QueueFull` past ``max_queued``
waiting tasks: HTTP 429 with a Retry-After estimated from recent task times). One worker thread
takes the tasks in order and runs them through a *runner* (:class:`LocalRunner`: the pipeline in
this process; :class:`wanport.serve.group.GroupRunner`: the same call on every rank of a torchrun
group). Each task's progress (step i of N, stage times so far) is kept in memory while it runs;
its final state, files and stage times go to the store.

Cancelling: a queued task leaves the queue at once; a running one stops at the end of its current
denoising step (the ``on_step`` callback raises :class:`TaskCancelled`; under torchrun every rank
agrees on it first), and the pipeline stays loaded for the next task.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from ..errors import WanportError
from ..pipeline.sampling import LoopObserver
from .store import FINAL, TaskStore


class QueueFull(Exception):
    """The queue holds ``max_queued`` waiting tasks; ``retry_after`` seconds is an estimate."""

    def __init__(self, max_queued: int, retry_after: int) -> None:
        super().__init__("the queue is full (%d tasks waiting); retry in about %d s" % (max_queued, retry_after))
        self.retry_after = retry_after


class TaskCancelled(Exception):
    """Raised from the step callback of a task whose cancellation was asked for."""


class GroupFailure(Exception):
    """A rank of the serving group failed or stopped answering: the group cannot run more tasks."""


@dataclass
class Task:
    id: str
    values: Dict[str, Any]
    created: float
    state: str = "queued"
    step: int = 0
    steps: Optional[int] = None
    started: Optional[float] = None
    first_step: Optional[float] = None
    last_step: Optional[float] = None
    step_times: List[float] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    #: set once the task is final (done, failed, cancelled)
    final: threading.Event = field(default_factory=threading.Event)

    def stages_so_far(self, now: float) -> Dict[str, Any]:
        """Seconds spent so far: waiting in the queue, from the start to the first step (text
        encoding and conditioning), denoising (the steps finished so far)."""
        out: Dict[str, Any] = {"queued_s": round((self.started or now) - self.created, 4)}
        if self.started is not None:
            out["to_first_step_s"] = round((self.first_step or now) - self.started, 4)
        if self.first_step is not None:
            out["denoise_s"] = round((self.last_step or self.first_step) - self.first_step, 4)
            out["steps_s"] = [round(s, 4) for s in self.step_times]
        return out


class StepWatch(LoopObserver):
    """The loop's step boundaries -> the task's live progress."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self._start = 0.0

    def step_start(self, index: int, t: int, expert) -> None:
        self._start = time.time()
        if self.task.first_step is None:
            self.task.first_step = self._start

    def step_end(self, index: int, latent) -> None:
        now = time.time()
        self.task.step_times.append(now - self._start)
        self.task.last_step = now


class LocalRunner:
    """Runs a task on the pipeline of this process."""

    world = 1

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def idle(self) -> None:
        """Called while no task waits (the group runner sends heartbeats here)."""

    def cancel_agreed(self, asked: bool) -> bool:
        """Whether the running task stops after this step (every rank agrees under torchrun)."""
        return asked

    def run(self, task: Task, output: str, on_step, observer):
        return self.pipe.generate(progress=False, output=output, on_step=on_step, observer=observer, **task.values)

    def stop(self) -> None:
        """After the last task."""


class TaskQueue:
    """Bounded FIFO of checked tasks, one worker thread, the store as the record."""

    def __init__(self, store: TaskStore, runner, max_queued: int = 8, idle_s: float = 2.0,
                 on_fatal: Optional[Callable[[str], None]] = None) -> None:
        self.store = store
        self.runner = runner
        self.max_queued = int(max_queued)
        self.idle_s = idle_s
        self.on_fatal = on_fatal
        self._cv = threading.Condition()
        self._queue: Deque[Task] = collections.deque()
        self._live: Dict[str, Task] = {}
        self._running: Optional[Task] = None
        self._durations: Deque[float] = collections.deque(maxlen=16)
        self._stopping = False
        #: the message of a failure that ended the worker (a dead rank), else None
        self.fatal: Optional[str] = None
        self.completed = 0
        self._thread = threading.Thread(target=self._work, name="wanport-serve-worker", daemon=True)

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop taking tasks: queued ones fail ("the server stopped"), a running one is cancelled
        at the end of its current step; waits for the worker (by default as long as that step takes)."""
        with self._cv:
            self._stopping = True
            running = self._running
            if running is not None:
                running.cancel.set()
            self._cv.notify_all()
        if running is not None:
            print("wanport serve: stopping; task %s stops at the end of its current step" % running.id,
                  file=sys.stderr, flush=True)
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cv:
            for task in list(self._queue):
                self._finish(task, "failed", error="the server stopped before this task started; submit it again")
            self._queue.clear()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ requests
    def retry_after(self) -> int:
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 5.0
        return max(1, int(math.ceil(typical)))

    def submit(self, values: Dict[str, Any], request: Dict[str, Any]) -> Task:
        """Queue a checked task; :class:`QueueFull` when ``max_queued`` tasks already wait."""
        with self._cv:
            if self.fatal is not None or self._stopping:
                raise RuntimeError(self.fatal or "the server is stopping")
            if len(self._queue) >= self.max_queued:
                raise QueueFull(self.max_queued, self.retry_after() * (len(self._queue) + 1))
            task = Task(uuid.uuid4().hex, dict(values), time.time())
            self.store.add(task.id, request, task.created)
            self._queue.append(task)
            self._live[task.id] = task
            self._cv.notify_all()
            return task

    def cancel(self, task_id: str) -> Optional[str]:
        """Cancel a queued task now or a running one at its next step; returns the state after
        the request (None: unknown id)."""
        with self._cv:
            task = self._live.get(task_id)
            if task is not None:
                if task.state == "queued":
                    self._queue.remove(task)
                    self._finish(task, "cancelled")
                    return "cancelled"
                task.cancel.set()
                return task.state  # running: cancelled at the end of the current step
        rec = self.store.get(task_id)
        return None if rec is None else rec["state"]

    def status(self, task_id: str) -> Optional[Dict[str, Any]]:
        now = time.time()
        with self._cv:
            task = self._live.get(task_id)
            if task is not None:
                position = None
                if task.state == "queued":
                    position = self._queue.index(task) + 1
                return {"id": task.id, "state": task.state, "position": position, "step": task.step,
                        "steps": task.steps, "cancel_requested": task.cancel.is_set(),
                        "created_at": task.created, "started_at": task.started, "finished_at": None,
                        "stages": task.stages_so_far(now), "error": None}
        rec = self.store.get(task_id)
        if rec is None:
            return None
        return {"id": rec["id"], "state": rec["state"], "position": None,
                "step": None, "steps": None, "cancel_requested": rec["state"] == "cancelled",
                "created_at": rec["created"], "started_at": rec["started"], "finished_at": rec["finished"],
                "stages": rec["stages"], "error": rec["error"], "frames_sha256": rec["frames_sha256"]}

    def wait_final(self, task_id: str, timeout: float) -> None:
        """Block until the task is final or ``timeout`` seconds pass (no polling)."""
        with self._cv:
            task = self._live.get(task_id)
        if task is not None:
            task.final.wait(timeout)

    def depth(self) -> Dict[str, Any]:
        with self._cv:
            return {"queued": len(self._queue), "max_queued": self.max_queued,
                    "running": self._running.id if self._running is not None else None}

    # ------------------------------------------------------------------ worker
    def _finish(self, task: Task, state: str, **fields: Any) -> None:
        """Record a final state (caller holds the lock or is the worker)."""
        task.state = state
        self.store.update(task.id, state=state, finished=time.time(), **fields)
        self._live.pop(task.id, None)
        task.final.set()

    def _next(self) -> Optional[Task]:
        with self._cv:
            while not self._queue and not self._stopping:
                if not self._cv.wait(self.idle_s):
                    return None  # idle: the runner's heartbeat
            if self._stopping:
                return None
            task = self._queue.popleft()
            task.state, task.started = "running", time.time()
            self._running = task
            self.store.update(task.id, state="running", started=task.started)
            return task

    def _work(self) -> None:
        try:
            while True:
                task = self._next()
                if task is None:
                    if self._stopping:
                        break
                    self.runner.idle()
                    continue
                self._run(task)
        except GroupFailure as exc:
            self._die(str(exc))
        except BaseException as exc:  # the worker must never end silently
            traceback.print_exc()
            self._die("the worker stopped: %s: %s" % (type(exc).__name__, exc))
        finally:
            if self.fatal is None:  # after a rank died there is no one to tell (and no waiting on it)
                try:
                    self.runner.stop()
                except Exception:
                    pass

    def _die(self, message: str) -> None:
        with self._cv:
            self.fatal = message
            if self._running is not None:
                self._finish(self._running, "failed", error=message)
                self._running = None
            for task in list(self._queue):
                self._finish(task, "failed", error="not run: " + message)
            self._queue.clear()
        print("wanport serve: %s" % message, file=sys.stderr, flush=True)
        if self.on_fatal is not None:
            self.on_fatal(message)

    def _run(self, task: Task) -> None:
        output = os.path.join(self.store.tasks_dir, task.id + ".mp4")

        def on_step(step: int, total: int, stats) -> None:
            task.step, task.steps = step, total
            if self.runner.cancel_agreed(task.cancel.is_set()):
                raise TaskCancelled()

        try:
            result = self.runner.run(task, output, on_step, StepWatch(task))
        except TaskCancelled:
            with self._cv:
                self._finish(task, "cancelled", stages=task.stages_so_far(time.time()))
                self._running = None
            return
        except GroupFailure:
            raise
        except WanportError as exc:  # checked before queueing, so rare: e.g. the disk filled up
            with self._cv:
                self._finish(task, "failed", error=str(exc), stages=task.stages_so_far(time.time()))
                self._running = None
            return
        except Exception as exc:
            traceback.print_exc()
            with self._cv:
                self._finish(task, "failed", error="%s: %s" % (type(exc).__name__, exc),
                             stages=task.stages_so_far(time.time()))
                self._running = None
            return
        digest = frames_digest(result.frames)
        stages = dict(result.report.get("stages") or {}, queued_s=round(task.started - task.created, 4))
        with self._cv:
            self._durations.append(time.time() - task.started)
            self.completed += 1
            self._finish(task, "done", video=os.path.relpath(output, self.store.out_dir),
                         report=os.path.relpath(output[:-4] + ".json", self.store.out_dir),
                         frames_sha256=digest, stages=stages)
            self._running = None


def frames_digest(frames) -> str:
    """sha256 of a result's uint8 frames (what ``GET /v1/tasks/{id}`` reports as ``frames_sha256``)."""
    return hashlib.sha256(frames.tobytes()).hexdigest()


__all__ = ["GroupFailure", "LocalRunner", "QueueFull", "StepWatch", "Task", "TaskCancelled", "TaskQueue",
           "FINAL", "frames_digest"]
