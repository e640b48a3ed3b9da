"""The example plugin in examples/toy-backend, installed as a real distribution (pip, into a
temporary folder) and run through the conformance kit from its own tests, as a third-party plugin
would be; `wanport backends` lists it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))
EXAMPLE = os.path.join(ROOT, "examples", "toy-backend")


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory):
    """An environment whose sys.path holds the toy backend installed by pip (no network: the build
    uses the setuptools already installed, and wanport/torch are not reinstalled)."""
    work = tmp_path_factory.mktemp("toy")
    src = str(work / "src")
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = str(work / "site")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "--no-input", "--target", target, src],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, "pip could not install the toy backend:\n" + out.stdout + out.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p))
    env.pop("WANPORT_TOY_DISABLE", None)
    return env


def test_the_toy_backend_passes_the_conformance_kit(toy_env):
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          os.path.join(EXAMPLE, "tests")], cwd=EXAMPLE, env=toy_env, capture_output=True, text=True,
                         timeout=600)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    # 3 implementations x 3 checks + plugin, spec, runtime: all run, none skipped
    assert passed and int(passed.group(1)) == 12 and "skipped" not in summary, summary


@pytest.fixture
def toy_on_path(toy_env, monkeypatch):
    """The installed toy backend visible to this process (entry points are read from sys.path at
    discovery), removed again afterwards."""
    monkeypatch.syspath_prepend(toy_env["PYTHONPATH"].split(os.pathsep)[0])
    monkeypatch.delenv("WANPORT_TOY_DISABLE", raising=False)
    yield
    for name in [m for m in sys.modules if m == "wanport_toy" or m.startswith("wanport_toy.")]:
        del sys.modules[name]


def test_the_toy_backend_is_listed_and_resolved(toy_on_path, capsys):
    from wanport.cli import main
    from wanport.models.dit import DiTConfig
    from wanport.models.dit.requirements import dit_requirements
    from wanport.precision import PRESETS
    from wanport.registry import discover, resolve_ops, select_backend

    assert main(["backends"]) == 0
    listing = capsys.readouterr().out
    assert "toy  [available]  device=cpu dist=gloo plugin=toy" in listing
    assert "online_softmax" in listing and "failed to load" not in listing
    reg = discover()
    assert select_backend(reg, "auto").name == "reference"  # a host backend is never picked automatically
    spec = select_backend(reg, "toy")
    cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1)
    t = resolve_ops(reg, spec, dit_requirements(cfg, PRESETS["official"], "cpu", ring_lse=True))
    assert [t.self_attention.impl, t.rms_norm.impl, t.gated_residual.impl, t.rotary.impl] == [
        "toy.online_softmax", "toy.vector_norm", "toy.addcmul", "reference.real_tables"]
