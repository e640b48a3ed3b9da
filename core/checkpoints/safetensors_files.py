"""safetensors checkpoints: header reading (no tensor data), sharded index, per-key loading.

Headers are parsed directly (8-byte little-endian length, then JSON) so that key sets and
shapes can be validated before any weight is read.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Tuple

import torch

from ..errors import CheckpointError

_MAX_HEADER = 100 * 2**20

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorEntry:
    file: str
    dtype: str
    shape: Tuple[int, ...]


def read_header(path: str) -> Dict[str, TensorEntry]:
    """Key -> (file, dtype, shape) from one .safetensors file. CheckpointError if corrupt."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError("%s: corrupt safetensors file (shorter than its 8-byte header length)" % path)
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError("%s: corrupt safetensors header (declared length %d, file size %d)"
                                      % (path, n, size))
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError("%s: file not found" % path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError("%s: corrupt safetensors header (%s)" % (path, exc)) from None
    except OSError as exc:
        raise CheckpointError("%s: cannot read (%s)" % (path, exc)) from None
    if not isinstance(header, dict):
        raise CheckpointError("%s: corrupt safetensors header (not a JSON object)" % path)
    out = {}
    data_len = size - 8 - n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = meta["dtype"], tuple(int(s) for s in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("%s: corrupt safetensors header entry for key %r" % (path, key)) from None
        if dtype not in _DTYPES:
            raise CheckpointError("%s: key %r has unsupported dtype %r" % (path, key, dtype))
        if not (0 <= begin <= end <= data_len):
            raise CheckpointError("%s: key %r points outside the file (truncated download?)" % (path, key))
        out[key] = TensorEntry(path, dtype, shape)
    return out


def index_weights(directory: str, stem: str) -> Dict[str, TensorEntry]:
    """All tensors of ``<stem>.safetensors`` or of the shards named by ``<stem>.safetensors.index.json``."""
    single = os.path.join(directory, stem + ".safetensors")
    index = os.path.join(directory, stem + ".safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError("%s: unreadable shard index (%s: %s)" % (index, type(exc).__name__, exc)) from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("%s: 'weight_map' must be a non-empty object" % index)
        entries: Dict[str, TensorEntry] = {}
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                raise CheckpointError("%s: shard %s listed in %s is missing" % (path, shard, os.path.basename(index)))
            for key, entry in read_header(path).items():
                if weight_map.get(key) != shard:
                    raise CheckpointError("%s: key %r is in this shard but the index maps it to %r"
                                          % (path, key, weight_map.get(key)))
                entries[key] = entry
        absent = sorted(set(weight_map) - set(entries))
        if absent:
            raise CheckpointError("%s: key %r is listed in the index but absent from shard %s"
                                  % (index, absent[0], weight_map[absent[0]]))
        return entries
    if os.path.isfile(single):
        return read_header(single)
    raise CheckpointError(
        "%s: no %s.safetensors or %s.safetensors.index.json (+ shards) found"
        % (directory, stem, stem)
    )


def check_against(entries: Mapping[str, TensorEntry], expected: Mapping[str, Tuple[int, ...]], what: str) -> None:
    """Missing, unexpected or mis-shaped tensors -> one CheckpointError naming file and key."""
    missing = [k for k in expected if k not in entries]
    extra = [k for k in entries if k not in expected]
    problems: List[str] = []
    if missing:
        problems.append("missing tensor(s) %s" % ", ".join(repr(k) for k in missing[:5])
                        + (" and %d more" % (len(missing) - 5) if len(missing) > 5 else ""))
    for k in extra[:5]:
        problems.append("unexpected tensor %r in %s" % (k, entries[k].file))
    if len(extra) > 5:
        problems.append("and %d more unexpected tensors" % (len(extra) - 5))
    for k, want in expected.items():
        e = entries.get(k)
        if e is not None and tuple(e.shape) != tuple(want):
            problems.append("tensor %r in %s has shape %s, expected %s" % (k, e.file, list(e.shape), list(want)))
    if problems:
        raise CheckpointError("%s does not match the model: %s" % (what, "; ".join(problems)))


def iter_tensors(entries: Mapping[str, TensorEntry]) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (key, CPU tensor) file by file (each file opened once, memory-mapped)."""
    from safetensors import safe_open

    by_file: Dict[str, List[str]] = {}
    for key, e in entries.items():
        by_file.setdefault(e.file, []).append(key)
    for path, keys in by_file.items():
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in keys:
                    yield key, f.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError("%s: failed to read tensors (%s: %s)" % (path, type(exc).__name__, exc)) from None


def save_file_atomic(tensors: Mapping[str, torch.Tensor], path: str, metadata=None) -> None:
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
