"""The server in a thread of this process, around a pipeline already built: for measurements that
time the HTTP path against direct calls on the same pipeline (benchmarks/serve_*.py)."""

from __future__ import annotations

import os
import threading
import time
from typing import Tuple


def start_in_thread(pipe, out_dir: str, port: int, max_queued: int = 8,
                    start_timeout_s: float = 60.0) -> Tuple[object, object, object, threading.Thread]:
    """Start the task queue and a uvicorn server on 127.0.0.1:``port`` serving ``pipe``, with its
    record in ``out_dir``; returns ``(server, queue, store, thread)`` once the server accepts connections.
    Stop with ``server.should_exit = True``, ``thread.join(...)`` and ``queue.stop(timeout=...)``."""
    import uvicorn

    from .app import ServeState, make_app
    from .body import BodyLimits
    from .store import TaskStore
    from .tasks import LocalRunner, TaskQueue

    store = TaskStore(out_dir)
    queue = TaskQueue(store, LocalRunner(pipe), max_queued=max_queued)
    limits = BodyLimits(store.out_dir)
    os.makedirs(limits.upload_dir, exist_ok=True)
    server = uvicorn.Server(uvicorn.Config(make_app(ServeState(pipe, queue, store, limits)), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    queue.start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server on port %d did not start within %.0f s" % (port, start_timeout_s))
        time.sleep(0.05)
    return server, queue, store, thread
