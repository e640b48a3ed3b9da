"""YAML recipe + dotted overrides -> a type-checked :class:`RunConfig`.

Structural problems (unknown keys, wrong types) are reported here with the closest known key;
semantic checks live in :mod:`wanport.config.validate`. Nothing heavy is imported.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..errors import ConfigError
from ..files import regular_file
from .schema import REQUIRED, TINY_RECIPE, RunConfig


def read_yaml(path: str) -> Dict[str, Any]:
    if os.path.exists(path):  # a folder, FIFO or device: refused before open() (a FIFO would block)
        regular_file(path, ConfigError, "recipe")
    if not os.path.isfile(path):
        hint = ""
        candidate = os.path.join("recipes", path)
        if os.path.isfile(candidate) or os.path.isfile(candidate + ".yaml"):
            hint = " (did you mean %s?)" % (candidate if os.path.isfile(candidate) else candidate + ".yaml")
        raise ConfigError("recipe %s not found%s" % (path, hint))
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise ConfigError("recipe %s cannot be read: %s" % (path, exc.strerror or exc)) from None
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = blob[:exc.start].count(b"\n") + 1
        raise ConfigError("recipe %s is not UTF-8 text (byte 0x%02x on line %d); save it as UTF-8"
                          % (path, blob[exc.start], line)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("recipe %s is not valid YAML: %s" % (path, exc)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("recipe %s must be a mapping of keys to values, got %s" % (path, type(data).__name__))
    return data


def _known_paths(cls=RunConfig, prefix: str = "") -> List[str]:
    out = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        out.append(path)
        if f.metadata.get("type") == "section":
            out.extend(_known_paths(f.default_factory, path + "."))  # type: ignore[misc]
    return out


def _suggest(path: str) -> str:
    close = difflib.get_close_matches(path, _known_paths(), n=1, cutoff=0.6)
    if not close:  # a typo in the last component only
        leaf = path.rsplit(".", 1)[-1]
        close = [p for p in _known_paths() if p.rsplit(".", 1)[-1] in difflib.get_close_matches(
            leaf, [q.rsplit(".", 1)[-1] for q in _known_paths()], n=1, cutoff=0.75)]
    return " (did you mean %r?)" % close[0] if close else ""


def _kinds(cls=RunConfig, prefix: str = "") -> Dict[str, str]:
    """Every dotted path -> its schema type (``str``, ``float?``, ``section``, ...)."""
    out = {}
    for f in dataclasses.fields(cls):
        out[prefix + f.name] = f.metadata["type"]
        if f.metadata.get("type") == "section":
            out.update(_kinds(f.default_factory, prefix + f.name + "."))  # type: ignore[misc]
    return out


#: schema types whose command-line value is taken verbatim (the text after the first ``=``)
VERBATIM = ("str", "str?")

#: schema types of the mapping fields whose entries a dotted override may set one at a time
#: (``ops.attention=...``, ``env.NAME=...``, ``precision.vae=...``)
MAPPING_KINDS = ("str_map", "precision")


def text_paths() -> List[str]:
    """The dotted paths whose override value is taken verbatim (README and ``--help`` list them)."""
    return [p for p, kind in _kinds().items() if kind in VERBATIM]


def parse_override(item: str) -> Tuple[str, Any]:
    """``key.path=value`` -> (path, value). The rule (README, "Overrides"): everything after the
    FIRST ``=`` is the value; for a text field (:func:`text_paths`: prompt, paths, names, choices)
    it is taken verbatim -- ``#``, ``:``, quotes and spaces included, an empty value unsets an
    optional one; for every other field it is read as one YAML value (a number, true/false,
    null, a ``[list]`` or a ``{mapping}``)."""
    if "=" not in item:
        raise ConfigError("override %r must look like key.path=value (e.g. sample.steps=4)" % item)
    path, _, text = item.partition("=")
    path = path.strip()
    if path.startswith("--"):
        path = path[2:]
    kinds = _kinds()
    head, _, key = path.rpartition(".")
    if path not in kinds and kinds.get(head) in MAPPING_KINDS and key:
        # one entry of a mapping field: ops.attention=sdpa_cudnn, precision.vae=bf16, env.X=1
        # (the entry's name and value are checked with the rest of the recipe)
        if kinds[head] == "str_map":
            return path, text
        kinds = dict(kinds, **{path: "any"})
    if path not in kinds:
        raise ConfigError("override: unknown key %r%s" % (path, _suggest(path)))
    if kinds[path] in VERBATIM:
        return path, text
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("override %s: value %r is not valid YAML (%s)" % (path, text, exc)) from None
    return path, value


def set_path(raw: Dict[str, Any], path: str, value: Any, merge: bool = False) -> None:
    """``raw[a][b][c] = value`` for the dotted ``path`` ``a.b.c`` (missing sections created);
    ``merge``: a mapping value is merged into an existing section instead of replacing it."""
    node = raw
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "precision" and isinstance(raw.get("precision"), str):
        raw["precision"] = {"preset": raw["precision"]}  # precision: official + precision.vae=bf16
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    leaf = parts[-1]
    if merge and isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
        node[leaf] = dict(node[leaf], **value)
    else:
        node[leaf] = value


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """``sample.steps=4``-style assignments (:func:`parse_override` says how values are read)."""
    data = copy.deepcopy(raw)
    for item in overrides:
        set_path(data, *parse_override(item))
    return data


def _check_type(path: str, kind: str, value: Any, choices, problems: List[str]) -> Any:
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        problems.append("%s: must be set (got null)" % path)
        return None
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append("%s: expected an integer, got %r" % (path, value))
            return None
    elif base == "float":
        value = _finite_number(path, value, "a number", problems)
        if value is None:
            return None
    elif base in ("str", "size"):
        if base == "size" and isinstance(value, (list, tuple)):
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                problems.append("%s: expected W*H or a pair of integers [W, H], got %r" % (path, value))
                return None
            value = "%d*%d" % tuple(value)
        if not isinstance(value, str):
            problems.append("%s: expected a string, got %r" % (path, value))
            return None
        if "\0" in value:
            problems.append("%s: contains a NUL character" % path)
            return None
    elif base == "bool":
        if not isinstance(value, bool):
            problems.append("%s: expected true or false, got %r" % (path, value))
            return None
    elif base == "guide":
        wanted = "a number or a pair [low_noise, high_noise]"
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or not all(_is_number(v) for v in value):
                problems.append("%s: expected %s, got %r" % (path, wanted, value))
                return None
            pair = [_finite_number("%s[%d]" % (path, i), v, wanted, problems) for i, v in enumerate(value)]
            if None in pair:
                return None
            value = pair
        else:
            value = _finite_number(path, value, wanted, problems)
            if value is None:
                return None
    elif base == "auto_bool":
        if not isinstance(value, bool) and value != "auto":
            problems.append("%s: expected auto, true or false, got %r" % (path, value))
            return None
    elif base == "int_list":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            problems.append("%s: expected a list of integers, got %r" % (path, value))
            return None
    elif base == "str_list":
        if not isinstance(value, list) or not all(isinstance(v, str) and v and "\0" not in v for v in value):
            problems.append("%s: expected a list of names, got %r" % (path, value))
            return None
    elif base == "float_list":
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            problems.append("%s: expected a list of numbers, got %r" % (path, value))
            return None
        floats = [_finite_number("%s[%d]" % (path, i), v, "a finite number", problems) for i, v in enumerate(value)]
        if None in floats:
            return None
        value = floats
    elif base == "str_map":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            problems.append("%s: expected a mapping of names to values, got %r" % (path, value))
            return None
        bad = [k for k, v in value.items() if not isinstance(v, (str, int, float, bool))]
        if bad:
            problems.append("%s.%s: expected a plain value, got %r" % (path, bad[0], value[bad[0]]))
            return None
        value = {k: str(v) for k, v in value.items()}
    elif base == "lora_list":
        from ..lora.spec import check_lora_list

        value = check_lora_list(path, value, problems)
        if value is None:
            return None
    elif base == "precision":
        if not isinstance(value, (str, dict)):
            problems.append("%s: expected a preset name or a mapping, got %r" % (path, value))
            return None
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = " (did you mean %r?)" % close[0] if close else ""
        problems.append("%s: %r is not one of %s%s" % (path, value, ", ".join(map(str, choices)), hint))
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_number(path: str, value: Any, wanted: str, problems: List[str]) -> Optional[float]:
    """The one gate of every float in the recipe (``float`` fields and the guide-scale pair): a
    finite number, or a problem. YAML's ``.nan``/``.inf`` and ints too large for a float stop here."""
    if not _is_number(value):
        problems.append("%s: expected %s, got %r" % (path, wanted, value))
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        problems.append("%s: must be a finite number, got %r" % (path, value))
        return None
    return number


