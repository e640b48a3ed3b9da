"""pluggy hook specifications: the interface a backend plugin implements.

A plugin is a module named by an entry point in the group ``wanport.backends``; it carries
``@hookimpl`` functions. Both hooks are called exactly once per process, at discovery.
"""

from __future__ import annotations

from typing import List

import pluggy

PROJECT = "wanport"
ENTRY_POINT_GROUP = "wanport.backends"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def wanport_backends() -> "List[BackendSpec]":  # noqa: F821
    """Return the backends this plugin provides (usually one ``BackendSpec``)."""


@hookspec
def wanport_op_impls() -> "List[OpImpl]":  # noqa: F821
    """Return op implementations; each names the backend it belongs to.

    A plugin may add implementations to another plugin's backend (e.g. a third-party
    attention kernel for ``cuda``); the resolver considers every implementation whose
    ``backend`` matches the active backend, plus the reference implementations, which run on
    any device.
    """
