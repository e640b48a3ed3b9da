"""Stage timing through the backend's runtime (synchronize, then the host clock)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator, List


class StageClock:
    """Wall time of named stages, each bracketed by device synchronisation."""

    def __init__(self, runtime) -> None:
        self._runtime = runtime
        self.stages: Dict[str, float] = {}
        self.steps: List[float] = []
        self._t0 = time.perf_counter()

    def now(self) -> float:
        self._runtime.synchronize()
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + self.now() - start

    def total(self) -> float:
        return self.now() - self._t0

    def as_dict(self) -> Dict[str, object]:
        out: Dict[str, object] = {"%s_s" % k: round(v, 4) for k, v in self.stages.items()}
        out["steps_s"] = [round(s, 4) for s in self.steps]
        return out
