"""The conformance checks: each returns a list of problems (empty: conforming), every problem a
sentence that names the implementation (``backend.impl``) or backend it is about.

- :func:`check_signature`: the loaded callable's parameters against the op contract
  (``wanport.ops.contracts``), and ``out_dtype`` against what ``Constraints`` declares.
- :func:`check_outputs`: over the contract's shape/dtype space inside the declared constraints
  (:func:`~wanport.testing.cases.cases`), dtype and shape as the contract says and values within
  the declared tolerance of the reference evaluated in float64.
- :func:`check_refusals`: just outside each declared limit, the implementation refuses (raises) or
  is still right; silently wrong is a problem.
- :func:`check_backend` / :func:`check_runtime`: the ``BackendSpec`` and the started
  ``DeviceRuntime`` against the registry's protocol.
"""

from __future__ import annotations

import inspect
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch

from ..ops.contracts import CALL_SITES, CONTRACTS, OUT_DTYPE_KINDS
from ..ops.impl import OpImpl
from ..registry.backend import OPTIONAL_RUNTIME_MEMBERS, RUNTIME_MEMBERS, BackendSpec
from .cases import (
    KINDS_WITH_CASES,
    Case,
    bad_arguments,
    cases,
    clone_to,
    probes,
    reference_fn,
    rel_l2,
    to_float64,
    tolerance,
)

_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def contract_signature(kind: str) -> inspect.Signature:
    """The contract's call signature for ``kind`` (its Protocol's ``__call__`` without ``self``)."""
    sig = inspect.signature(CONTRACTS[kind].__call__)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _describe(p: inspect.Parameter) -> str:
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional-only", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.KEYWORD_ONLY: "keyword-only"}
    return "%s %r" % (kinds.get(p.kind, str(p.kind)), p.name)


def check_signature(impl: OpImpl, fn: Callable) -> List[str]:
    """The loaded callable takes exactly the contract's parameters, in order, of the same kinds and
    with the same defaults (extra parameters only with defaults); ``out_dtype`` is there if and only
    if the implementation declares ``Constraints(out_dtype=True)``."""
    who = "%s (%s)" % (impl.qualified_name, impl.kind)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        return ["%s: the loaded callable has no readable signature (%s)" % (who, exc)]
    params = list(sig.parameters.values())
    problems = []
    hidden = [p.name for p in params if p.kind in _VAR]
    if hidden:
        problems.append("%s: takes *%s instead of the contract's parameters: declare %s%s"
                        % (who, "/**".join(hidden), impl.kind, contract_signature(impl.kind)))
        return problems
    wanted = [p for p in contract_signature(impl.kind).parameters.values()
              if not (p.name == "out_dtype" and impl.kind in OUT_DTYPE_KINDS)]
    have = {p.name: p for p in params}
    positional = [p.name for p in params if p.kind != inspect.Parameter.KEYWORD_ONLY]
    want_positional = [p.name for p in wanted if p.kind != inspect.Parameter.KEYWORD_ONLY]
    for p in wanted:
        q = have.get(p.name)
        if q is None:
            problems.append("%s: missing the contract's %s" % (who, _describe(p)))
            continue
        if (q.kind == inspect.Parameter.KEYWORD_ONLY) != (p.kind == inspect.Parameter.KEYWORD_ONLY):
            problems.append("%s: %r is %s; the contract has it %s" % (who, p.name, _describe(q).split(" ")[0],
                                                                      _describe(p).split(" ")[0]))
        if p.default is not inspect.Parameter.empty and q.default != p.default:
            problems.append("%s: %r defaults to %r; the contract's default is %r" % (who, p.name, q.default, p.default))
    if positional[:len(want_positional)] != want_positional:
        problems.append("%s: positional parameters %s; the contract's are %s" % (who, positional, want_positional))
    contract_names = {p.name for p in wanted} | {"out_dtype"}
    for q in params:
        if q.name not in contract_names and q.default is inspect.Parameter.empty:
            problems.append("%s: extra parameter %r without a default (callers pass only the contract's)"
                            % (who, q.name))
    if impl.kind in OUT_DTYPE_KINDS:
        q = have.get("out_dtype")
        if impl.constraints.out_dtype and (q is None or q.kind != inspect.Parameter.KEYWORD_ONLY or q.default is not None):
            problems.append("%s: declares Constraints(out_dtype=True) but has no keyword-only out_dtype=None" % who)
        if not impl.constraints.out_dtype and q is not None:
            problems.append("%s: takes out_dtype but does not declare Constraints(out_dtype=True) (the resolver would "
                            "wrap it with a second cast)" % who)
    elif "out_dtype" in have and "out_dtype" not in {p.name for p in wanted}:
        problems.append("%s: %s has no out_dtype in its contract" % (who, impl.kind))
    return problems


