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
