"""``wanport make-tiny`` writes atomically and refuses bad targets with one message (exit 2).

Most tests replace the (slow) model writers by a fast fake that writes a few files per layout:
what is tested here is where and how the folder is written, not its content."""

from __future__ import annotations

import json
import os

import pytest

import wanport.checkpoints.tiny as tiny
from wanport.checkpoints.tiny import MARKER, is_tiny_checkpoint, make_tiny
from wanport.cli import main
from wanport.errors import ConfigError


def _fake_writer(fail_after=None):
    def write(directory, layout, seed, heads):
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"layout": layout}, f)
        if layout.endswith("a14b"):
            os.mkdir(os.path.join(directory, "high_noise_model"))
        if fail_after is not None:
            raise fail_after
        with open(os.path.join(directory, MARKER), "w") as f:
            json.dump({"layout": layout, "tiny_format": tiny.TINY_FORMAT, "dit": {"num_heads": heads}}, f)
    return write


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(tiny, "_write_layout", _fake_writer())


def _siblings(path):
    head, tail = os.path.split(str(path))
    return [n for n in os.listdir(head) if n.startswith("." + tail + ".")]


def test_interrupt_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    monkeypatch.setattr(tiny, "_write_layout", _fake_writer(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        make_tiny(str(target), "wan2.1-t2v")
    assert not target.exists() and not _siblings(target)


def test_heads_option_is_checked_and_a_folder_with_other_heads_is_rewritten(tmp_path, fast):
    cfg = tiny.tiny_dit_config("wan2.1-t2v", 4)
    assert (cfg.num_heads, cfg.dim, cfg.ffn_dim, cfg.head_dim) == (4, 512, 1024, 128)
    assert tiny.tiny_dit_config("wan2.2-t2v-a14b").num_heads == 2  # the default stays 2 heads of 128
    target = str(tmp_path / "ck")
    with pytest.raises(ConfigError, match="--heads must be a positive integer"):
        make_tiny(target, "wan2.1-t2v", heads=0)
    assert not os.path.exists(target)
    assert main(["make-tiny", target, "--heads", "4"]) == 0 and tiny.tiny_heads(target) == 4
    assert make_tiny(target, "wan2.1-t2v", heads=4, if_missing=True) is False
    assert make_tiny(target, "wan2.1-t2v", if_missing=True) and tiny.tiny_heads(target) == 2


def test_interrupt_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fast):
    target = tmp_path / "ck"
    assert make_tiny(str(target), "wan2.1-t2v")
    monkeypatch.setattr(tiny, "_write_layout", _fake_writer(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        make_tiny(str(target), "wan2.1-t2v")
    assert is_tiny_checkpoint(str(target)) == "wan2.1-t2v" and not _siblings(target)


def test_write_error_is_one_message(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    monkeypatch.setattr(tiny, "_write_layout", _fake_writer(OSError(28, "No space left on device")))
    with pytest.raises(ConfigError, match="No space left on device.*nothing was changed"):
        make_tiny(str(target), "wan2.1-t2v")
    assert not target.exists() and not _siblings(target)


def test_if_missing_never_mixes_layouts(tmp_path, fast):
    target = str(tmp_path / "ck")
    assert make_tiny(target, "wan2.2-t2v-a14b")
    assert make_tiny(target, "wan2.2-t2v-a14b", if_missing=True) is False
    with pytest.raises(ConfigError, match="holds a tiny wan2.2-t2v-a14b checkpoint, not wan2.1-t2v"):
        make_tiny(target, "wan2.1-t2v", if_missing=True)
    assert is_tiny_checkpoint(target) == "wan2.2-t2v-a14b"
    # without --if-missing the whole folder is replaced: nothing of the old layout stays
    assert make_tiny(target, "wan2.1-t2v")
    assert is_tiny_checkpoint(target) == "wan2.1-t2v"
    assert not os.path.exists(os.path.join(target, "high_noise_model"))


def test_partial_folder_of_an_older_version_is_replaced(tmp_path, fast):
    target = tmp_path / "ck"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"x" * 100)
    (target / "google").mkdir()
    assert make_tiny(str(target), "wan2.1-t2v")
    assert is_tiny_checkpoint(str(target)) == "wan2.1-t2v"


def test_foreign_folder_is_refused(tmp_path, fast):
    target = tmp_path / "ck"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no tiny checkpoint"):
        make_tiny(str(target), "wan2.1-t2v")
    assert (target / "notes.txt").read_text() == "mine"


def test_stale_staging_of_a_killed_run_is_removed(tmp_path, fast):
    target = tmp_path / "ck"
    stale = tmp_path / (".ck.tmp-%d-abcd1234" % 2 ** 22)  # beyond pid_max's default: no such process
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    assert make_tiny(str(target), "wan2.1-t2v")
    assert not stale.exists()


@pytest.mark.parametrize("kind", ["file", "devnull", "under-a-file"])
def test_bad_target_one_message_exit_2(kind, tmp_path, capsys, fast):
    if kind == "file":
        target = tmp_path / "f"
        target.write_text("x")
        fragment = "exists and is not a folder"
    elif kind == "devnull":
        if not os.path.exists(os.devnull) or os.path.isdir(os.devnull):
            pytest.skip("no null device file")
        target = os.devnull
        fragment = "exists and is not a folder"
    else:
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "sub" / "ck"
        fragment = "cannot create the folder"
    assert main(["make-tiny", str(target)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_parent(tmp_path, capsys, fast):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert main(["make-tiny", str(parent / "ck")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        parent.chmod(0o700)


def test_run_sh_uses_the_marker_and_if_missing():
    """run.sh writes a missing tiny checkpoint exactly as make-tiny defines complete: the marker
    inside a renamed folder; its calls never replace another layout (--if-missing)."""
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "run.sh")).read()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    calls = [i for i, line in enumerate(lines) if "wanport make-tiny" in line]
    assert len(calls) == 1  # one function writes every tiny checkpoint
    call, check = lines[calls[0]], lines[calls[0] - 1] + lines[calls[0]]
    assert call.rstrip(" ;)").endswith("--if-missing") and 'cd "$repo"' in check  # in the repository, never mixed
    assert "/%s" % MARKER in check
    assert "'\"tiny_format\": %d'" % tiny.TINY_FORMAT in check  # the current format, as make-tiny writes it


def test_cli_if_missing_heals_an_interrupted_older_folder(tmp_path, capsys, fast):
    target = tmp_path / "ckpts" / "tiny-wan2.1-t2v"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # what an older make-tiny left when interrupted
    assert main(["make-tiny", str(target), "--model", "wan2.1-t2v", "--if-missing"]) == 0
    assert is_tiny_checkpoint(str(target)) == "wan2.1-t2v"
    assert main(["make-tiny", str(target), "--model", "wan2.1-t2v", "--if-missing"]) == 0
    assert "kept existing" in capsys.readouterr().out


def test_if_missing_rewrites_an_older_format(tmp_path, fast):
    """A tiny folder of an older wanport (64-wide T5, not loadable by the official WanModel) is
    rewritten by --if-missing; the current format is kept."""
    target = tmp_path / "ck"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / MARKER).write_text(json.dumps({"layout": "wan2.1-t2v", "seed": 0}))  # no tiny_format: format 1
    assert tiny.tiny_format(str(target)) == 1
    assert make_tiny(str(target), "wan2.1-t2v", if_missing=True)
    assert tiny.tiny_format(str(target)) == tiny.TINY_FORMAT
    assert make_tiny(str(target), "wan2.1-t2v", if_missing=True) is False
