"""SIGTERM (and SIGHUP) as an exception while an output file is being written.

Python's default for SIGTERM kills the process on the spot: no ``finally`` runs, so a temporary
file being written would stay behind. Inside :func:`signals_raise` such a signal raises
:class:`Terminated` in the main thread instead; the writer's cleanup runs as the exception
unwinds, and when the outermost block exits the previous handler is restored and the signal sent
again, so the process still ends the way the signal asks (exit status 128 + signal number under
the default action). SIGINT needs nothing: Python already raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Dict, Iterator

#: the signals that become :class:`Terminated`; SIGHUP where the platform has it
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(BaseException):
    """A termination signal arrived while a file was being written (BaseException, like
    KeyboardInterrupt: ``except Exception`` does not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__("terminated by signal %d" % signum)
        self.signum = signum


_depth = 0


def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise :class:`Terminated` (main thread only; elsewhere,
    and for a signal the process ignores, nothing changes). Nested blocks share the outermost
    handler; the outermost one restores the previous handlers and re-sends the signal."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _depth == 0
    previous: Dict[int, object] = {}
    signum = None
    _depth += 1
    try:
        if outermost:
            for sig in SIGNALS:
                old = signal.getsignal(sig)
                if old is signal.SIG_IGN:
                    continue  # an ignored signal stays ignored
                previous[sig] = old
                signal.signal(sig, _raise)
        yield
    except Terminated as exc:
        if not outermost:
            raise
        signum = exc.signum
    finally:
        _depth -= 1
        if outermost:
            _restore(previous)
    if signum is not None:  # the outermost block: the cleanup has run; end as the signal asks
        os.kill(os.getpid(), signum)
        raise SystemExit(128 + signum)  # only reached when the previous handler returned


def _restore(previous: Dict[int, object]) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old if old is not None else signal.SIG_DFL)


__all__ = ["Terminated", "signals_raise", "SIGNALS"]
