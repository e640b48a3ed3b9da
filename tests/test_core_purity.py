"""The core never names a device type, imports a vendor package or calls torch.cuda.*.

Checked on the syntax tree of every module under core/ (comments and docstrings are free to
mention devices; code is not).
"""

from __future__ import annotations

import ast
import os

import pytest

CORE = os.path.join(os.path.dirname(__file__), os.pardir, "core")
DEVICE_NAMES = {"cuda", "npu", "mps", "xpu", "hpu", "xla", "musa", "mlu"}
VENDOR_MODULES = {"torch_npu", "triton", "flash_attn", "flash_attn_interface", "sageattention", "apex",
                  "xformers", "mindiesd", "torch_mlu", "intel_extension_for_pytorch"}


def _modules():
    for root, _, files in os.walk(CORE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(root, name), CORE)


def _docstring_nodes(tree):
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _violations(path):
    with open(os.path.join(CORE, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    docs = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        where = "%s:%d" % (path, getattr(node, "lineno", 0))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value.strip().lower()
            if text.split(":")[0] in DEVICE_NAMES:
                found.append("%s names device type %r" % (where, node.value))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
            if node.attr in DEVICE_NAMES or node.attr == "backends":
                found.append("%s uses torch.%s" % (where, node.attr))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in VENDOR_MODULES:
                    found.append("%s imports %s" % (where, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in VENDOR_MODULES:
                found.append("%s imports from %s" % (where, node.module))
        elif isinstance(node, ast.Compare):
            for side in [node.left] + list(node.comparators):
                if isinstance(side, ast.Attribute) and side.attr == "type":
                    found.append("%s compares a .type (device-type branching)" % where)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DEVICE_NAMES:
            found.append("%s calls .%s()" % (where, node.func.attr))
    return found


def test_core_has_modules():
    assert len(list(_modules())) > 20


@pytest.mark.parametrize("path", sorted(_modules()))
def test_core_module_is_device_agnostic(path):
    assert _violations(path) == []


def test_checker_catches_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\nimport torch_npu\nfrom triton import jit\n"
        "x = torch.cuda.is_available()\nif t.device.type == 'npu':\n    y = t.cuda()\n"
    )
    global CORE
    old, CORE = CORE, str(tmp_path)
    try:
        found = _violations("bad.py")
    finally:
        CORE = old
    text = "\n".join(found)
    for needle in ("imports torch_npu", "imports from triton", "torch.cuda", "names device type 'npu'",
                   "compares a .type", "calls .cuda()"):
        assert needle in text
