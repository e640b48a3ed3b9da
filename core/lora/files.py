"""A LoRA file read and checked: safetensors header (shared reader), float dtypes, finite values.

Every problem is a :class:`~wanport.errors.CheckpointError` naming the file (and the key): a
missing, truncated or non-safetensors file, a non-float tensor, a NaN or Inf value.
"""

from __future__ import annotations

import os
from typing import Dict

import torch

from ..checkpoints.safetensors_files import iter_tensors, read_header
from ..errors import CheckpointError
from ..files import regular_file

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def read_lora_file(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of one LoRA file (host memory, as stored), after the checks above."""
    if not os.path.exists(path):
        raise CheckpointError("LoRA file %s: not found (lora[].path is relative to the working directory)" % path)
    regular_file(path, CheckpointError, "LoRA file")  # a FIFO or a folder: refused before it is opened
    entries = read_header(path)  # truncated / not safetensors -> CheckpointError naming the file
    if not entries:
        raise CheckpointError("LoRA file %s: holds no tensors" % path)
    for key, e in entries.items():
        if e.dtype not in FLOAT_DTYPES:
            raise CheckpointError("LoRA file %s: key %r has dtype %s; LoRA factors and deltas must be floating point"
                                  % (path, key, e.dtype))
    out: Dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(entries):
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError("LoRA file %s: key %r holds %d NaN/Inf value(s); the file is corrupt"
                                  % (path, key, bad))
        out[key] = tensor
    return out


__all__ = ["read_lora_file", "FLOAT_DTYPES"]
