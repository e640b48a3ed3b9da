"""``.pth`` checkpoints, read only through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
import zipfile
from typing import Dict

import torch

from ..errors import CheckpointError


_LEGACY_PTH_HEAD = b"\x80\x02\x8a\x0a"  # pickle protocol 2 + the magic number of old torch.save


def pth_format(path: str) -> str:
    """``"zip"`` (torch >= 1.6, memory-mappable) or ``"legacy"``. CheckpointError when the file
    is missing, empty, truncated or not a PyTorch checkpoint at all."""
    if not os.path.isfile(path):
        raise CheckpointError("%s: file not found" % path)
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
        lines = str(exc).strip().splitlines()
        raise CheckpointError("%s: unreadable checkpoint (%s: %s)"
                              % (path, type(exc).__name__, lines[0][:200] if lines else "")) from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError("%s: expected a dict of tensors, found %s" % (path, type(data).__name__))
    for k, v in data.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError("%s: entry %r is not a named tensor (%s)" % (path, k, type(v).__name__))
    return data


def save_pth_atomic(state: Dict[str, torch.Tensor], path: str) -> None:
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