def _outputs(result) -> Tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _compare(who: str, case: Case, result, declared: float, lossy: bool = False) -> List[str]:
    """``result`` of one call against the contract: dtype and shape from the reference run at the
    call's dtypes, values from the reference run in float64."""
    ref_fn = reference_fn(case.kind)
    expected = _outputs(ref_fn(*case.args, **case.kwargs))
    args64, kwargs64 = to_float64(case)
    exact = _outputs(ref_fn(*args64, **kwargs64))
    got = _outputs(result)
    if len(got) != len(expected):
        return ["%s [%s]: returned %d tensor(s); the contract returns %d" % (who, case.label, len(got), len(expected))]
    problems = []
    names = ("out", "lse") if len(expected) == 2 and "return_lse" in case.kwargs \
        else ("sum", "out") if case.kind == "add_layer_norm_modulate" else ("q", "k") if len(expected) == 2 else ("out",)
    for name, g, e, x in zip(names, got, expected, exact):
        if not isinstance(g, torch.Tensor):
            problems.append("%s [%s]: %s is %r, not a tensor" % (who, case.label, name, type(g).__name__))
            continue
        if g.dtype != e.dtype or tuple(g.shape) != tuple(e.shape):
            problems.append("%s [%s]: %s is %s %s; the contract gives %s %s" % (
                who, case.label, name, str(g.dtype).replace("torch.", ""), list(g.shape),
                str(e.dtype).replace("torch.", ""), list(e.shape)))
            continue
        bound, why = tolerance(declared, case, [g.dtype], lossy)
        err = rel_l2(g, x)
        if not err <= bound:
            problems.append("%s [%s]: %s is off the reference by %.3g (relative L2), over the bound %.3g (%s)"
                            % (who, case.label, name, err, bound, why))
    return problems


def _run(fn: Callable, case: Case, device) -> object:
    args, kwargs = clone_to(case, device)
    return fn(*args, **kwargs)


def check_outputs(impl: OpImpl, fn: Callable, device=None) -> List[str]:
    """Every case inside the declared constraints: output dtype/shape as the contract says, values
    within the tolerance of the float64 reference. An exception is a problem too."""
    device = torch.device("cpu") if device is None else device
    problems = []
    if impl.kind not in KINDS_WITH_CASES:
        return ["%s: the conformance kit has no cases for op kind %r yet (wanport/testing/cases.py)"
                % (impl.qualified_name, impl.kind)]
    todo = cases(impl.kind, impl.constraints)
    if not todo:
        return ["%s: its declared constraints leave no case of the contract to test (dtypes %s, head dims %s)"
                % (impl.qualified_name, impl.constraints.dtypes, impl.constraints.head_dims)]
    for case in todo:
        try:
            result = _run(fn, case, device)
        except Exception as exc:
            problems.append("%s [%s]: raised %s: %s (inside its declared constraints)"
                            % (impl.qualified_name, case.label, type(exc).__name__, exc))
            continue
        problems += _compare(impl.qualified_name, case, result, impl.tolerance, not impl.exact)
    return problems


