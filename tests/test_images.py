"""Input images: every file PIL opens becomes upright RGB; bad files are one clear InputError; the
official output sizing (Wan2.1/2.2 I2V max-area, TI2V best_output_size) and pixel paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from wanport.errors import InputError
from wanport.pipeline.images import (
    best_output_size,
    load_image,
    max_area_size,
    resize_bicubic,
    resize_crop_lanczos,
    to_tensor,
)


def _rgb(w=40, h=24):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 5
    arr[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 9
    arr[:4, :6] = (255, 255, 255)  # a white mark in the top-left corner
    return Image.fromarray(arr)


def test_modes_are_converted_to_rgb(tmp_path):
    base = _rgb()
    cases = {
        "rgba.png": base.convert("RGBA"),
        "gray.png": base.convert("L"),
        "palette.png": base.convert("P"),
        "cmyk.jpg": base.convert("CMYK"),
        "gray16.png": base.convert("I;16"),
    }
    for name, im in cases.items():
        path = tmp_path / name
        im.save(path)
        got = load_image(str(path))
        assert got.image.mode == "RGB" and (got.width, got.height) == (40, 24), name
        assert got.source_mode == Image.open(path).mode
    transparent = base.convert("P")
    transparent.info["transparency"] = 0
    transparent.save(tmp_path / "ptrans.png", transparency=0)
    assert load_image(str(tmp_path / "ptrans.png")).image.mode == "RGB"
    # alpha is dropped, as the official convert("RGB") does (not composited)
    rgba = base.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(tmp_path / "clear.png")
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "clear.png")).image), np.asarray(base))


def _official(path):
    """What the official generate.py does with --image: ``Image.open(path).convert("RGB")``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(Image.open(path).convert("RGB"))


def _mode_images():
    """(file name, image, the mode the file must reopen in) for every mode Pillow writes to a file."""
    base = _rgb()
    g = np.random.RandomState(0)
    ramp16 = (np.arange(24 * 40).reshape(24, 40) * 67).astype(np.uint16)  # 0..64253: mostly > 255
    pal = base.convert("P", palette=Image.ADAPTIVE, colors=16)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(g.randint(0, 256, (24, 40)).astype(np.uint8)))
    la = base.convert("LA")
    la.putalpha(Image.fromarray(g.randint(0, 256, (24, 40)).astype(np.uint8)))
    return [
        ("bilevel.png", base.convert("1"), "1"),
        ("gray.png", base.convert("L"), "L"),
        ("gray-trns.png", base.convert("L"), "L", {"transparency": 100}),
        ("gray-alpha.png", la, "LA"),
        ("palette.png", pal, "P"),
        ("palette-trns.png", pal, "P", {"transparency": 3}),
        ("palette-trns-bytes.png", pal, "P", {"transparency": bytes([255] * 5 + [0, 128] + [255] * 9)}),
        ("palette.gif", pal, "P", {"transparency": 2}),
        ("rgb-trns.png", base, "RGB", {"transparency": (0, 9, 0)}),
        ("rgba.png", rgba, "RGBA"),
        ("cmyk.jpg", base.convert("CMYK"), "CMYK"),
        ("cmyk.tif", base.convert("CMYK"), "CMYK"),
        ("ycbcr.tif", base.convert("YCbCr"), "YCbCr"),
        ("lab.tif", base.convert("LAB"), "LAB"),
        ("gray16.png", Image.fromarray(ramp16), "I;16"),
        ("gray16.tif", Image.fromarray(ramp16), "I;16"),
        ("int32.tif", Image.fromarray(ramp16.astype(np.int32) - 3000), "I"),
        ("float.tif", Image.fromarray(np.linspace(-0.5, 300.7, 24 * 40, dtype=np.float32).reshape(24, 40)), "F"),
        ("float01.tif", Image.fromarray(np.linspace(0, 1, 24 * 40, dtype=np.float32).reshape(24, 40)), "F"),
        ("gray.bmp", base.convert("L"), "L"),
        ("rgb.webp", base, "RGB", {"lossless": True}),
    ]


