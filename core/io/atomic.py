"""Write-then-rename, so a crash, a full disk or a signal never leaves a half-written output
behind, and never replaces the previous good file with a broken one.

Every file wanport writes goes through :func:`atomic_path`: a temporary file in the target's own
folder (so the final ``os.replace`` is a rename on one file system), removed again on any
exception, on Ctrl-C and on SIGTERM/SIGHUP (:mod:`.signals`). A failure to write becomes one
:class:`~wanport.errors.OutputError` (exit 7) that names the file and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
from typing import Any, Iterator, List, Optional

from ..errors import OutputError
from .signals import signals_raise

#: the temporary file's name keeps at most this many characters of the final name, so that a
#: final name close to the file system's limit still has a temporary name that fits
_TMP_STEM = 64
#: a file system with less free space than this counts as full when a writer fails opaquely
_FULL_BYTES = 1 << 20


def describe_os_error(exc: OSError) -> str:
    """``No space left on device`` etc., with a hint for the usual causes."""
    why = exc.strerror or str(exc)
    hints = {errno.ENOSPC: "free some space or choose another folder",
             errno.EDQUOT: "the disk quota is exhausted: free some space or choose another folder",
             errno.EACCES: "choose a folder you can write to",
             errno.EPERM: "choose a folder you can write to",
             errno.EROFS: "the file system is read-only: choose another folder",
             errno.ENAMETOOLONG: "choose a shorter name",
             errno.EFBIG: "the file is larger than this file system or process allows"}
    hint = hints.get(exc.errno)
    return "%s (%s)" % (why, hint) if hint else why


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    ``suffix`` lets writers that pick a format from the extension see the real one. The body may
    raise :class:`OSError`: it becomes an :class:`OutputError`. Whatever goes wrong, the temporary
    file is removed and ``path`` keeps its previous content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    with signals_raise():
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="." + base[:_TMP_STEM] + ".", suffix=suffix or ".partial",
                                       dir=directory)
            os.close(fd)
            yield tmp
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            raise OutputError("cannot write %s: %s" % (path, describe_os_error(exc))) from None
        except Exception as exc:
            # writers that wrap the OS error in their own (safetensors: "I/O error: ... (os error 28)",
            # torch.save: an opaque RuntimeError): still a write failure when the cause is the disk
            cause = _os_cause(exc, directory)
            if cause is None:
                raise
            raise OutputError("cannot write %s: %s" % (path, describe_os_error(cause))) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _os_cause(exc: Exception, directory: str) -> Optional[OSError]:
    """The OS error behind a writer's own exception: an ``(os error N)`` in its message, or a
    file system left with no free space."""
    m = re.search(r"\(os error (\d+)\)", str(exc))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return None
    if st.f_bavail * st.f_frsize < _FULL_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def json_text(data: Any) -> str:
    """Strict JSON (RFC 8259, ``allow_nan=False``): never the non-JSON ``NaN``/``Infinity``.

    Writers map non-finite statistics to null where they compute them (:func:`finite_or_none`);
    any NaN or infinity that still arrives is written as null too, and a top-level mapping lists
    where under ``"non_finite_as_null"`` so that the substitution is visible, never silent."""
    found: List[str] = []
    clean = _strict(data, "$", found)
    if found and isinstance(clean, dict):
        clean["non_finite_as_null"] = found
    return json.dumps(clean, indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n"


def finite_or_none(x: Any) -> Any:
    """A float that JSON can hold: NaN and infinities become None (null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _strict(data: Any, where: str, found: List[str]) -> Any:
    if isinstance(data, float):
        if math.isfinite(data):
            return data
        found.append(where)
        return None
    if isinstance(data, dict):
        return {k: _strict(v, "%s.%s" % (where, k), found) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict(v, "%s[%d]" % (where, i), found) for i, v in enumerate(data)]
    return data


def write_json_atomic(path: str, data: Any) -> None:
    text = json_text(data)  # serialised first: a bad value never leaves a half-written file
    write_text_atomic(path, text)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
            f.flush()
            os.fsync(f.fileno())  # a full disk shows here, before the rename, not later