def check_refusals(impl: OpImpl, fn: Callable, device=None) -> List[str]:
    """Just outside each declared limit the implementation raises, or is still right (the resolver
    never hands it such a call, but a direct call or a recipe override can): never silently wrong.
    And calls the contract rules out (kv lengths outside the keys, rotary tables of the wrong shape)
    raise ``ValueError``."""
    device = torch.device("cpu") if device is None else device
    problems = []
    for probe in probes(impl.kind, impl.constraints):
        try:
            result = _run(fn, probe.case, device)
        except Exception:
            continue  # refused, as declared
        wrong = _compare(impl.qualified_name, probe.case, result, impl.tolerance, not impl.exact)
        if wrong:
            problems.append("%s declares %s, yet accepted [%s] and returned a wrong result; raise ValueError for "
                            "calls outside the declared constraints. %s"
                            % (impl.qualified_name, probe.limit, probe.case.label, wrong[0].split(": ", 1)[-1]))
    for probe in bad_arguments(impl.kind, impl.constraints):
        try:
            _run(fn, probe.case, device)
        except ValueError:
            continue
        except Exception as exc:
            problems.append("%s: a call with %s raised %s: %s; the contract's error is ValueError (wanport.ops.checks)"
                            % (impl.qualified_name, probe.limit, type(exc).__name__, exc))
            continue
        problems.append("%s: accepted a call with %s; it must raise ValueError (check with wanport.ops.checks)"
                        % (impl.qualified_name, probe.limit))
    return problems


def load(impl: OpImpl) -> Tuple[Optional[Callable], List[str]]:
    """``impl.load()``, or the problem it raised."""
    try:
        fn = impl.load()
    except Exception as exc:
        return None, ["%s: load() raised %s: %s" % (impl.qualified_name, type(exc).__name__, exc)]
    if not callable(fn):
        return None, ["%s: load() returned %r, not a callable" % (impl.qualified_name, fn)]
    return fn, []


def check_impl(impl: OpImpl, device=None) -> List[str]:
    """Load ``impl`` and run all three checks on it (its availability is the caller's business)."""
    fn, problems = load(impl)
    if fn is None:
        return problems
    return check_signature(impl, fn) + check_outputs(impl, fn, device) + check_refusals(impl, fn, device)


def check_availability(impl_or_spec) -> Tuple[bool, str, List[str]]:
    """``(ok, why, problems)``: an availability check returns ``(bool, str)`` and never raises."""
    name = getattr(impl_or_spec, "qualified_name", None) or getattr(impl_or_spec, "name", "?")
    check = getattr(impl_or_spec, "available", None) or impl_or_spec.is_available
    try:
        out = check()
    except Exception as exc:
        return False, str(exc), ["%s: its availability check raised %s: %s (it must return (False, why) instead)"
                                 % (name, type(exc).__name__, exc)]
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], str)):
        return False, "", ["%s: its availability check returned %r, not (bool, str)" % (name, out)]
    ok, why = out
    if not ok and not why:
        return False, "", ["%s: unavailable without saying why (return (False, 'what is missing and how to get it'))"
                           % name]
    return bool(ok), why, []


def check_backend(spec: BackendSpec, impls: Sequence[OpImpl] = ()) -> List[str]:
    """The ``BackendSpec`` as the registry reads it, and the implementations it declares."""
    who = "backend %r" % spec.name
    problems = []
    if not spec.name or not spec.name.isidentifier():
        problems.append("%s: the name must be an identifier (recipes write `backend: NAME`)" % who)
    if not isinstance(spec.device_type, str) or not spec.device_type:
        problems.append("%s: device_type must be a torch device type string" % who)
    if not isinstance(spec.dist_backend, str) or not spec.dist_backend:
        problems.append("%s: dist_backend must be a torch.distributed backend name (nccl, hccl, gloo, ...)" % who)
    if not isinstance(spec.env_defaults, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in spec.env_defaults.items()):
        problems.append("%s: env_defaults must map names to strings" % who)
    problems += check_availability(spec)[2]
    try:
        versions = spec.versions()
        if not isinstance(versions, Mapping):
            problems.append("%s: versions() returned %r, not a mapping" % (who, versions))
    except Exception as exc:
        problems.append("%s: versions() raised %s: %s" % (who, type(exc).__name__, exc))
    for impl in impls:
        sites = {s for s, k in CALL_SITES.items() if k == impl.kind}
        if impl.default_sites is not None and not set(impl.default_sites) <= sites:
            problems.append("%s: default_sites %s are not call sites of %s (those are: %s)"
                            % (impl.qualified_name, sorted(set(impl.default_sites) - sites), impl.kind,
                               ", ".join(sorted(sites))))
        if impl.exact is False and impl.tolerance <= 0:
            problems.append("%s: lossy, so it must declare its tolerance" % impl.qualified_name)
        if impl.constraints.device_types is not None and spec.device_type not in impl.constraints.device_types \
                and impl.backend == spec.name:
            problems.append("%s: runs on %s, never on its backend's device type %r"
                            % (impl.qualified_name, sorted(impl.constraints.device_types), spec.device_type))
    return problems


