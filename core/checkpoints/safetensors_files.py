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
from ..files import regular_file

#: the safetensors library refuses longer headers (MAX_HEADER_SIZE in its format reader)
_MAX_HEADER = 100_000_000

#: the dtypes the loader reads (``safe_open(framework="pt")``) and casts to a policy dtype
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
if hasattr(torch, "float8_e4m3fn"):  # pre-quantized DiT checkpoints (docs/quantization.md)
    _DTYPES["F8_E4M3"] = torch.float8_e4m3fn
_ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in _DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    file: str
    dtype: str
    shape: Tuple[int, ...]


_REWRITE = "re-download the file or re-save it with safetensors.torch.save_file"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(path: str, key: str, meta, data_len: int) -> Tuple[str, Tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry; CheckpointError naming file, key and fix."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError("%s: corrupt safetensors header: tensor %r %s; %s" % (path, key, what, _REWRITE))

    if not isinstance(meta, dict):
        raise bad("is described by %s, not an object" % type(meta).__name__)
    missing = [f for f in ("dtype", "shape", "data_offsets") if f not in meta]
    if missing:
        raise bad("lacks %s" % ", ".join(missing))
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError("%s: tensor %r has dtype %r, which wanport cannot read (readable: %s); convert the "
                              "checkpoint to one of these" % (path, key, dtype, ", ".join(_DTYPES)))
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad("has shape %r (expected a list of non-negative integers)" % (shape,))
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)):
        raise bad("has data_offsets %r (expected two integers [begin, end])" % (offsets,))
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad("has data_offsets %r (expected 0 <= begin <= end)" % (offsets,))
    if end > data_len:
        raise CheckpointError("%s: tensor %r ends at byte %d of the data, but the file holds %d data bytes "
                              "(truncated download?); download the file again" % (path, key, end, data_len))
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * _ITEMSIZE[dtype]:
        raise bad("spans %d bytes, but shape %s of %s needs %d" % (end - begin, shape, dtype, numel * _ITEMSIZE[dtype]))
    return dtype, tuple(shape), begin, end


def read_header(path: str) -> Dict[str, TensorEntry]:
    """Key -> (file, dtype, shape) from one .safetensors file, reading no tensor data.

    The whole header is validated as the loader (``safetensors.safe_open``) will read it: its length,
    each entry's dtype (one wanport reads), shape (non-negative integers) and data span (two integers,
    ``end - begin == numel * itemsize``, inside the file), the spans tiling the data without overlap or
    gap. Anything else is one CheckpointError naming the file, the key and the fix."""
    regular_file(path, CheckpointError)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError("%s: corrupt safetensors file (shorter than its 8-byte header length); "
                                      "download it again" % path)
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError("%s: corrupt safetensors header (declared length %d, file size %d); "
                                      "download it again" % (path, n, size))
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError("%s: corrupt safetensors header (%s); download it again" % (path, exc)) from None
    except OSError as exc:
        raise CheckpointError("%s: cannot read (%s)" % (path, exc)) from None
    if not isinstance(header, dict):
        raise CheckpointError("%s: corrupt safetensors header (not a JSON object); download it again" % path)
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError("%s: corrupt safetensors header: __metadata__ must map names to strings; %s"
                              % (path, _REWRITE))
    data_len = size - 8 - n
    out = {}
    spans = []
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(path, key, meta, data_len)
        spans.append((begin, end, key))
        out[key] = TensorEntry(path, dtype, shape)
    # the spans must tile the data: sorted, each starts where the previous ended, the last ends the file
    spans.sort()
    covered, prev = 0, None
    for begin, end, key in spans:
        if begin != covered:
            what = ("overlaps tensor %r" % prev) if begin < covered else ("leaves a gap of %d bytes after %s"
                                                                        % (begin - covered, repr(prev) if prev else "the header"))
            raise CheckpointError("%s: corrupt safetensors header: tensor %r (bytes %d..%d) %s; %s"
                                  % (path, key, begin, end, what, _REWRITE))
        covered, prev = end, key
    if covered != data_len:
        raise CheckpointError("%s: corrupt safetensors file: the tensors cover %d of its %d data bytes; %s"
                              % (path, covered, data_len, _REWRITE))
    _check_with_library(path)
    return out


def _check_with_library(path: str) -> None:
    """The loader's own header parser (it memory-maps the file, reads no tensor data): whatever it would
    refuse in ``run`` is refused here."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - a dependency
        return
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            f.keys()
    except Exception as exc:
        raise CheckpointError("%s: the safetensors reader refuses this file (%s); %s"
                              % (path, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, _REWRITE)) from None


def shard_path(directory: str, name, index: str) -> str:
    """The file an index entry names, which must lie inside ``directory``: a relative path without
    ``..`` whose folder (symbolic links resolved) stays in the checkpoint folder. The shard file
    itself may be a symbolic link -- Hugging Face downloads keep big files as links into their
    cache -- since the link is the folder's own content, not something the index can point at.
    CheckpointError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise CheckpointError("%s: 'weight_map' values must be shard file names (strings), found %r; "
                              "re-download the index" % (index, name))
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or "\0" in name or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise CheckpointError("%s: shard %r is outside the checkpoint folder; an index may only name files inside "
                              "%s (re-download the index)" % (index, name, directory))
    path = os.path.join(directory, name)
    root = os.path.realpath(directory)
    folder = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([root, folder]) != root:
        raise CheckpointError("%s: shard %r lies in %s, outside the checkpoint folder %s (a linked folder); "
                              "only files inside the folder are read: copy the shard into it"
                              % (index, name, folder, directory))
    return path


def _read_index(index: str) -> Dict[str, str]:
    regular_file(index, CheckpointError)
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError("%s: unreadable shard index (%s: %s); re-download it"
                              % (index, type(exc).__name__, exc)) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("%s: unreadable shard index ('weight_map' must be a non-empty object of tensor name -> "
                              "shard file); re-download it" % index)
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError("%s: 'weight_map' maps %r to %r, not to a shard file name; re-download the index"
                                  % (index, key, shard))
    return weight_map


def index_weights(directory: str, stem: str) -> Dict[str, TensorEntry]:
    """All tensors of ``<stem>.safetensors`` or of the shards named by ``<stem>.safetensors.index.json``.

    Only files inside ``directory`` are read; every shard's header is validated (``read_header``)."""
    single = os.path.join(directory, stem + ".safetensors")
    index = os.path.join(directory, stem + ".safetensors.index.json")
    if os.path.lexists(index):
        weight_map = _read_index(index)
        entries: Dict[str, TensorEntry] = {}
        shards = sorted(set(weight_map.values()))
        paths = {shard: shard_path(directory, shard, index) for shard in shards}
        for shard in shards:
            path = paths[shard]
            if not os.path.lexists(path):
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
    if os.path.lexists(single):
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
