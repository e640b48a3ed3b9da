"""The values one ``Pipeline.generate`` call may change, and the ones that need a new pipeline.

Per-call keys (:data:`PER_CALL`) map onto recipe paths; a call's values are written into a copy
of the pipeline's recipe and that recipe goes through the same checks as ``wanport run``
(:func:`wanport.config.build_config`, :func:`wanport.config.validate.plan_run`, the input image),
so a bad call raises the same error types before any compute. Keys whose change needs other
weights, another backend or another process layout (:data:`RELOAD`) raise
:class:`~wanport.errors.ReloadRequired` naming the key and why.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from ..config import build_config
from ..config.loader import set_path
from ..errors import ConfigError, ReloadRequired

#: generate() keyword -> recipe path
PER_CALL: Dict[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "image": "image",
    "seed": "sample.seed",
    "steps": "sample.steps",
    "guide_scale": "sample.guide_scale",
    "shift": "sample.shift",
    "size": "sample.size",
    "frames": "sample.frame_num",
    "solver": "sample.solver",
    "timesteps": "sample.timesteps",
    "denoising_step_list": "sample.denoising_step_list",
    "boundary": "sample.boundary",
    "noise": "sample.noise",
    "fps": "output.fps",
    "cache": "cache",  # the whole section, e.g. {"method": "teacache"} (docs/caching.md)
}

#: recipe keys a call cannot change, and why
RELOAD: Dict[str, str] = {
    "model": "another model means other weights",
    "checkpoint_dir": "another checkpoint means other weights",
    "task": "the task is fixed by the model",
    "backend": "the backend's runtime and op table are started once per pipeline",
    "ops": "the op table is resolved once per pipeline",
    "precision": "the weights are stored in the precision policy's dtypes",
    "quantization": "quantized weights are prepared when the pipeline loads",
    "compile": "the DiT blocks are compiled when they load",
    "env": "the backend's environment is applied before its runtime starts",
    "offload": "where the experts live is decided when they load",
    "parallel": "the process layout (groups, sharding) is set up once per pipeline",
    "lora": "LoRA files are matched and merged when the weights load",
    "lora_strict": "LoRA files are matched when the weights load",
}


def reload_error(key: str) -> ReloadRequired:
    top = key.split(".")[0].split("__")[0]
    return ReloadRequired("generate(%s=...): %s cannot change between calls (%s); build a new pipeline: "
                          "Pipeline.from_recipe(recipe, %s=...)" % (key, top, RELOAD[top], top))


def check_keys(values: Mapping[str, Any]) -> None:
    """Every keyword of a generate() call is a per-call key; reload-only keys name why not."""
    for key in values:
        top = key.split(".")[0]
        if key in PER_CALL:
            continue
        if top in RELOAD:
            raise reload_error(key)
        import difflib

        close = difflib.get_close_matches(key, list(PER_CALL), n=1)
        hint = " (did you mean %r?)" % close[0] if close else ""
        raise ConfigError("generate(): unknown argument %r%s; per-call arguments: %s"
                          % (key, hint, ", ".join(PER_CALL)))


def normalize(key: str, value: Any) -> Any:
    """Python-friendly forms: size as (W, H), an image as a path-like, guide pairs as tuples."""
    if key == "size" and isinstance(value, (tuple, list)) and len(value) == 2:
        return "%s*%s" % (value[0], value[1])
    if key == "image" and value is not None and not isinstance(value, str):
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ConfigError("generate(image=...): give the path of an image file, got %s" % type(value).__name__)
    if key in ("guide_scale", "timesteps") and isinstance(value, tuple):
        return list(value)
    return value


def output_paths(output: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``output`` (``dir/name.mp4`` or ``dir/name``) -> (output.dir, output.name)."""
    if output is None:
        return None, None
    path = os.fspath(output)
    if path.endswith(".mp4"):
        path = path[:-4]
    directory, name = os.path.split(path)
    if not name:
        raise ConfigError("generate(output=%r): give a file path such as out/clip.mp4" % (output,))
    return directory or ".", name


def call_recipe(base: Mapping[str, Any], values: Mapping[str, Any], output: Optional[str] = None,
                source: str = "generate()"):
    """The pipeline's recipe with the call's values in it -> (RunConfig, raw dict)."""
    check_keys(values)
    raw = copy.deepcopy(dict(base))
    for key, value in values.items():
        if value is not None:
            set_path(raw, PER_CALL[key], normalize(key, value))
    out_dir, out_name = output_paths(output)
    if out_dir is not None:
        set_path(raw, "output.dir", out_dir)
        set_path(raw, "output.name", out_name)
    return build_config(raw, source), raw


__all__ = ["PER_CALL", "RELOAD", "check_keys", "call_recipe", "output_paths", "reload_error"]
