"""The backend x op table of ``wanport backends --markdown`` (README's "Backends" table is this
output; tests/test_backends_table.py keeps them equal). Nothing machine-specific: availability is left out."""

from __future__ import annotations

import importlib.metadata as importlib_metadata
from typing import List, Optional, Sequence

from ..ops.contracts import COMPOSABLE, OP_KINDS, composed_from
from .discovery import Registry
from .hookspecs import ENTRY_POINT_GROUP

REFERENCE = "reference"


def bundled_backends(registry: Registry) -> List[str]:
    """The backends wanport itself ships: the reference one and its own distribution's entry points."""
    try:
        eps = importlib_metadata.distribution("wanport").entry_points
        plugins = {ep.name for ep in eps if ep.group == ENTRY_POINT_GROUP}
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        plugins = set()
    return [name for name in registry.backends if name == REFERENCE or registry.plugin_of.get(name) in plugins]


def _order(names: Sequence[str]) -> List[str]:
    return sorted(names, key=lambda n: (n != REFERENCE, n))


def _cell(registry: Registry, backend: str, kind: str) -> str:
    impls = sorted(registry.impls_for(backend, kind), key=lambda i: (-i.priority, i.name))
    if not impls:
        if kind in COMPOSABLE:
            return composed_from(kind)
        return "reference"
    cells = []
    for impl in impls:
        text = "`%s`" % impl.name
        if not impl.exact and impl.constraints.schemes and kind == "attention":
            text += " (lossy, quant.attention: %s)" % "/".join(sorted(impl.constraints.schemes))
        elif not impl.exact:
            text += " (lossy, when named)"
        elif impl.default_sites is not None:
            text += " (default at %s)" % ", ".join(s.replace("_", "-") for s in sorted(impl.default_sites))
        cells.append(text)
    return ", ".join(cells)


def backends_markdown(registry: Registry, names: Optional[Sequence[str]] = None) -> str:
    """One column per backend, one row per op kind: its implementations in the order the resolver
    prefers them. A kind without one is composed (``qk_norm_rope``) or runs the reference's."""
    cols = _order(names if names is not None else list(registry.backends))
    specs = [registry.backends[n] for n in cols]
    lines = ["| | %s |" % " | ".join("`%s`" % n for n in cols),
             "|---|" + "---|" * len(cols),
             "| device type | %s |" % " | ".join("`%s`" % s.device_type for s in specs),
             "| process group | %s |" % " | ".join(s.dist_backend for s in specs)]
    for kind in OP_KINDS:
        lines.append("| %s | %s |" % (kind, " | ".join(_cell(registry, n, kind) for n in cols)))
    return "\n".join(lines) + "\n"
