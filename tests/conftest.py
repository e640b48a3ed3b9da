"""Shared fixtures: one tiny official-layout checkpoint per test session."""

from __future__ import annotations

import os
import shutil

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny Wan2.1 T2V checkpoint written by make-tiny (read-only for tests: copy to modify)."""
    from wanport.checkpoints.tiny import make_tiny

    path = str(tmp_path_factory.mktemp("ckpt") / "tiny-wan2.1-t2v")
    make_tiny(path, "wan2.1-t2v", seed=0)
    return path


@pytest.fixture
def tiny_copy(tiny_ckpt, tmp_path):
    """A private copy of the tiny checkpoint that a test may corrupt."""
    dst = str(tmp_path / "ckpt")
    shutil.copytree(tiny_ckpt, dst)
    return dst


_LAYOUT_CKPTS = {}


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory):
    """``tiny_layout(name)``: a tiny checkpoint of a make-tiny layout (wan2.1-i2v, wan2.2-t2v-a14b,
    wan2.2-i2v-a14b, wan2.2-ti2v-5b, ...), written once per session (read-only: copy to modify)."""
    from wanport.checkpoints.tiny import make_tiny

    def get(layout: str) -> str:
        if layout not in _LAYOUT_CKPTS:
            path = str(tmp_path_factory.mktemp("ckpt") / ("tiny-" + layout))
            make_tiny(path, layout, seed=0)
            _LAYOUT_CKPTS[layout] = path
        return _LAYOUT_CKPTS[layout]

    return get


@pytest.fixture(scope="session")
def input_image(tmp_path_factory):
    """A 120x80 RGBA PNG (alpha dropped on load, like the official convert('RGB'))."""
    from PIL import Image, ImageDraw

    path = str(tmp_path_factory.mktemp("img") / "input.png")
    im = Image.new("RGBA", (120, 80), (30, 90, 160, 255))
    ImageDraw.Draw(im).ellipse((20, 10, 70, 60), fill=(240, 200, 40, 200))
    im.save(path)
    return path
