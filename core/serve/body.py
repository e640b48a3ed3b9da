"""A task request body -> the values of one ``Pipeline.generate`` call, checked before queueing.

The body is a JSON object of per-request keys (:data:`REQUEST_KEYS`). Keys whose change needs a
reload (model, backend, precision, parallel layout, LoRA files, ...: ``wanport.pipeline.request.RELOAD``)
are refused with the reason; so is ``output`` (the server names its files) and any unknown key
(with the closest known one). An input image is either a path *inside the server's image folder*
(``--image-dir``; anything resolving outside it -- ``..``, absolute paths elsewhere, symbolic links
out -- is refused) or an upload (``image_base64``, at most ``--max-upload-bytes`` decoded), which
is written into the server's ``uploads/`` folder under a generated name. The values then go through
the code ``generate`` itself runs first (:func:`wanport.pipeline.request.call_recipe`,
:func:`wanport.pipeline.common.check_request`: the recipe types, every semantic check of
``wanport run``, the image opened exactly as the CLI opens it), so a request that would fail is
refused with that message before it is queued.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from ..errors import ConfigError, InputError
from ..pipeline.request import PER_CALL, RELOAD

#: body key -> generate() keyword (``image_base64`` becomes ``image`` once written)
REQUEST_KEYS: Dict[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "image": "image",
    "image_base64": "image",
    "size": "size",
    "frames": "frames",
    "steps": "steps",
    "shift": "shift",
    "guide_scale": "guide_scale",
    "seed": "seed",
    "lora_strength": "lora_strength",
}

DEFAULT_MAX_UPLOAD_BYTES = 8 << 20


class RequestError(ConfigError):
    """A request body the server refuses (HTTP 422); the message names the key and the fix."""


@dataclass(frozen=True)
class BodyLimits:
    """What a request may reach: the server's output folder (uploads go to ``uploads/`` in it),
    the folder image paths must lie in (None: no paths, uploads only) and the upload size."""

    out_dir: str
    image_dir: Optional[str] = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    @property
    def upload_dir(self) -> str:
        return os.path.join(self.out_dir, "uploads")


def _key_error(key: str) -> RequestError:
    top = key.split(".")[0]
    if top in RELOAD:
        return RequestError("%s: cannot change per request (%s); it is fixed when the server loads the "
                            "pipeline: restart `wanport serve` with it in the recipe" % (key, RELOAD[top]))
    if top == "output":
        return RequestError("%s: the server names its output files (GET /v1/tasks/{id}/video)" % key)
    if top == "sample" or key in PER_CALL:
        name = {v: k for k, v in PER_CALL.items()}.get(key, key)
        hint = " (use %r)" % name if name in REQUEST_KEYS else ""
        return RequestError("%s: not a per-request key here%s; per-request keys: %s"
                            % (key, hint, ", ".join(REQUEST_KEYS)))
    close = difflib.get_close_matches(key, list(REQUEST_KEYS), n=1)
    return RequestError("unknown key %r%s; per-request keys: %s"
                        % (key, " (did you mean %r?)" % close[0] if close else "", ", ".join(REQUEST_KEYS)))


def confined_image(path: Any, limits: BodyLimits) -> str:
    """The real path of ``path`` (relative to the image folder, or absolute inside it), refused
    when it resolves anywhere else."""
    if not isinstance(path, str):
        raise RequestError("image: give a path (text) inside the server's image folder, got %s" % type(path).__name__)
    if path == "":
        return ""  # drops the recipe's image (TI2V text mode), as in generate()
    if limits.image_dir is None:
        raise RequestError("image: this server takes no image paths (start it with --image-dir FOLDER to allow "
                           "paths inside FOLDER); upload the image as image_base64 instead")
    if "\x00" in path:
        raise RequestError("image: the path holds a NUL character")
    root = os.path.realpath(limits.image_dir)
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, real]) != root:
        raise RequestError("image %s: outside the server's image folder; give a path inside it (relative to "
                           "the folder)" % path)
    return real


def decode_upload(data: Any, limits: BodyLimits) -> bytes:
    """The bytes of an ``image_base64`` value, refused above the size limit (checked on the text
    before decoding) or when it is not base64."""
    if not isinstance(data, str):
        raise RequestError("image_base64: give the image file's bytes as base64 text, got %s" % type(data).__name__)
    if data.startswith("data:") and "," in data:  # a data URL: data:image/png;base64,....
        data = data.split(",", 1)[1]
    if len(data) // 4 * 3 > limits.max_upload_bytes + 3:
        raise RequestError("image_base64: the upload is larger than the server's limit of %d bytes "
                           "(--max-upload-bytes); send a smaller image" % limits.max_upload_bytes)
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image_base64: not valid base64 text") from None
    if len(blob) > limits.max_upload_bytes:
        raise RequestError("image_base64: the upload is %d bytes, over the server's limit of %d (--max-upload-bytes)"
                           % (len(blob), limits.max_upload_bytes))
    if not blob:
        raise RequestError("image_base64: empty upload")
    return blob


def store_upload(blob: bytes, limits: BodyLimits) -> str:
    """Write an upload into ``uploads/`` under a generated name (temporary file + rename)."""
    from ..io.atomic import atomic_path

    path = os.path.join(limits.upload_dir, uuid.uuid4().hex + ".img")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(blob)
    return path


def parse_body(body: Any, limits: BodyLimits) -> Dict[str, Any]:
    """The generate() values of a request body (image uploads written to ``uploads/``); raises
    :class:`RequestError` for keys and shapes. No recipe check yet: :func:`check_values`."""
    if not isinstance(body, Mapping):
        raise RequestError("the body must be a JSON object of per-request keys (%s), got %s"
                           % (", ".join(REQUEST_KEYS), type(body).__name__))
    for key in body:
        if key not in REQUEST_KEYS:
            raise _key_error(str(key))
    if "image" in body and "image_base64" in body:
        raise RequestError("give either image (a path) or image_base64 (an upload), not both")
    values: Dict[str, Any] = {}
    for key, value in body.items():
        if value is None:
            continue
        if key == "image":
            values["image"] = confined_image(value, limits)
        elif key == "image_base64":
            values["image"] = store_upload(decode_upload(value, limits), limits)
        elif key == "lora_strength" and not isinstance(value, Mapping):
            raise RequestError("lora_strength: give an object {name: strength}, got %s" % type(value).__name__)
        elif key == "size" and isinstance(value, list):
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise RequestError("size: give \"W*H\" or [W, H] (two integers), got %r" % (value,))
            values["size"] = "%d*%d" % tuple(value)
        else:
            values[REQUEST_KEYS[key]] = value
    return values


def check_values(pipe, values: Mapping[str, Any], output: Optional[str] = None) -> None:
    """The checks ``generate`` runs before any compute, on the pipeline's recipe with these values:
    recipe types and semantics, the image, unmerged-LoRA strengths. ConfigError / InputError.
    ``output``: the path whose folder the checks probe for writing (nothing is written there)."""
    from ..pipeline.common import check_request
    from ..pipeline.request import call_recipe

    call = {k: v for k, v in values.items() if k != "lora_strength"}
    cfg, _ = call_recipe(pipe.recipe, call, output, "request")
    check_request(cfg, "request")
    if "lora_strength" in values:
        pipe._check_lora_strength(values["lora_strength"])


def forget_upload(values: Mapping[str, Any], limits: BodyLimits) -> None:
    """Remove a refused request's upload (a path in ``uploads/``), leaving image-folder files alone."""
    path = values.get("image")
    if isinstance(path, str) and os.path.dirname(path) == os.path.abspath(limits.upload_dir):
        try:
            os.unlink(path)
        except OSError:
            pass


__all__ = ["BodyLimits", "REQUEST_KEYS", "RequestError", "check_values", "confined_image", "decode_upload",
           "forget_upload", "parse_body", "store_upload", "InputError"]
