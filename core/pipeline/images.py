"""Input images: opening any file PIL reads, the official output sizing and resizing (docs/wan-model.md §3, §6.2).

* :func:`load_image` -- a local file -> an RGB ``PIL.Image`` exactly as the official code makes it,
  ``Image.open(path).convert("RGB")`` (Wan2.1 and Wan2.2 generate.py), for every mode Pillow opens:
  the alpha channel is dropped, not composited; a palette maps through its colours; 16-bit ('I;16'),
  32-bit integer ('I') and float ('F') images are clipped to 0..255, not rescaled (a 16-bit picture
  comes out mostly white, as it does in the official code; ``source_mode`` in the report says so).
  One deliberate difference: an EXIF orientation tag is applied first (the official code ignores
  it and conditions on the stored, sideways pixels), so a phone photo is used the way every viewer
  shows it; ``exif_rotated`` in the report says when this happened. Every problem (missing, a folder,
  a FIFO or device, a URL, not an image, truncated, smaller than one DiT patch, absurd aspect ratio)
  is an :class:`InputError` naming the file, raised before any weight loads.
* :func:`max_area_size` -- Wan2.1 I2V / Wan2.2 I2V-A14B: the latent grid from the maximum area and
  the image's aspect ratio (``lat_h = round(sqrt(area * h/w) // 8 // 2 * 2)``).
* :func:`best_output_size` -- Wan2.2 TI2V: the output size (multiples of 32) whose aspect ratio
  is closest to the image's, within the maximum area.
* :func:`to_tensor` / :func:`resize_bicubic` / :func:`resize_crop_lanczos` -- the official pixel
  paths: ``[3, H, W]`` in [-1, 1]; I2V resizes the tensor with torch bicubic (no antialias, no
  clamp), TI2V resizes the PIL image with LANCZOS, then centre-crops.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..files import regular_file

MAX_POSITIONS = 1024  # rotary positions per axis (models/dit/rope.py)

@dataclass(frozen=True)
class InputImage:
    """An opened, upright RGB image and where it came from."""

    path: str
    image: object  # PIL.Image.Image (RGB)
    source_mode: str  # the file's PIL mode before conversion (e.g. RGBA, P, L)
    exif_rotated: bool

    @property
    def width(self) -> int:
        return int(self.image.size[0])

    @property
    def height(self) -> int:
        return int(self.image.size[1])


def load_image(path: str, min_side: int = 16) -> InputImage:
    """Open a local image file as upright RGB. InputError (exit code 5) for anything unusable;
    ``min_side``: the smallest width/height accepted (the pipelines pass one DiT patch in
    pixels: 16, or 32 for TI2V -- a smaller picture holds less than one latent token)."""
    if not isinstance(path, str) or not path.strip():
        raise InputError("image: no path given")
    if "://" in path:
        raise InputError("image %s: only local files are read (no URLs); download it first" % path)
    if not os.path.exists(path):
        raise InputError("image %s: file not found" % path)
    if os.path.isdir(path):
        raise InputError("image %s: is a folder, not an image file" % path)
    regular_file(path, InputError, "image")  # a FIFO or device would block the read below
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow ships with imageio/transformers
        raise InputError("image %s: reading images needs Pillow (pip install pillow)" % path) from None
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated or corrupt data fails here, not later
            mode = im.mode
            rotated = _orientation(im) not in (None, 1)
            upright = ImageOps.exif_transpose(im) if rotated else im
            rgb = _to_rgb(upright)
    except UnidentifiedImageError:
        raise InputError("image %s: not an image file PIL can read" % path) from None
    except Image.DecompressionBombError as exc:
        raise InputError("image %s: too large to open safely (%s)" % (path, exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError("image %s: unreadable (%s: %s); the file may be truncated or corrupt"
                         % (path, type(exc).__name__, exc)) from None
    except Exception as exc:  # a decoder's own failure on a malformed file (struct.error, IndexError, ...)
        raise InputError("image %s: unreadable (%s: %s); the file may be corrupt; re-save it as PNG or JPEG"
                         % (path, type(exc).__name__, exc)) from None
    w, h = rgb.size
    if min(w, h) < min_side:
        raise InputError("image %s: %dx%d is too small; each side needs at least %d pixels"
                         % (path, w, h, min_side))
    return InputImage(path=path, image=rgb, source_mode=mode, exif_rotated=bool(rotated))


def _orientation(im) -> object:
    try:
        return im.getexif().get(0x0112)
    except Exception:
        return None


def _to_rgb(im):
    """The official conversion, ``convert("RGB")``, whatever the mode (tests/test_images.py checks
    every mode Pillow writes against it pixel for pixel)."""
    import warnings

    with warnings.catch_warnings():  # Pillow's advice on palette transparency concerns RGBA output
        warnings.simplefilter("ignore", UserWarning)
        return im.convert("RGB")


# ------------------------------------------------------------------------------ sizing


def max_area_size(width: int, height: int, max_area: int, vae_stride: int = 8, patch: int = 2,
                  where: str = "image") -> Tuple[int, int]:
    """Wan2.1 I2V / Wan2.2 I2V-A14B output (width, height) for an image of ``width x height``:
    ``lat_h = round(sqrt(max_area * h/w) // stride // patch * patch)`` (same for w with w/h),
    pixels = latent * stride. InputError when the aspect ratio leaves no patch on one side."""
    aspect = height / width
    lat_h = round(math.sqrt(max_area * aspect) // vae_stride // patch * patch)
    lat_w = round(math.sqrt(max_area / aspect) // vae_stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise InputError("%s: aspect ratio %dx%d is too extreme for an area of %d pixels (the video would "
                         "have no rows or columns); crop the image" % (where, width, height, max_area))
    return lat_w * vae_stride, lat_h * vae_stride


def best_output_size(width: int, height: int, dw: int, dh: int, max_area: int,
                     where: str = "image") -> Tuple[int, int]:
    """Wan2.2 TI2V (``best_output_size``): of the width-first and height-first fits into
    ``max_area`` on multiples of (dw, dh), the one whose aspect ratio is closer to the image's."""
    ratio = width / height
    ow = (max_area * ratio) ** 0.5
    oh = max_area / ow
    ow1 = int(ow // dw * dw)
    oh2 = int(oh // dh * dh)
    if ow1 < dw or oh2 < dh:
        raise InputError("%s: aspect ratio %dx%d is too extreme for an area of %d pixels; crop the image"
                         % (where, width, height, max_area))
    oh1 = int(max_area / ow1 // dh * dh)
    ow2 = int(max_area / oh2 // dw * dw)
    if oh1 < dh or ow2 < dw:
        raise InputError("%s: aspect ratio %dx%d is too extreme for an area of %d pixels; crop the image"
                         % (where, width, height, max_area))
    ratio1, ratio2 = ow1 / oh1, ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def output_size(preset, image: InputImage, max_area: int) -> Tuple[int, int]:
    """The video (width, height) for an image-conditioned run of ``preset``: TI2V's
    ``best_output_size`` on multiples of 32, else the I2V max-area rule. InputError when the
    aspect ratio leaves no row or column, or more positions than the rotary tables hold."""
    where = "image %s" % image.path
    m = preset.spatial_multiple
    if preset.task == "ti2v":
        w, h = best_output_size(image.width, image.height, m, m, max_area, where=where)
    else:
        w, h = max_area_size(image.width, image.height, max_area, preset.vae_stride[1], preset.patch_size[1],
                             where=where)
    if max(w, h) // m > MAX_POSITIONS:
        raise InputError("%s: aspect ratio %dx%d is too extreme: a %dx%d video exceeds the %d rotary positions "
                         "per axis; crop the image" % (where, image.width, image.height, w, h, MAX_POSITIONS))
    return w, h


# ------------------------------------------------------------------------------ pixels


def to_tensor(image) -> torch.Tensor:
    """RGB PIL image -> [3, H, W] float32 in [-1, 1] (``to_tensor(img).sub_(0.5).div_(0.5)``)."""
    arr = np.asarray(image, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)
    return x.sub(0.5).div(0.5)


def resize_bicubic(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[3, H, W] -> [3, height, width] with torch bicubic (align_corners False, no antialias, no clamp)."""
    return F.interpolate(x[None].float(), size=(height, width), mode="bicubic")[0]


def resize_crop_lanczos(image, width: int, height: int):
    """Scale the PIL image (LANCZOS) so it covers width x height, then centre-crop (TI2V)."""
    from PIL import Image

    iw, ih = image.size
    scale = max(width / iw, height / ih)
    resized = image.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1 = (resized.width - width) // 2
    y1 = (resized.height - height) // 2
    out = resized.crop((x1, y1, x1 + width, y1 + height))
    if out.size != (width, height):  # pragma: no cover - guaranteed by the scale above
        raise InputError("resize: got %s, expected %dx%d" % (out.size, width, height))
    return out


__all__ = ["InputImage", "load_image", "max_area_size", "best_output_size", "output_size", "to_tensor", "resize_bicubic",
           "resize_crop_lanczos"]
