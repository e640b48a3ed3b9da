"""The conformance kit as pytest tests: subclass :class:`BackendConformance` in a test module.

.. code-block:: python

    from wanport.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mybackend"

pytest then collects, for every op implementation the registry holds for ``backend``, one test per
check (signature, outputs, refusals), plus the backend's spec, its runtime and its plugin's
registration. An implementation or runtime that is not available here is skipped with its own
reason. ``contexts`` runs everything once per named context manager (the Ascend tests run each
release of the emulated Ascend ops); ``registry()`` may be overridden to test a registry built by hand.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

import pytest

from ..ops.impl import OpImpl
from ..registry import Registry, discover
from .cases import KINDS_WITH_CASES
from .checks import check_backend, check_impl, check_outputs, check_refusals, check_runtime, check_signature, load

CHECKS = {"signature": check_signature, "outputs": check_outputs, "refusals": check_refusals}


def _fail(problems: List[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class BackendConformance:
    """Base class of a backend's conformance tests (not collected itself: its name has no Test)."""

    #: the backend under test (``BackendSpec.name``); implementations of this backend are checked
    backend: str = ""
    #: named contexts to run every check in (default: one, doing nothing)
    contexts: Dict[str, Callable[[], ContextManager]] = {"": contextlib.nullcontext}
    _registry: Optional[Registry] = None

    @classmethod
    def registry(cls) -> Registry:
        if cls.__dict__.get("_registry") is None:
            cls._registry = discover()
        return cls._registry

    @classmethod
    def impls(cls) -> List[OpImpl]:
        return [i for i in cls.registry().impls if i.backend == cls.backend]

    def pytest_generate_tests(self, metafunc):
        ctx = list(self.contexts)
        if "impl" in metafunc.fixturenames:
            impls = self.impls()
            params = [(c, i) for c in ctx for i in impls]
            ids = ["-".join(x for x in (c, i.kind, i.name) if x) for c, i in params]
            metafunc.parametrize("context,impl", params or [pytest.param(None, None, marks=pytest.mark.skip(
                reason="backend %r declares no op implementation" % self.backend))], ids=ids or None)
        elif "context" in metafunc.fixturenames:
            metafunc.parametrize("context", ctx, ids=[c or "default" for c in ctx])

    # ------------------------------------------------------------------ helpers

    def _spec(self):
        spec = self.registry().backends.get(self.backend)
        if spec is None:
            found = ", ".join(sorted(self.registry().backends))
            failures = "; ".join("%s: %s" % (f.plugin, f.error) for f in self.registry().failures)
            pytest.fail("backend %r not discovered (found: %s)%s" % (self.backend, found,
                                                                     "; plugin failures: " + failures if failures else ""),
                        pytrace=False)
        return spec

    def _device_or_skip(self, spec):
        ok, why = spec.availability()
        if not ok:
            pytest.skip("backend %s unavailable here: %s" % (spec.name, why))
        return spec.start()

    def _loaded(self, impl: OpImpl) -> Tuple[Callable, object]:
        spec = self._spec()
        runtime = self._device_or_skip(spec) if impl.backend == spec.name else None
        ok, why = impl.available()
        if not ok:
            pytest.skip("%s unavailable here: %s" % (impl.qualified_name, why))
        fn, problems = load(impl)
        _fail(problems)
        return fn, runtime.device() if runtime is not None else None

    # ------------------------------------------------------------------ the tests

    def test_plugin_registered_cleanly(self):
        spec = self._spec()
        plugin = self.registry().plugin_of.get(spec.name)
        _fail(["plugin %s (%s) failed: %s" % (f.plugin, f.target, f.error) for f in self.registry().failures
               if f.plugin == plugin])

    def test_backend_spec(self, context):
        with self.contexts[context]():
            _fail(check_backend(self._spec(), self.impls()))

    def test_runtime(self, context):
        with self.contexts[context]():
            spec = self._spec()
            runtime = self._device_or_skip(spec)
            _fail(check_runtime(runtime, spec))

    def test_signature(self, context, impl):
        with self.contexts[context]():
            fn, _ = self._loaded(impl)
            _fail(check_signature(impl, fn))

    def test_outputs_match_the_reference(self, context, impl):
        if impl.kind not in KINDS_WITH_CASES:
            pytest.skip("the conformance kit has no cases for op kind %r yet: add them to wanport/testing/cases.py"
                        % impl.kind)
        with self.contexts[context]():
            fn, device = self._loaded(impl)
            _fail(check_outputs(impl, fn, device))

    def test_refuses_what_it_declares(self, context, impl):
        with self.contexts[context]():
            fn, device = self._loaded(impl)
            _fail(check_refusals(impl, fn, device))


__all__ = ["BackendConformance", "CHECKS", "check_impl"]
