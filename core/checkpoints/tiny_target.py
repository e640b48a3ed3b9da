"""Where ``wanport make-tiny`` writes: a temporary sibling folder, renamed onto the target at the end.

So an interrupted make-tiny (Ctrl-C, a full disk, a kill) never leaves a partial checkpoint under
the target's name: the target either holds a complete tiny checkpoint (its marker file written
last, then the whole folder renamed) or is untouched. Every problem with the target is one
:class:`~wanport.errors.ConfigError` (exit code 2) naming the fix:

* the target exists and is not a folder (a file, ``/dev/null``), or its parent cannot be
  created or written;
* ``--if-missing`` and the folder holds a tiny checkpoint of another layout (layouts are never
  mixed in one folder; without ``--if-missing`` the whole folder is replaced);
* the folder is not empty and holds no tiny checkpoint: refused, unless it is recognisably an
  interrupted make-tiny of an older wanport (only file names make-tiny writes, small), which is
  replaced.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from typing import Iterable, Optional

from ..errors import ConfigError

#: names make-tiny writes at the top of a checkpoint folder (older versions wrote them in place)
TINY_NAMES = ("config.json", "Wan2.1_VAE.pth", "Wan2.2_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth",
              "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "google", "high_noise_model",
              "low_noise_model", ".wanport-tiny.json")
TINY_PREFIXES = ("diffusion_pytorch_model", ".")  # weight shards and index; temporary files
#: a folder bigger than this is a real checkpoint, never an interrupted tiny one
PARTIAL_MAX_BYTES = 256 << 20


def _size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def looks_like_partial_tiny(directory: str, entries: Iterable[str]) -> bool:
    """Only names make-tiny writes, and small: an interrupted make-tiny of an older wanport
    (which wrote in place), not somebody's checkpoint."""
    entries = list(entries)
    names_ok = all(e in TINY_NAMES or e.startswith(TINY_PREFIXES) for e in entries)
    return bool(entries) and names_ok and _size(directory) <= PARTIAL_MAX_BYTES


def _temp_sibling(target: str, tag: str) -> str:
    head, tail = os.path.split(target)
    return os.path.join(head, ".%s.%s-%d-%s" % (tail, tag, os.getpid(), secrets.token_hex(4)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


def remove_stale_staging(target: str) -> None:
    """Temporary siblings of ``target`` left by a make-tiny that was killed (its process is gone)."""
    head, tail = os.path.split(target)
    prefix = ".%s." % tail
    try:
        names = os.listdir(head or ".")
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("-")
        if len(parts) == 3 and parts[0] in ("tmp", "old") and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            shutil.rmtree(os.path.join(head, name), ignore_errors=True)


def check_target(target: str, layout: str, existing: Optional[str], if_missing: bool, current: bool = True) -> bool:
    """Validate ``target`` before anything is written. Returns False when there is nothing to do
    (``if_missing`` and the same layout is already there in the ``current`` format)."""
    if os.path.lexists(target) and not os.path.isdir(target):
        raise ConfigError("make-tiny: %s exists and is not a folder; give the path of a new or empty folder "
                          "(e.g. ckpts/tiny-%s)" % (target, layout))
    if existing is not None:
        if existing == layout and if_missing and current:
            return False
        if existing != layout and if_missing:
            raise ConfigError("make-tiny: %s holds a tiny %s checkpoint, not %s; layouts are never mixed in one "
                              "folder: choose another folder (e.g. ckpts/tiny-%s), or run without --if-missing to "
                              "replace it" % (target, existing, layout, layout))
    elif os.path.isdir(target):
        entries = os.listdir(target)
        if entries and not looks_like_partial_tiny(target, entries):
            raise ConfigError("make-tiny: %s is not empty and holds no tiny checkpoint (no .wanport-tiny.json); "
                              "refusing to write into it: choose an empty or new folder" % target)
    parent = os.path.dirname(target) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise ConfigError("make-tiny: cannot create the folder %s (%s); choose a writable place"
                          % (parent, exc.strerror or exc)) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("make-tiny: %s is not writable; choose a writable place for the checkpoint" % parent)
    return True


def new_staging(target: str) -> str:
    """A fresh temporary sibling folder of ``target`` (same file system, so the rename is atomic)."""
    path = _temp_sibling(target, "tmp")
    os.mkdir(path)
    return path


def commit(staging: str, target: str) -> None:
    """Put the complete ``staging`` folder in place of ``target`` (whatever tiny or partial folder
    was there is removed only after the new one is in place)."""
    old = None
    if os.path.lexists(target):
        old = _temp_sibling(target, "old")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None and not os.path.lexists(target):
            os.replace(old, target)  # put the previous folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_failure(target: str, exc: OSError) -> ConfigError:
    """An OS error while writing, as one message (the target is left as it was)."""
    why = exc.strerror or str(exc)
    hint = "free some space" if exc.errno == errno.ENOSPC else "choose a writable place"
    return ConfigError("make-tiny: could not write the checkpoint for %s: %s (%s); nothing was changed there; %s"
                       % (target, why, getattr(exc, "filename", None) or target, hint))


__all__ = ["check_target", "new_staging", "commit", "remove_stale_staging", "looks_like_partial_tiny",
           "write_failure"]
