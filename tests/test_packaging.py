"""Packaging: the setup.cfg package list covers the tree; a plain (non-editable) install works."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import textwrap

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
ROOTS = {"wanport": "core", "wanport_cuda": "backends/cuda", "wanport_ascend": "backends/ascend"}


def _tree_packages():
    found = set()
    for pkg, folder in ROOTS.items():
        base = os.path.join(REPO, folder)
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" in files:
                rel = os.path.relpath(root, base)
                found.add(pkg if rel == "." else pkg + "." + rel.replace(os.sep, "."))
    return found


def _declared():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    return {p.strip() for p in cfg["options"]["packages"].split("\n") if p.strip()}, cfg


def test_package_list_matches_tree():
    declared, cfg = _declared()
    assert declared == _tree_packages()
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line)
    assert {k.strip(): v.strip() for k, v in mapping.items()} == ROOTS
    eps = cfg["options.entry_points"]["wanport.backends"]
    assert "cuda = wanport_cuda.plugin" in eps and "ascend = wanport_ascend.plugin" in eps


def test_non_editable_install_imports_every_subpackage(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), REPO], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(p for p in os.listdir(wheels) if p.endswith(".whl"))
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                           str(wheels / wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    code = textwrap.dedent("""
        import importlib, os, sys
        target = sys.argv[1]
        names = sys.argv[2:]
        for name in names:
            mod = importlib.import_module(name)
            assert os.path.abspath(mod.__file__).startswith(target), (name, mod.__file__)
        from wanport.registry import discover
        reg = discover()
        assert {"reference", "cuda", "ascend"} <= set(reg.backends), reg.backends
        print("imported", len(names))
    """)
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code, str(target)] + sorted(_tree_packages()),
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "imported %d" % len(_tree_packages()) in run.stdout


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    test_cmd = block[1].split("#")[0].strip()
    assert "pytest" in test_cmd
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read().splitlines()
    assert test_cmd in ci
    assert ci.index("python -m pip install -q torch==2.13.0") < ci.index(test_cmd)
