"""Pick the backend and one implementation per call site; freeze the result.

Resolution runs once, at pipeline start. The model then calls the resolved callables
directly: no pluggy call and no dispatch decision per op.
"""

from __future__ import annotations

import difflib
import os
from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import BackendError
from ..ops.composites import COMPOSERS, with_out_dtype
from ..ops.contracts import (
    CALL_SITES,
    COMPOSABLE,
    OP_KINDS,
    OPTIONAL_SITES,
    OUT_DTYPE_KINDS,
    SCHEME_KINDS,
    VAE_CALL_SITES,
)
from ..ops.impl import OpImpl, Requirements
from ..ops.table import OpTable, ResolvedOp
from .backend import BackendSpec
from .discovery import Registry

REFERENCE = "reference"


def _availability_table(registry: Registry) -> str:
    lines = []
    for name, spec in sorted(registry.backends.items()):
        ok, why = spec.availability()
        lines.append("  %-10s %s" % (name, "available" if ok else "unavailable: " + why))
    for f in registry.failures:
        lines.append("  %-10s failed to load (%s): %s" % (f.plugin, f.target, f.error))
    return "\n".join(lines)


def select_backend(registry: Registry, name: str) -> BackendSpec:
    """The backend a recipe names (``auto``: the best available accelerator, else reference)."""
    if name == "auto":
        candidates = []
        for spec in registry.backends.values():
            if spec.accelerator and spec.availability()[0]:
                candidates.append(spec)
        if candidates:
            return max(candidates, key=lambda s: (s.priority, s.name))
        return registry.backends[REFERENCE]
    spec = registry.backends.get(name)
    if spec is None:
        known = sorted(registry.backends) + ["auto"]
        close = difflib.get_close_matches(name, known, n=1)
        hint = " Did you mean %r?" % close[0] if close else ""
        raise BackendError(
            "unknown backend %r.%s Backends found here:\n%s\nSet `backend:` to one of: %s."
            % (name, hint, _availability_table(registry), ", ".join(known))
        )
    ok, why = spec.availability()
    if not ok:
        raise BackendError(
            "backend %r is not available here: %s\nBackends found here:\n%s\n"
            "Use `backend: auto` to take the best available one." % (name, why, _availability_table(registry))
        )
    return spec


def apply_env_defaults(spec: BackendSpec, recipe_env: Mapping[str, str]) -> Dict[str, str]:
    """Put the backend's environment defaults into ``os.environ`` before its runtime starts.

    A variable the user already exported wins over the plugin default; a value the recipe
    sets (``env:``) wins over both. Returns what was applied, for the run report.
    """
    applied = {}
    for key, value in spec.env_defaults.items():
        if key not in recipe_env and key not in os.environ:
            os.environ[key] = str(value)
            applied[key] = str(value)
    for key, value in recipe_env.items():
        os.environ[key] = str(value)
        applied[key] = str(value)
    return applied


def _pool(registry: Registry, backend: str, kind: str, req: Optional[Requirements] = None) -> List[OpImpl]:
    """Candidates in preference order: the backend's own (by priority), then reference ones
    (not where a quantization scheme is asked: a backend implements it or refuses it)."""
    own = sorted(registry.impls_for(backend, kind), key=lambda i: -i.priority)
    if backend == REFERENCE or _scheme_site(kind, req):
        return own
    ref = sorted(registry.impls_for(REFERENCE, kind), key=lambda i: -i.priority)
    return own + ref


def _scheme_site(kind: str, req: Optional[Requirements]) -> bool:
    """A site whose implementation the recipe's quantization scheme picks (``quant.dit`` for the
    quantized Linears, ``quant.attention`` for the self-attention): lossy by request."""
    return kind in SCHEME_KINDS or (req is not None and req.quant_scheme is not None)


def _match_override(registry: Registry, backend: str, kind: str, wanted: str) -> OpImpl:
    pool = _pool(registry, backend, kind)
    every = [i for i in registry.impls if i.kind == kind]
    for impl in pool + every:
        if wanted in (impl.name, impl.qualified_name):
            return impl
    names = sorted({i.qualified_name for i in every})
    close = difflib.get_close_matches(wanted, names + [i.name for i in every], n=1)
    hint = " Did you mean %r?" % close[0] if close else ""
    raise BackendError(
        "unknown %s implementation %r.%s Known for %s: %s." % (kind, wanted, hint, kind, ", ".join(names))
    )


def _usable(impl: OpImpl, req: Requirements) -> Tuple[bool, str]:
    try:
        ok, why = impl.available()
    except Exception as exc:
        return False, "availability check raised %s: %s" % (type(exc).__name__, exc)
    if not ok:
        return False, why or "not available"
    return impl.constraints.check(req)


def _load(impl: OpImpl):
    try:
        fn = impl.load()
    except Exception as exc:
        raise BackendError(
            "loading %s (%s) failed: %s: %s" % (impl.qualified_name, impl.kind, type(exc).__name__, exc)
        ) from exc
    if not callable(fn):
        raise BackendError("%s.load() returned %r, not a callable" % (impl.qualified_name, fn))
    return fn


