"""The conformance kit (wanport.testing) finds what it is there to find: each deliberately broken
implementation, runtime or plugin below fails it with a message naming the culprit; the reference
backend passes it (as pytest tests, through BackendConformance)."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap

import pytest
import torch

from wanport.ops.impl import Constraints, OpImpl
from wanport.reference.attention import attention_math
from wanport.reference.rms_norm import rms_norm
from wanport.reference.runtime import HostRuntime
from wanport.registry import discover
from wanport.testing import (
    BackendConformance,
    check_backend,
    check_impl,
    check_outputs,
    check_refusals,
    check_runtime,
    check_signature,
)

_FLOATS = frozenset({torch.float32, torch.bfloat16})


class TestReferenceConformance(BackendConformance):
    """The ground truth passes its own kit: contracts, signatures, refusals (reference.sdpa has no LSE)."""

    backend = "reference"


def impl(kind, name, fn, tolerance=1e-2, **constraints):
    return OpImpl(kind, name, "broken", lambda: fn, Constraints(**constraints), tolerance=tolerance)


# ------------------------------------------------------------------ implementations


def test_a_correct_implementation_passes():
    def attention(q, k, v, *, scale, kv_lens=None, return_lse=False):
        return attention_math(q, k, v, scale=scale, kv_lens=kv_lens, return_lse=return_lse)

    assert check_impl(impl("attention", "fine", attention, dtypes=_FLOATS, lse=True)) == []


def test_wrong_output_fails_with_the_implementation_named():
    def attention(q, k, v, *, scale, kv_lens=None, return_lse=False):  # scale applied twice
        return attention_math(q, k, v, scale=scale * scale, kv_lens=kv_lens, return_lse=return_lse)

    problems = check_outputs(impl("attention", "double_scale", attention, dtypes=_FLOATS, lse=True), attention)
    assert problems and all(p.startswith("broken.double_scale [") for p in problems)
    assert "off the reference by" in problems[0] and "over the bound" in problems[0]
    f32 = [p for p in problems if p.startswith("broken.double_scale [float32")]
    assert f32 and "float32 bound" in f32[0]  # float32 calls: the arithmetic bound, not the declared one


def test_a_bf16_rounding_too_many_exceeds_the_float32_bound_but_not_the_declared_tolerance():
    def norm(x, weight, eps, *, out_dtype=None):  # rounds through bfloat16 even for float32 input
        y = rms_norm(x.bfloat16(), weight, eps).to(torch.promote_types(x.dtype, weight.dtype))
        return y if out_dtype is None else y.to(out_dtype)

    problems = check_outputs(impl("rms_norm", "bf16_inside", norm, dtypes=_FLOATS, out_dtype=True), norm)
    assert problems and all("float32" in p.split("]")[0] for p in problems), problems


def test_wrong_dtype_or_shape_is_named():
    def norm(x, weight, eps, *, out_dtype=None):
        return rms_norm(x, weight, eps).float()  # ignores out_dtype and x's dtype

    problems = check_outputs(impl("rms_norm", "always_f32", norm, dtypes=_FLOATS, out_dtype=True), norm)
    assert any("out is float32" in p and "the contract gives bfloat16" in p for p in problems), problems


def test_accepting_what_it_declares_it_refuses_fails():
    def attention(q, k, v, *, scale, kv_lens=None, return_lse=False):  # a kernel that cannot mask: ignores kv_lens
        return attention_math(q, k, v, scale=scale, return_lse=return_lse)

    broken = impl("attention", "no_mask", attention, dtypes=_FLOATS, kv_lens=False)
    assert check_outputs(broken, attention) == []  # inside its declaration it is right
    problems = check_refusals(broken, attention)
    assert any(p.startswith("broken.no_mask declares kv_lens=False, yet accepted") for p in problems), problems

    def norm(x, weight, eps, *, out_dtype=None):  # declares float32 only, computes bf16 in bf16 statistics
        y = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * weight.to(x.dtype)
        return y if out_dtype is None else y.to(out_dtype)

    problems = check_refusals(impl("rms_norm", "f32_only", norm, dtypes=frozenset({torch.float32}), out_dtype=True),
                              norm)
    assert any("broken.f32_only declares dtypes (does not take" in p for p in problems), problems


def test_refusing_as_declared_and_right_outside_both_pass():
    def attention(q, k, v, *, scale, kv_lens=None, return_lse=False):
        if return_lse:
            raise ValueError("no log-sum-exp here")
        return attention_math(q, k, v, scale=scale, kv_lens=kv_lens)

    assert check_refusals(impl("attention", "no_lse", attention, dtypes=_FLOATS, lse=False), attention) == []


def test_contract_argument_errors_must_raise_value_error():
    def attention(q, k, v, *, scale, kv_lens=None, return_lse=False):  # clamps bad lengths silently
        lens = None if kv_lens is None else [max(1, min(n, k.shape[1])) for n in kv_lens][:q.shape[0]]
        return attention_math(q, k, v, scale=scale, kv_lens=lens, return_lse=return_lse)

    problems = check_refusals(impl("attention", "clamps", attention, dtypes=_FLOATS, lse=True), attention)
    assert any("broken.clamps: accepted a call with kv_lens outside [1, keys]" in p for p in problems), problems


def test_signatures_against_the_contract():
    def star(*args, **kwargs):
        return attention_math(*args, **kwargs)

    def renamed(q, k, v, *, softmax_scale, kv_lens=None, return_lse=False):
        return attention_math(q, k, v, scale=softmax_scale, kv_lens=kv_lens, return_lse=return_lse)

    def positional_flag(q, k, v, scale, kv_lens=None, return_lse=True):
        return attention_math(q, k, v, scale=scale, kv_lens=kv_lens, return_lse=return_lse)

    assert "broken.star (attention): takes *args/**kwargs" in check_signature(impl("attention", "star", star), star)[0]
    problems = check_signature(impl("attention", "renamed", renamed), renamed)
    assert any("missing the contract's keyword-only 'scale'" in p for p in problems)
    assert any("extra parameter 'softmax_scale' without a default" in p for p in problems)
    problems = check_signature(impl("attention", "flags", positional_flag), positional_flag)
    assert any("'scale' is positional; the contract has it keyword-only" in p for p in problems)
    assert any("'return_lse' defaults to True; the contract's default is False" in p for p in problems)
    no_out = impl("rms_norm", "no_out", lambda x, weight, eps: rms_norm(x, weight, eps), out_dtype=True)
    assert any("declares Constraints(out_dtype=True) but has no keyword-only out_dtype" in p
               for p in check_signature(no_out, no_out.load()))
    assert check_signature(impl("rms_norm", "ref", rms_norm, out_dtype=True), rms_norm) == []


def test_a_load_that_raises_is_named():
    def load():
        raise ImportError("vendor kernel library missing")

    broken = OpImpl("rms_norm", "unloadable", "broken", load)
    assert check_impl(broken) == ["broken.unloadable: load() raised ImportError: vendor kernel library missing"]


# ------------------------------------------------------------------ runtime and backend


def test_a_runtime_missing_a_member_is_named():
    class NoKind(HostRuntime):
        peak_memory_kind = None

    problems = check_runtime(NoKind())
    assert problems == ["runtime of NoKind: peak_memory_kind must be a non-empty string"]

    class Partial:
        device_type = "cpu"

    assert "runtime of Partial: missing peak_memory_kind, device, device_count" in check_runtime(Partial())[0]
    assert check_runtime(HostRuntime()) == []


def test_a_backend_whose_availability_check_raises_is_named():
    spec = discover(include_entry_points=False).backends["reference"]

    def boom():
        raise RuntimeError("driver exploded")

    problems = check_backend(dataclasses.replace(spec, is_available=boom))
    assert problems == ["reference: its availability check raised RuntimeError: driver exploded (it must return "
                        "(False, why) instead)"]
    silent = check_backend(dataclasses.replace(spec, is_available=lambda: (False, "")))
    assert silent and "unavailable without saying why" in silent[0]
    misplaced = OpImpl("attention", "fast", "reference", lambda: None, default_sites=frozenset({"rotary"}))
    lossy = OpImpl("attention", "int8", "reference", lambda: None, exact=False)
    assert check_backend(spec, [misplaced, lossy]) == [
        "reference.fast: default_sites ['rotary'] are not call sites of attention (those are: cross_attention, "
        "self_attention)", "reference.int8: lossy, so it must declare its tolerance"]


# ------------------------------------------------------------------ a misspelled hook


def _install_plugin(root, name, source, entry):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, name + ".py"), "w") as f:
        f.write(textwrap.dedent(source))
    info = os.path.join(root, "%s-1.0.dist-info" % name)
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[wanport.backends]\n%s = %s\n" % (entry, name))


MISSPELLED = """
from wanport.registry import BackendSpec, hookimpl

