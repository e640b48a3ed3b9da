"""Discover backends once: the built-in reference plugin plus every ``wanport.backends`` entry point.

A plugin that fails to import, names a hook that does not exist (a misspelling), leaves a hook
function unmarked, or whose hook raises, is recorded as that plugin's failure (shown by
``wanport backends``) instead of taking the process down: a broken vendor stack on one
host must not stop the reference backend from working.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple

import pluggy

from ..ops.impl import OpImpl
from . import hookspecs
from .backend import BackendSpec


@dataclass(frozen=True)
class PluginFailure:
    plugin: str  # entry point name (or module for the built-in)
    target: str  # "module" the entry point names
    error: str


@dataclass(frozen=True)
class Registry:
    """Everything discovered, frozen. Built by :func:`discover`."""

    backends: Mapping[str, BackendSpec]
    impls: Tuple[OpImpl, ...]
    failures: Tuple[PluginFailure, ...]
    plugin_of: Mapping[str, str]  # backend name -> plugin (entry point) name

    def impls_for(self, backend: str, kind: str) -> List[OpImpl]:
        return [i for i in self.impls if i.backend == backend and i.kind == kind]


def _entry_points(group: str):
    eps = importlib_metadata.entry_points()
    if hasattr(eps, "select"):  # Python >= 3.10
        found = list(eps.select(group=group))
    else:  # pragma: no cover - Python 3.8/3.9 return a dict
        found = list(eps.get(group, []))
    unique = {}
    for ep in found:  # the same plugin seen twice (editable + regular install): keep the first
        unique.setdefault(ep.name, ep)
    return list(unique.values())


def _call_each(pm: pluggy.PluginManager, hook_name: str, failures: List[PluginFailure]):
    """Call every implementation of a hook separately, so one bad plugin is contained."""
    results = []
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        try:
            out = impl.function()
        except Exception as exc:
            failures.append(
                PluginFailure(impl.plugin_name, hook_name, "%s: %s" % (type(exc).__name__, exc))
            )
            continue
        if out is None:
            continue
        items = list(out) if isinstance(out, (list, tuple)) else [out]
        results.append((impl.plugin_name, items))
    return results


def _unmarked_hooks(module) -> List[str]:
    """Functions named like a hook (``wanport_*``) that pluggy will not call: not marked with
    ``@hookimpl``. A plugin with one of these silently provides nothing, so it is reported."""
    names = []
    for name in dir(module):
        obj = getattr(module, name, None)
        if name.startswith(hookspecs.PROJECT + "_") and inspect.isfunction(obj) \
                and not hasattr(obj, hookspecs.PROJECT + "_impl"):
            names.append(name)
    return names


def register_plugin(pm: pluggy.PluginManager, module, name: str, target: str) -> Optional[PluginFailure]:
    """Register one plugin module and validate it against the hook specifications, or return why
    not (the plugin is then left unregistered: one bad plugin never takes the others down).

    pluggy checks each ``@hookimpl``'s arguments at registration; ``check_pending()`` then finds a
    ``@hookimpl`` whose name matches no specification (a misspelled hook, e.g. ``wanport_backend``).
    Plugins are registered one at a time, so whatever is pending belongs to this one.
    """
    try:
        pm.register(module, name=name)
    except ValueError as exc:  # already registered under another name
        return PluginFailure(name, target, str(exc))
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(module):
            pm.unregister(module)
        return PluginFailure(name, target, "invalid hook implementation: %s" % exc)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(module)
        known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith(hookspecs.PROJECT + "_")))
        return PluginFailure(name, target, "%s (the hooks are: %s)" % (exc, known))
    unmarked = _unmarked_hooks(module)
    if unmarked:
        pm.unregister(module)
        return PluginFailure(name, target, "%s not marked with @hookimpl (from wanport.registry import hookimpl)"
                             % ", ".join(unmarked))
    return None


def discover(include_entry_points: bool = True) -> Registry:
    """Load the reference plugin and all entry-point plugins; resolve into a frozen Registry."""
    from ..reference import plugin as reference_plugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    failures: List[PluginFailure] = []
    failure = register_plugin(pm, reference_plugin, "reference", reference_plugin.__name__)
    if failure is not None:
        failures.append(failure)

    if include_entry_points:
        for ep in _entry_points(hookspecs.ENTRY_POINT_GROUP):
            if ep.name == "reference":
                failures.append(PluginFailure(ep.name, ep.value, "the name 'reference' is reserved"))
                continue
            try:
                module = ep.load()
            except Exception as exc:
                failures.append(PluginFailure(ep.name, ep.value, "%s: %s" % (type(exc).__name__, exc)))
                continue
            failure = register_plugin(pm, module, ep.name, ep.value)
            if failure is not None:
                failures.append(failure)

    backends: Dict[str, BackendSpec] = {}
    plugin_of: Dict[str, str] = {}
    for plugin_name, items in _call_each(pm, "wanport_backends", failures):
        for spec in items:
            if not isinstance(spec, BackendSpec):
                failures.append(PluginFailure(plugin_name, "wanport_backends",
                                              "returned %r, not a BackendSpec" % (spec,)))
            elif spec.name in backends:
                failures.append(PluginFailure(plugin_name, "wanport_backends",
                                              "backend %r is already provided by plugin %r"
                                              % (spec.name, plugin_of[spec.name])))
            else:
                backends[spec.name] = spec
                plugin_of[spec.name] = plugin_name

    impls: List[OpImpl] = []
    seen = set()
    for plugin_name, items in _call_each(pm, "wanport_op_impls", failures):
        for impl in items:
            if not isinstance(impl, OpImpl):
                failures.append(PluginFailure(plugin_name, "wanport_op_impls",
                                              "returned %r, not an OpImpl" % (impl,)))
                continue
            key = (impl.backend, impl.kind, impl.name)
            if key in seen:
                failures.append(PluginFailure(plugin_name, "wanport_op_impls",
                                              "duplicate implementation %s for %s"
                                              % (impl.qualified_name, impl.kind)))
                continue
            seen.add(key)
            impls.append(impl)

    return Registry(
        backends=MappingProxyType(backends),
        impls=tuple(impls),
        failures=tuple(failures),
        plugin_of=MappingProxyType(plugin_of),
    )