def check_runtime(runtime, spec: Optional[BackendSpec] = None) -> List[str]:
    """A started ``DeviceRuntime`` has every member the core reads and each answers in kind."""
    who = "runtime of %s" % (spec.name if spec is not None else type(runtime).__name__)
    missing = [m for m in RUNTIME_MEMBERS if not hasattr(runtime, m)]
    if missing:
        return ["%s: missing %s (wanport.registry.DeviceRuntime)" % (who, ", ".join(missing))]
    problems = []

    def call(name, *args):
        try:
            return getattr(runtime, name)(*args), None
        except Exception as exc:
            problems.append("%s: %s() raised %s: %s" % (who, name, type(exc).__name__, exc))
            return None, exc

    if spec is not None and runtime.device_type != spec.device_type:
        problems.append("%s: device_type %r, the backend declares %r" % (who, runtime.device_type, spec.device_type))
    for attr in ("device_type", "peak_memory_kind"):
        if not isinstance(getattr(runtime, attr), str) or not getattr(runtime, attr):
            problems.append("%s: %s must be a non-empty string" % (who, attr))
    dev, _ = call("device")
    if dev is not None and not isinstance(dev, torch.device):
        problems.append("%s: device() returned %r, not a torch.device" % (who, dev))
    n, _ = call("device_count")
    if n is not None and not (isinstance(n, int) and n >= 1):
        problems.append("%s: device_count() returned %r, not an int >= 1" % (who, n))
    call("set_device", 0)
    call("manual_seed", 0)
    call("synchronize")
    call("reset_peak_memory")
    call("empty_cache")
    start, _ = call("event")
    end, _ = call("event")
    if start is not None and end is not None:
        try:
            start.record()
            end.record()
            ms = start.elapsed_ms(end)
            if not isinstance(ms, float) or ms < 0:
                problems.append("%s: event elapsed_ms() returned %r, not a float >= 0" % (who, ms))
        except Exception as exc:
            problems.append("%s: timing events failed: %s: %s" % (who, type(exc).__name__, exc))
    peak, _ = call("peak_memory_bytes")
    if peak is not None and not isinstance(peak, int):
        problems.append("%s: peak_memory_bytes() returned %r, not an int or None" % (who, peak))
    info, _ = call("memory_info")
    if info is not None and not (isinstance(info, tuple) and len(info) == 2 and 0 <= info[0] <= info[1]):
        problems.append("%s: memory_info() returned %r, not (free, total) or None" % (who, info))
    desc, _ = call("describe")
    if desc is not None and (not isinstance(desc, str) or not desc):
        problems.append("%s: describe() must return a non-empty string" % who)
    for name in OPTIONAL_RUNTIME_MEMBERS:
        if not hasattr(runtime, name):
            continue
        got, exc = call(name)
        if exc is not None:
            continue
        if name == "total_memory_bytes" and got is not None and not (isinstance(got, int) and got > 0):
            problems.append("%s: total_memory_bytes() returned %r, not a positive int or None" % (who, got))
        if name == "native_bf16_matmul" and not (isinstance(got, tuple) and len(got) == 2):
            problems.append("%s: native_bf16_matmul() returned %r, not (bool, why)" % (who, got))
    return problems