def resolve_ops(
    registry: Registry,
    backend: BackendSpec,
    requirements: Mapping[str, Requirements],
    overrides: Optional[Mapping[str, str]] = None,
) -> OpTable:
    """One implementation per call site, checked against that site's requirements.

    ``overrides`` maps an op kind (applies to all its sites) or a call site to an
    implementation name (``impl`` or ``backend.impl``). A site-level override wins over a
    kind-level one. Lossy implementations (``exact=False``) are only used when named.
    """
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in OP_KINDS and key not in CALL_SITES:
            close = difflib.get_close_matches(key, list(OP_KINDS) + list(CALL_SITES), n=1)
            hint = " Did you mean %r?" % close[0] if close else ""
            raise BackendError(
                "ops: unknown op kind or call site %r.%s Known: %s."
                % (key, hint, ", ".join(list(OP_KINDS) + [s for s in CALL_SITES if s not in OP_KINDS]))
            )
    resolved: Dict[str, ResolvedOp] = {}
    loaded: Dict[Tuple[str, str], object] = {}  # one load per implementation even when used at two sites
    sites = list(CALL_SITES.items()) + [(s, k) for s, k in VAE_CALL_SITES.items() if s in requirements]
    for site, kind in sites:
        if site in OPTIONAL_SITES and site not in requirements:
            continue
        req = requirements[site]
        wanted = overrides.get(site) if site != kind else None
        wanted = wanted or overrides.get(kind)
        if wanted == "composed" and kind in COMPOSABLE:
            chosen = None  # a recipe asks for the composed form explicitly (debugging a fused kernel)
        elif wanted:
            impl = _match_override(registry, backend.name, kind, wanted)
            ok, why = _usable(impl, req)
            if not ok:
                alternatives = _explain(registry, backend.name, kind, req)
                raise BackendError(
                    "ops.%s = %r cannot be used for %s on backend %r: %s.\n"
                    "Implementations of %s here:\n%s"
                    % (kind if wanted == overrides.get(kind) else site, wanted, site, backend.name, why,
                       kind, alternatives)
                )
            chosen, reason = impl, "recipe override"
        if not wanted:
            chosen, reason = None, ""
            for impl in _pool(registry, backend.name, kind, req):
                # a scheme site is lossy by request (the recipe names the scheme), never by surprise
                lossy_ok = _scheme_site(kind, req)
                if (not impl.exact and not lossy_ok) or (impl.default_sites is not None and site not in impl.default_sites):
                    continue
                if kind in COMPOSABLE and impl.backend != backend.name:
                    continue  # composed below rather than another backend's implementation
                ok, _ = _usable(impl, req)
                if ok:
                    chosen = impl
                    reason = ("quant.attention: %s" % req.quant_scheme if lossy_ok and kind not in SCHEME_KINDS
                              else "default" if impl.backend == backend.name
                              else "fallback (no %s implementation of %s fits)" % (backend.name, kind))
                    break
        if chosen is None and kind in COMPOSABLE:
            parts = [resolved[p] for p in COMPOSABLE[kind]]
            fn = COMPOSERS[kind](*(p.fn for p in parts))
            name = "composed(%s)" % (", ".join(p.impl for p in parts) or "pytorch")
            why = "recipe override" if wanted else "no fused %s implementation fits; composed" % kind
            resolved[site] = ResolvedOp(site=site, kind=kind, impl=name, fn=fn, why=why)
            continue
        if chosen is None and kind in SCHEME_KINDS:
            raise BackendError(
                "quant.dit: backend %r does not implement the quantization scheme %r.\n"
                "Its %s implementations:\n%s\nSet quant.dit to a scheme listed there, or none."
                % (backend.name, req.quant_scheme, kind, _explain(registry, backend.name, kind, req))
            )
        if chosen is None and req.quant_scheme is not None:
            raise BackendError(
                "quant.attention: %s: backend %r has no %s attention that fits %s.\n"
                "Its attention implementations:\n%s\n%sSet quant.attention: none (docs/quantization.md)."
                % (req.quant_scheme, backend.name, req.quant_scheme.upper(), site,
                   _explain(registry, backend.name, kind, req),
                   "Ring attention (parallel.ring > 1) needs the log-sum-exp, which not every scheme has: set "
                   "parallel.ring: 1, or a scheme with one (fp8), or " if req.lse else "")
            )
        if chosen is None:
            raise BackendError(
                "no implementation of %s fits call site %s on backend %r.\nCandidates:\n%s"
                % (kind, site, backend.name, _explain(registry, backend.name, kind, req))
            )
        key = (kind, chosen.qualified_name)
        if key not in loaded:
            fn = _load(chosen)
            if kind in OUT_DTYPE_KINDS and not chosen.constraints.out_dtype:
                fn = with_out_dtype(fn)
            loaded[key] = fn
        resolved[site] = ResolvedOp(site=site, kind=kind, impl=chosen.qualified_name, fn=loaded[key], why=reason)
    return OpTable(**resolved)


def _explain(registry: Registry, backend: str, kind: str, req: Requirements) -> str:
    lines = []
    for impl in _pool(registry, backend, kind, req):
        ok, why = _usable(impl, req)
        tag = "ok" if ok else why
        if ok and not impl.exact:
            tag = "ok, lossy (only when named)"
        lines.append("  %-28s %s" % (impl.qualified_name, tag))
    return "\n".join(lines) or "  (none)"