@hookimpl
def wanport_backend():  # misspelled: the hook is wanport_backends
    from wanport.reference.runtime import HostRuntime
    return [BackendSpec(name="typo", device_type="cpu", dist_backend="gloo", start=HostRuntime)]
"""

UNMARKED = """
def wanport_op_impls():  # @hookimpl forgotten: pluggy would never call it
    return []
"""


def test_a_misspelled_or_unmarked_hook_is_that_plugins_failure(tmp_path, monkeypatch):
    _install_plugin(str(tmp_path), "wanport_typo_plugin", MISSPELLED, "typo")
    _install_plugin(str(tmp_path), "wanport_unmarked_plugin", UNMARKED, "unmarked")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = discover()
    failures = {f.plugin: f.error for f in registry.failures}
    assert set(failures) == {"typo", "unmarked"}
    assert "unknown hook 'wanport_backend'" in failures["typo"] and "wanport_backends" in failures["typo"]
    assert failures["unmarked"] == ("wanport_op_impls not marked with @hookimpl (from wanport.registry "
                                    "import hookimpl)")
    assert {"reference", "cuda", "ascend"} <= set(registry.backends) and "typo" not in registry.backends

    class TestTypo(BackendConformance):
        backend = "typo"
        _registry = registry

    with pytest.raises(pytest.fail.Exception, match="backend 'typo' not discovered.*typo: unknown hook 'wanport_backend'"):
        TestTypo().test_plugin_registered_cleanly()
    for mod in ("wanport_typo_plugin", "wanport_unmarked_plugin"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
