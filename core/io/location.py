"""Prove, before anything loads, that the output files can be written where they are asked for.

``os.access`` is not proof (root passes it under ``/proc``, a read-only mount or a full quota
say nothing to it), so :func:`writable_problems` creates the folder when it is missing, creates
and deletes a probe file there whose name is as long as the longest output name, and checks each
name against the file system's limits (``NAME_MAX`` bytes per name, ``PATH_MAX`` per path).
``wanport check`` runs it too, so whatever ``run`` would fail to write, ``check`` reports.
"""

from __future__ import annotations

import contextlib
import os
from typing import List, Sequence

from .atomic import describe_os_error

_PROBE = ".wanport-probe-"


def _limit(path: str, name: str, default: int) -> int:
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError):
        return default
    return value if value and value > 0 else default


def writable_problems(directory: str, names: Sequence[str], what: str = "output.dir",
                      keep_created: bool = True) -> List[str]:
    """Problems (empty: none) writing ``names`` into ``directory``. A missing folder is created
    (with its parents); ``keep_created`` False removes again the folders this call created."""
    directory = directory or "."
    if os.path.exists(directory) and not os.path.isdir(directory):
        return ["%s: %s exists and is not a folder" % (what, directory)]
    created: List[str] = []
    try:
        missing = []
        d = os.path.abspath(directory)
        while not os.path.exists(d):
            missing.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            return ["%s: cannot create %s: %s" % (what, directory, describe_os_error(exc))]
        created = [m for m in missing if os.path.isdir(m)]
        return _check_names(directory, names, what) or _probe(directory, names, what)
    finally:
        if not keep_created:
            for d in created:  # deepest first
                with contextlib.suppress(OSError):
                    os.rmdir(d)


def _check_names(directory: str, names: Sequence[str], what: str) -> List[str]:
    name_max = _limit(directory, "PC_NAME_MAX", 255)
    path_max = _limit(directory, "PC_PATH_MAX", 4096)
    problems = []
    for name in names:
        n = len(os.fsencode(name))
        if n > name_max:
            problems.append("%s: the file name %s is %d bytes; this file system allows %d (choose a shorter "
                            "%s)" % (what, _short(name), n, name_max, "output.name" if what == "output.dir" else what))
            continue
        full = len(os.fsencode(os.path.abspath(os.path.join(directory, name))))
        if full >= path_max:
            problems.append("%s: the path of %s is %d bytes; this system allows %d (choose a shorter folder or "
                            "name)" % (what, _short(name), full, path_max - 1))
    return problems


def _probe(directory: str, names: Sequence[str], what: str) -> List[str]:
    longest = max([len(os.fsencode(n)) for n in names] + [len(_PROBE) + 8])
    probe = os.path.join(directory, _PROBE + "x" * (longest - len(_PROBE) - 8) + "%08x" % os.getpid())
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return []  # another process of this run is probing the same folder right now
    except OSError as exc:
        return ["%s: cannot write into %s: %s" % (what, directory, describe_os_error(exc))]
    try:
        os.write(fd, b"x")
    except OSError as exc:
        return ["%s: cannot write into %s: %s" % (what, directory, describe_os_error(exc))]
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return []


def _short(name: str) -> str:
    return repr(name) if len(name) <= 40 else repr(name[:20] + "..." + name[-12:])




def prove_out_option(out: str, folder: bool = False) -> None:
    """``--out`` of bench/compare (a result stem: STEM.json, STEM.md, STEM-*.png) or of dump
    (``folder``): proven writable before the work starts; OutputError (exit 7) otherwise. Its
    folder is created here (it would be at the end anyway)."""
    from ..errors import OutputError
    from .results import result_stem

    if folder:
        directory, names = out, ["dump.json", "blocks.safetensors"]
    else:
        stem = result_stem(out)
        directory, base = os.path.dirname(stem) or ".", os.path.basename(stem)
        if not base:
            raise OutputError("--out %s: give a file stem (e.g. results/run1), not a folder" % out)
        # the longest name written: a chart's suffix (e.g. "-stages") is at most 16 characters
        names = [base + ".json", base + ".md", base + "-" + "x" * 15 + ".png"]
    problems = writable_problems(directory, names, what="--out")
    if problems:
        raise OutputError(problems[0])


__all__ = ["writable_problems", "prove_out_option"]
