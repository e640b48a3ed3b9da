"""Inputs that must be regular files: checked with ``os.stat`` before anything opens them.

Opening a named pipe (FIFO) for reading blocks until a writer appears, a character device can stream
forever, and a folder cannot be read at all: each of them, given where a file belongs (an image, a
recipe, a checkpoint file, a shard index), would hang the run or fail deep inside a reader. They
are refused here with one message naming the path, in the caller's error class.
"""

from __future__ import annotations

import os
import stat
from typing import Type

from .errors import WanportError


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file(path: str, error: Type[WanportError], what: str = "") -> os.stat_result:
    """``os.stat(path)`` (symbolic links followed) when it names a regular file; else ``error``:
    "[<what> ]<path>: file not found" or "...: is a named pipe (FIFO), not a regular file"."""
    where = "%s %s" % (what, path) if what else path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error("%s: file not found" % where) from None
    except OSError as exc:
        raise error("%s: cannot read (%s)" % (where, exc.strerror or exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise error("%s: is %s, not a regular file; give the path of the file itself" % (where, _kind(st.st_mode)))
    return st


__all__ = ["regular_file"]
