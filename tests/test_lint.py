"""The code base passes ``ruff check`` under the rules in pyproject.toml (lint + import order).

ruff comes with the ``test`` extra, so CI runs this for real; the test skips only where ruff is not
installed at all (a bare ``pytest`` without the extra)."""

from __future__ import annotations

import os
import subprocess

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))


def _ruff():
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        return None
    try:
        return find_ruff_bin()
    except FileNotFoundError:
        return None


def test_ruff_check_is_clean():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    out = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, "ruff check found problems (fix them, or `ruff check --fix --select I .` for " \
                                "import order):\n" + out.stdout + out.stderr


def test_ruff_is_in_the_test_extra():
    with open(os.path.join(ROOT, "setup.cfg"), encoding="utf-8") as f:
        cfg = f.read()
    extra = cfg.split("test =", 1)[1].split("\n\n", 1)[0].split("plot =", 1)[0]
    assert "ruff" in extra
