"""What plugins build on: lazy loaders, one ranking table per backend, constraints that give every
reason, the shared argument checks, the runtime protocol's declared members."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from wanport.ops import check_kv_lens, check_rotary_tables
from wanport.ops.impl import AtLoad, Constraints, OpImpl, Requirements, lazy, ranked
from wanport.registry import discover
from wanport.registry.backend import RUNTIME_MEMBERS, DeviceRuntime


def test_lazy_imports_at_load_and_calls_factories(tmp_path, monkeypatch):
    pkg = tmp_path / "lazy_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "kernels.py").write_text("def op(x):\n    return x + 1\n\ndef make(n, m=0):\n    return lambda x: x * n + m\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load = lazy(".kernels:op", package="lazy_probe_pkg")
    assert "lazy_probe_pkg.kernels" not in sys.modules  # declared, not imported
    assert load()(1) == 2 and "lazy_probe_pkg.kernels" in sys.modules
    seen = []
    made = lazy("lazy_probe_pkg.kernels:make", 3, AtLoad(lambda: seen.append(1) or 4))
    assert not seen  # computed when the implementation loads, not when it is declared
    assert made()(2) == 10 and seen == [1]
    with pytest.raises(ValueError, match="module:attr"):
        lazy("lazy_probe_pkg.kernels")
    for name in ("lazy_probe_pkg", "lazy_probe_pkg.kernels"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_each_bundled_backend_ranks_its_implementations_in_one_table():
    registry = discover()
    for backend, module in (("reference", "wanport.reference.plugin"), ("cuda", "wanport_cuda.plugin"),
                            ("ascend", "wanport_ascend.plugin")):
        table = importlib.import_module(module).PRIORITY
        impls = [i for i in registry.impls if i.backend == backend]
        unranked = [i.qualified_name + " (" + i.kind + ")" for i in impls if (i.kind, i.name) not in table]
        assert not unranked, "add these to PRIORITY in %s: %s" % (module, unranked)
        assert all(i.priority == table[(i.kind, i.name)] for i in impls)


def test_ranked_takes_priorities_from_the_table():
    a = OpImpl("rms_norm", "a", "x", lambda: None, priority=3)
    b = OpImpl("rms_norm", "b", "x", lambda: None, priority=7)
    assert [i.priority for i in ranked({("rms_norm", "a"): 9}, [a, b])] == [9, 7]


def test_constraints_check_lists_every_reason():
    c = Constraints(dtypes=frozenset({torch.bfloat16}), max_head_dim=64, lse=False, kv_lens=False,
                    device_types=frozenset({"npu"}))
    ok, why = c.check(Requirements(device_type="cpu", dtypes=frozenset({torch.float32}), head_dim=128, lse=True,
                                   kv_lens=True))
    assert not ok
    assert why.split("; ") == ["runs on npu, not on device type 'cpu'",
                               "dtype float32 not supported (supports bfloat16)", "head dim 128 > 64",
                               "cannot return the log-sum-exp (needed for ring attention)",
                               "cannot mask padded keys (kv_lens)"]
    assert Constraints().check(Requirements(device_type="cpu", lse=False)) == (True, "")
    many = Constraints(head_dims=frozenset(range(8, 513, 8)))
    assert many.check(Requirements(device_type="cpu", head_dim=12))[1] == "head dim 12 not in 8..512 step 8"


def test_shared_argument_checks():
    assert check_kv_lens(None, 2, 10) is None
    assert check_kv_lens([10, 10], 2, 10) is None  # every key valid: nothing to mask
    assert check_kv_lens((7, 10), 2, 10) == (7, 10)
    for bad, msg in (([0, 10], r"outside \[1, 10\]"), ([11, 3], "outside"), ([5], "1 entries for batch 2")):
        with pytest.raises(ValueError, match=msg):
            check_kv_lens(bad, 2, 10)
    with pytest.raises(ValueError, match="host ints"):
        check_kv_lens(torch.tensor([5, 5]), 2, 10)
    check_rotary_tables(torch.zeros(6, 8), torch.zeros(6, 8), 6, 8)
    with pytest.raises(ValueError, match=r"rotary tables must be \[S, D\] = \[6, 8\]; got cos \(5, 8\)"):
        check_rotary_tables(torch.zeros(5, 8), torch.zeros(5, 8), 6, 8)


def test_the_runtime_protocol_declares_what_the_core_reads():
    declared = set(getattr(DeviceRuntime, "__annotations__", {})) | {
        n for n in vars(DeviceRuntime) if not n.startswith("_")}
    assert set(RUNTIME_MEMBERS) <= declared
    assert "peak_memory_kind" in DeviceRuntime.__annotations__
