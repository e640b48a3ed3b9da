"""The backend registry: pluggy discovery once at start, resolution into a frozen op table."""

from .backend import BackendSpec, DeviceRuntime, TimingEvent
from .discovery import PluginFailure, Registry, discover
from .hookspecs import ENTRY_POINT_GROUP, hookimpl
from .resolver import apply_env_defaults, resolve_ops, select_backend

__all__ = [
    "BackendSpec",
    "DeviceRuntime",
    "TimingEvent",
    "PluginFailure",
    "Registry",
    "discover",
    "ENTRY_POINT_GROUP",
    "hookimpl",
    "apply_env_defaults",
    "resolve_ops",
    "select_backend",
]