def _build(cls, data: Mapping[str, Any], prefix: str, problems: List[str]):
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            problems.append("unknown key %r%s" % (prefix + str(key), _suggest(prefix + str(key))))
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        kind = f.metadata["type"]
        if kind == "section":
            sub = data.get(f.name, {})
            if sub is None:
                sub = {}
            if not isinstance(sub, dict):
                problems.append("%s: expected a mapping, got %r" % (path, sub))
                sub = {}
            kwargs[f.name] = _build(f.default_factory, sub, path + ".", problems)
            continue
        if f.name in data:
            kwargs[f.name] = _check_type(path, kind, data[f.name], f.metadata.get("choices"), problems)
        elif f.default is REQUIRED:
            problems.append("%s: required" % path)
            kwargs[f.name] = None
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None or k in data})
    except TypeError:  # a required field left unset; already reported
        return None


def build_config(raw: Mapping[str, Any], source: str = "recipe") -> RunConfig:
    problems: List[str] = []
    cfg = _build(RunConfig, raw, "", problems)
    if problems:
        raise ConfigError(_format(source, problems))
    return cfg


def _format(source: str, problems: List[str]) -> str:
    if len(problems) == 1:
        return "%s: %s" % (source, problems[0])
    return "%s has %d problems:\n  - %s" % (source, len(problems), "\n  - ".join(problems))


def load_recipe(path: Optional[str], overrides: Sequence[str] = ()) -> Tuple[RunConfig, Dict[str, Any]]:
    """(config, raw dict after overrides). ``path`` None: the embedded tiny recipe."""
    raw = copy.deepcopy(TINY_RECIPE) if path is None else read_yaml(path)
    raw = apply_overrides(raw, overrides)
    source = "recipe %s" % path if path else "the embedded tiny recipe"
    return build_config(raw, source), raw


def config_to_dict(cfg: RunConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
