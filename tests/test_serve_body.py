"""The request checks of `wanport serve` without a server: an uploaded image is checked exactly
like a `wanport run` image (too small, not an image -> the CLI's message, about "the uploaded
image", no server path), a refused upload is deleted, an accepted one is queued under a generated
name inside uploads/; image paths are confined to the image folder."""

from __future__ import annotations

import base64
import io
import os
import types

import pytest

from wanport.config import read_yaml
from wanport.errors import InputError
from wanport.serve.app import ServeState
from wanport.serve.body import BodyLimits, RequestError, confined_image

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


class _Queue:
    def __init__(self):
        self.got = []

    def submit(self, values, request):
        self.got.append(values)
        return types.SimpleNamespace(id="0" * 32)


def _b64(size=None, raw=None):
    if raw is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
        raw = buf.getvalue()
    return base64.b64encode(raw).decode()


@pytest.fixture
def state(tmp_path):
    raw = read_yaml(os.path.join(REPO, "recipes", "tiny-wan2.2-ti2v-5b.yaml"))  # image optional
    limits = BodyLimits(str(tmp_path / "srv"), str(tmp_path), 100_000)
    os.makedirs(limits.upload_dir)
    return ServeState(types.SimpleNamespace(recipe=raw), _Queue(), None, limits)


@pytest.mark.parametrize("upload,fragment", [
    (_b64((8, 8)), "8x8 is too small; each side needs at least 32 pixels"),
    (_b64(raw=b"GIF89a" + b"\0" * 40), "not an image file PIL can read"),
])
def test_uploads_are_checked_like_cli_images(state, upload, fragment):
    with pytest.raises(InputError) as err:
        state.submit({"prompt": "x", "image_base64": upload})
    assert fragment in str(err.value) and "the uploaded image" in str(err.value)
    assert state.limits.upload_dir not in str(err.value)
    assert os.listdir(state.limits.upload_dir) == [] and state.queue.got == []


def test_an_accepted_upload_is_queued_under_a_generated_name(state):
    state.submit({"prompt": "x", "image_base64": _b64((64, 48))})
    (values,) = state.queue.got
    assert os.path.dirname(values["image"]) == state.limits.upload_dir
    assert os.listdir(state.limits.upload_dir) == [os.path.basename(values["image"])]
    state.submit({"prompt": "text mode", "image": ""})  # "" drops the recipe's image, as in generate()
    assert state.queue.got[1]["image"] == ""


def test_image_paths_stay_inside_the_image_folder(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    limits = BodyLimits(str(tmp_path / "srv"), str(tmp_path / "in"))
    assert confined_image("a.png", limits) == os.path.realpath(str(tmp_path / "in" / "a.png"))
    for bad in ("../in2/a.png", "../../etc/passwd", "/etc/passwd", "a.png/../../x"):
        with pytest.raises(RequestError, match="outside the server's image folder"):
            confined_image(bad, limits)
    with pytest.raises(RequestError, match="takes no image paths"):
        confined_image("a.png", BodyLimits(str(tmp_path / "srv")))


def test_bad_settings_are_refused_before_anything_loads(capsys, tmp_path):
    import socket

    from wanport import cli

    code = cli.main(["serve", "checkpoint_dir=%s" % (tmp_path / "none"), "--queue", "0", "--port", "70000",
                     "--image-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2
    for fragment in ("--port 70000: give 0..65535", "--queue 0: at least 1", "--image-dir", "not a folder"):
        assert fragment in err
    with socket.socket() as busy:  # a port in use: refused before the weights load
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code = cli.main(["serve", "checkpoint_dir=%s" % (tmp_path / "none"), "--port", str(busy.getsockname()[1])])
    assert code == 2 and "cannot listen on 127.0.0.1 port" in capsys.readouterr().err