def test_every_mode_comes_out_as_the_official_conversion(tmp_path):
    """Pixel for pixel what ``Image.open(p).convert("RGB")`` gives, for every mode Pillow writes:
    alpha dropped (not composited), palettes and their transparency mapped through the colours,
    16-bit / 32-bit / float images clipped to 0..255 (not rescaled), CMYK, YCbCr and LAB converted."""
    seen, converted = set(), set()
    for name, im, mode, *opts in _mode_images():
        path = tmp_path / name
        try:
            im.save(path, **(opts[0] if opts else {}))
        except (OSError, KeyError, ValueError):  # this Pillow has no writer for the format
            continue
        if Image.open(path).mode != mode:  # this Pillow converts the mode when it reads the file back
            converted.add(mode)  # (Pillow 12 reads a YCbCr TIFF as RGB): no such file to test here
            continue
        got = load_image(str(path))
        assert got.source_mode == mode and got.image.mode == "RGB" and not got.exif_rotated, name
        assert np.array_equal(np.asarray(got.image), _official(path)), name
        seen.add(mode)
    assert {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I", "F"} - converted <= seen, seen
    assert len(converted) <= 1, converted
    # 16-bit: clipped, as the official code does -- 67 stays 67, everything from 255 up is white
    arr = np.asarray(load_image(str(tmp_path / "gray16.png")).image)
    assert arr[0, 1, 0] == 67 and arr[0, 3, 0] == 201 and (arr[5:, :, :] == 255).all()


def test_exif_orientation_then_the_official_conversion(tmp_path):
    """An EXIF-rotated file in any mode: the official conversion of the upright picture (the one
    deliberate difference from the official code, which ignores the tag)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    for name, im in (("l.jpg", _rgb().convert("L")), ("cmyk.jpg", _rgb().convert("CMYK")),
                     ("rgba.png", _rgb().convert("RGBA")), ("gray16.png", Image.fromarray(
                         (np.arange(24 * 40).reshape(24, 40) * 67).astype(np.uint16)))):
        path = tmp_path / name
        im.save(path, exif=exif.tobytes())
        got = load_image(str(path))
        assert got.exif_rotated, name
        official = Image.fromarray(_official(path)).transpose(Image.Transpose.ROTATE_270)
        assert np.array_equal(np.asarray(got.image), np.asarray(official)), name


def test_exif_orientation_is_applied(tmp_path):
    base = _rgb(40, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    base.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    got = load_image(str(tmp_path / "rot.jpg"))
    assert (got.width, got.height) == (24, 40) and got.exif_rotated
    arr = np.asarray(got.image).astype(int)
    assert arr[:6, -4:].mean() > 200 and arr[-6:, :4].mean() < 200  # the white corner moved to the top right
    base.save(tmp_path / "plain.jpg", quality=95)
    assert not load_image(str(tmp_path / "plain.jpg")).exif_rotated


@pytest.mark.parametrize("kind,fragment", [
    ("missing", "file not found"),
    ("folder", "is a folder"),
    ("url", "only local files"),
    ("text", "not an image file PIL can read"),
    ("truncated", "unreadable"),
    ("tiny", "too small"),
    ("empty", "no path"),
])
def test_bad_images(tmp_path, kind, fragment):
    path = str(tmp_path / "x.png")
    if kind == "folder":
        path = str(tmp_path)
    elif kind == "url":
        path = "https://example.com/cat.png"
    elif kind == "text":
        (tmp_path / "x.png").write_text("not a picture")
    elif kind == "truncated":
        _rgb(64, 64).save(path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "tiny":
        _rgb(12, 40).save(path)
    elif kind == "empty":
        path = " "
    with pytest.raises(InputError) as exc:
        load_image(path, min_side=16)
    assert fragment in str(exc.value)
    assert exc.value.exit_code == 5


def _official_lat(w, h, area, stride=8, patch=2):
    aspect = h / w
    lat_h = round(np.sqrt(area * aspect) // stride // patch * patch)
    lat_w = round(np.sqrt(area / aspect) // stride // patch * patch)
    return lat_w * stride, lat_h * stride


@pytest.mark.parametrize("w,h", [(832, 480), (480, 832), (1024, 1024), (1920, 1080), (640, 427), (300, 1000)])
@pytest.mark.parametrize("area", [832 * 480, 1280 * 720])
def test_max_area_size_matches_the_official_formula(w, h, area):
    ow, oh = max_area_size(w, h, area)
    assert (ow, oh) == _official_lat(w, h, area)
    assert ow % 16 == 0 and oh % 16 == 0 and ow * oh <= area * 1.01


def test_known_sizes():
    # the official float arithmetic: sqrt(832*480 * (480/832)) = 479.99999999999994 -> 58 latent rows
    assert max_area_size(832, 480, 832 * 480) == (832, 464)
    assert max_area_size(1280, 720, 1280 * 720) == (1280, 720)
    assert best_output_size(1280, 704, 32, 32, 1280 * 704) == (1280, 704)
    assert best_output_size(704, 1280, 32, 32, 1280 * 704) == (704, 1280)
    ow, oh = best_output_size(1920, 1080, 32, 32, 1280 * 704)
    assert ow % 32 == 0 and oh % 32 == 0 and ow * oh <= 1280 * 704
    assert abs(ow / oh - 16 / 9) < 0.05
    with pytest.raises(InputError, match="aspect ratio"):
        max_area_size(10000, 16, 64 * 64)
    with pytest.raises(InputError, match="aspect ratio"):
        best_output_size(10000, 16, 32, 32, 64 * 64)


def test_pixel_paths():
    im = _rgb(40, 24)
    x = to_tensor(im)
    assert x.shape == (3, 24, 40) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[:, 0, 0], torch.ones(3))  # white -> 1
    y = resize_bicubic(x, 64, 32)
    ref = torch.nn.functional.interpolate(x[None], size=(32, 64), mode="bicubic", align_corners=False)[0]
    assert torch.equal(y, ref)  # torch bicubic, no antialias, no clamp
    crop = resize_crop_lanczos(im, 32, 32)
    assert crop.size == (32, 32)
    assert math.isclose(np.asarray(crop)[:, :, 1].mean(), np.asarray(im.resize((53, 32), Image.LANCZOS))[:, 10:42, 1].mean(),
                        rel_tol=1e-6)  # centre crop of the LANCZOS cover resize
