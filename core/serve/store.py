"""Tasks and their results on disk: ``tasks.sqlite3`` in the server's output folder.

Every state change is committed at once, so a server killed at any moment leaves a consistent
record. When a server opens the store, tasks still ``queued`` or ``running`` belong to a process
that ended before finishing them: they are marked ``failed`` ("interrupted"), and temporary files
left by writes that never completed are removed from ``tasks/``. Finished videos and reports stay
and are served again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Dict, List, Optional

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    request TEXT NOT NULL,
    error TEXT,
    video TEXT,
    report TEXT,
    frames_sha256 TEXT,
    stages TEXT
)
"""

COLUMNS = ("id", "state", "created", "started", "finished", "request", "error", "video", "report",
           "frames_sha256", "stages")


class TaskStore:
    """SQLite in ``out_dir`` (one connection, serialised by a lock; the server's threads share it)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = os.path.abspath(out_dir)
        self.tasks_dir = os.path.join(self.out_dir, "tasks")
        os.makedirs(self.tasks_dir, exist_ok=True)
        self.path = os.path.join(self.out_dir, "tasks.sqlite3")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        #: how many tasks of an earlier server were marked failed when this store opened
        self.interrupted = self._fail_interrupted()
        self._remove_partial_files()

    def _fail_interrupted(self) -> int:
        with self._lock:
            cur = self._db.execute(
                "UPDATE tasks SET state='failed', finished=?, error=? WHERE state IN ('queued', 'running')",
                (time.time(), "interrupted: the server stopped before this task finished; submit it again"))
            return cur.rowcount

    def _remove_partial_files(self) -> None:
        for name in os.listdir(self.tasks_dir):
            if name.startswith(".") and name.endswith(".partial"):  # io/atomic.py's temporary files
                try:
                    os.unlink(os.path.join(self.tasks_dir, name))
                except OSError:
                    pass

    # ------------------------------------------------------------------ writes
    def add(self, task_id: str, request: Dict[str, Any], created: float) -> None:
        with self._lock:
            self._db.execute("INSERT INTO tasks (id, state, created, request) VALUES (?, 'queued', ?, ?)",
                             (task_id, created, json.dumps(request, sort_keys=True)))

    def update(self, task_id: str, **fields: Any) -> None:
        for key in fields:
            if key not in COLUMNS or key == "id":
                raise KeyError(key)
        if "stages" in fields and fields["stages"] is not None:
            fields["stages"] = json.dumps(fields["stages"])
        sets = ", ".join("%s=?" % k for k in fields)
        with self._lock:
            self._db.execute("UPDATE tasks SET %s WHERE id=?" % sets, tuple(fields.values()) + (task_id,))

    # ------------------------------------------------------------------ reads
    def get(self, task_id: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            row = self._db.execute("SELECT %s FROM tasks WHERE id=?" % ", ".join(COLUMNS), (task_id,)).fetchone()
        if row is None:
            return None
        rec = dict(zip(COLUMNS, row))
        rec["request"] = json.loads(rec["request"])
        rec["stages"] = json.loads(rec["stages"]) if rec["stages"] else None
        return rec

    def counts(self) -> Dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def ids(self, state: Optional[str] = None) -> List[str]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT id FROM tasks ORDER BY created").fetchall()
            else:
                rows = self._db.execute("SELECT id FROM tasks WHERE state=? ORDER BY created", (state,)).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["TaskStore", "STATES", "FINAL"]
