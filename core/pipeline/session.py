"""The backend session of one run: backend chosen, environment applied, runtime started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch

from ..errors import BackendError
from ..registry import BackendSpec, DeviceRuntime, Registry, apply_env_defaults, discover, select_backend


@dataclass(frozen=True)
class Session:
    registry: Registry
    backend: BackendSpec
    runtime: DeviceRuntime
    device: torch.device
    env_applied: Mapping[str, str]


def choose_backend(name: str, registry: Optional[Registry] = None):
    """Discover once and pick the backend (cheap; raises BackendError before anything loads)."""
    registry = registry if registry is not None else discover()
    return registry, select_backend(registry, name)


def start_session(registry: Registry, spec: BackendSpec, recipe_env: Mapping[str, str]) -> Session:
    applied: Dict[str, str] = apply_env_defaults(spec, recipe_env)
    try:
        runtime = spec.start()
    except Exception as exc:
        raise BackendError("backend %r failed to start: %s: %s" % (spec.name, type(exc).__name__, exc)) from exc
    return Session(registry, spec, runtime, runtime.device(), applied)
