"""The one way a recipe field is declared: a dataclass field whose metadata carries the loader's type
(``wanport.config.loader`` checks and converts by it), the help text and the allowed choices."""

from __future__ import annotations

from dataclasses import field


def _f(default=None, *, type, help, factory=None, choices=None):
    meta = {"type": type, "help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
