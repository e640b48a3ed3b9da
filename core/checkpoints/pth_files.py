"""``.pth`` checkpoints, read only through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import pickle
import re
import zipfile
from typing import Dict

import torch

from ..errors import CheckpointError
from ..files import regular_file

_LEGACY_PTH_HEAD = b"\x80\x02\x8a\x0a"  # pickle protocol 2 + the magic number of old torch.save


def pth_format(path: str) -> str:
    """``"zip"`` (torch >= 1.6, memory-mappable) or ``"legacy"``. CheckpointError when the file
    is missing, empty, truncated or not a PyTorch checkpoint at all."""
    regular_file(path, CheckpointError)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError("%s: cannot read (%s)" % (path, exc)) from None
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError("%s: corrupt or truncated checkpoint (%s); download it again"
                                  % (path, exc)) from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise CheckpointError("%s: not a PyTorch checkpoint (zip file without data.pkl)" % path)
        return "zip"
    if head == _LEGACY_PTH_HEAD:
        return "legacy"
    raise CheckpointError("%s: unreadable checkpoint (unrecognised header %r): the file is corrupt "
                          "or was not written by torch.save" % (path, head))


def load_pth(path: str) -> Dict[str, torch.Tensor]:
    """A flat dict of tensors from a .pth file, memory-mapped when its format allows.

    Never unpickles arbitrary objects (``weights_only=True``); a missing, truncated or
    non-tensor file raises CheckpointError naming the file.
    """
    mmap = pth_format(path) == "zip"
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except TypeError:  # a torch without the mmap argument
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _load_error(path, exc) from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError("%s: expected a dict of tensors, found %s" % (path, type(data).__name__))
    for k, v in data.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError("%s: entry %r is not a named tensor (%s)" % (path, k, type(v).__name__))
    return data


#: what torch's weights_only unpickler says when the pickle asks for anything but tensors and containers
_CODE_SIGNS = re.compile(r"GLOBAL|Unsupported|blocked|allowlist|allowed global|Can only|unrecognized function|"
                         r"not supported|setstate|__reduce__", re.IGNORECASE)


def _load_error(path: str, exc: Exception) -> CheckpointError:
    """torch.load's failure in wanport's words. A file that weights_only refuses holds pickled code
    (calls or arbitrary objects, not only tensors): it is refused. torch's own text, which suggests
    loading it again with the safety off, is never passed on."""
    text = str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines()
             if ln.strip() and "weights_only" not in ln and "Weights only load failed" not in ln
             and "pytorch.org/docs" not in ln]
    if isinstance(exc, pickle.UnpicklingError) and _CODE_SIGNS.search(text):
        found = re.search(r"GLOBAL\s+([\w.]+)", text)
        what = " (it calls or builds %s)" % found.group(1) if found else ""
        return CheckpointError(
            "%s: refused: the file holds pickled code%s, not only tensors, and wanport never runs code from a "
            "checkpoint. Use a safetensors file, or re-export the weights as a plain dict of tensors (torch.save "
            "of a state_dict) from a source you trust" % (path, what))
    return CheckpointError("%s: unreadable checkpoint (%s%s); the file is corrupt or truncated: download it again"
                           % (path, type(exc).__name__, ": " + lines[0][:200] if lines else ""))


def save_pth_atomic(state: Dict[str, torch.Tensor], path: str) -> None:
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
