"""What the installed torch_npu offers, read from the stack itself rather than from a version table.

torch_npu exports every custom operator as ``torch_npu.<name> = torch.ops.npu.<name>`` (an
``OpOverloadPacket``), so each op's registered schema is readable at run time:
``torch_npu.npu_rotary_mul.default._schema.arguments``. The backend reads the argument names of
the ops it calls and adapts, instead of assuming a torch_npu version:

- ``npu_rotary_mul`` gained ``rotary_mode`` (interleaved pairs) in op-plugin 7.0.0
  (torch_npu 2.1.0.post12 / 2.3.1.post6 / 2.4.0.post4 and later); older builds know only the
  split-half layout, and rotary then reorders the pairs (``ascend.rotary_mul_half``).
- ``npu_dynamic_quant`` gained ``dst_type`` in op-plugin 7.0.0, the release from which
  ``npu_quant_matmul`` takes float32 scales and biases with a bfloat16 output (6.0.rc2 wanted
  bfloat16 ones); the int8_w8a8 implementation passes ``dst_type`` and is offered only there.
- every keyword an implementation passes is checked to exist in the installed schema before the
  implementation is offered to the resolver (a renamed keyword would otherwise fail mid-run).
- the first argument of ``npu_rms_norm`` / ``npu_rotary_mul`` is registered as ``input`` by
  torch_npu's codegen since 6.0.rc3 and as ``self`` before (the op-plugin yaml says ``self``
  throughout); the backend passes it positionally, which binds on every version.

Nothing here imports torch_npu except :func:`import_torch_npu`, which the runtime calls in
``start()``, after the environment defaults are in place.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

import torch

#: the torch_npu operators this backend calls
OPS = (
    "npu_fusion_attention",
    "npu_fused_infer_attention_score",
    "npu_rotary_mul",
    "npu_rms_norm",
    "npu_layer_norm_eval",
    "npu_dynamic_quant",
    "npu_quant_matmul",
    "npu_weight_quant_batchmatmul",
)

#: CANN's environment script at its default (root) install path; a user install keeps it at
#: $HOME/Ascend/ascend-toolkit/set_env.sh
CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"

#: variables CANN's set_env.sh exports (any one shows the environment was loaded)
_CANN_VARS = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH")

#: device nodes the Ascend driver creates, one per NPU (also inside containers given the devices)
NPU_DEVICE_GLOB = "/dev/davinci[0-9]*"


class TorchNpuImportError(RuntimeError):
    """torch_npu is missing or cannot load (usually: the CANN environment is not loaded)."""


def cann_home(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    for var in _CANN_VARS:
        if environ.get(var):
            return environ[var]
    return None


def set_env_hint(environ: Mapping[str, str] = os.environ) -> str:
    home = environ.get("ASCEND_TOOLKIT_HOME")
    if home:
        return "source %s" % os.path.join(os.path.dirname(home.rstrip("/")), "set_env.sh")
    return "source %s (a user install: source $HOME/Ascend/ascend-toolkit/set_env.sh)" % CANN_SET_ENV


def host_status(environ: Mapping[str, str] = os.environ, device_glob: str = NPU_DEVICE_GLOB) -> Tuple[bool, str]:
    """Whether this host can run torch_npu, judged without importing it (availability checks
    run before the backend's environment defaults are applied)."""
    if not glob.glob(device_glob):
        return False, "no Ascend NPU on this host (no %s device nodes)" % device_glob
    if cann_home(environ) is None:
        return False, ("torch_npu is installed but the CANN environment is not loaded (%s unset): "
                       "run `%s` before wanport" % ("/".join(_CANN_VARS), set_env_hint(environ)))
    return True, ""


def loaded_torch_npu():
    """The torch_npu module if something already imported it (never imports it)."""
    return sys.modules.get("torch_npu")


def import_torch_npu():
    """Import torch_npu, turning every failure into one clear :class:`TorchNpuImportError`.

    Besides ImportError (``libhccl.so: cannot open shared object file`` without CANN), torch_npu
    of the 2.1 line calls ``sys.exit()`` after printing its own hint, and newer ones raise
    RuntimeError when torch was built for another accelerator; all of them are caught here.
    """
    mod = loaded_torch_npu()
    if mod is not None:
        return mod
    try:
        return importlib.import_module("torch_npu")
    except (Exception, SystemExit) as exc:
        raise TorchNpuImportError(import_failure_message(exc)) from None


def import_failure_message(exc: BaseException, environ: Mapping[str, str] = os.environ) -> str:
    if isinstance(exc, SystemExit):
        what = "torch_npu exited during import (see the message it printed above)"
    else:
        what = "%s: %s" % (type(exc).__name__, exc)
    if isinstance(exc, ModuleNotFoundError) and getattr(exc, "name", None) == "torch_npu":
        return ("torch_npu is not installed (%s). On an Ascend host install the torch_npu wheel built for "
                "torch %s and load CANN: `%s`." % (what, torch.__version__, set_env_hint(environ)))
    home = cann_home(environ)
    if home is None:
        return ("cannot import torch_npu (%s). The CANN environment is not loaded: run `%s` before "
                "wanport (run.sh does not do it for you)." % (what, set_env_hint(environ)))
    return ("cannot import torch_npu (%s) although CANN is loaded from %s: check that torch_npu is the build "
            "for torch %s and for this CANN version (torch_npu's COMPATIBILITY table)."
            % (what, home, torch.__version__))


def _schema_arguments(mod, name: str) -> Optional[Tuple[str, ...]]:
    """Argument names of ``torch_npu.<name>`` as registered; None if they cannot be read."""
    fn = getattr(mod, name, None)
    getters = (
        lambda: fn.default._schema,  # OpOverloadPacket (how torch_npu exports its ops)
        lambda: fn._schema,  # an OpOverload
        lambda: getattr(torch.ops.npu, name).default._schema,  # wrapped in Python: the dispatcher's entry
    )
    for get in getters:
        try:
            return tuple(a.name for a in get().arguments)
        except Exception:
            continue
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class NpuOps:
    """The ops of one torch_npu installation: which exist and their argument names."""

    version: str
    present: FrozenSet[str]
    arguments: Mapping[str, Optional[Tuple[str, ...]]]  # op -> names (None: unreadable)

    def has(self, op: str) -> bool:
        return op in self.present

    def accepts(self, op: str, arg: str) -> Optional[bool]:
        """True/False, or None when the schema could not be read."""
        names = self.arguments.get(op)
        return None if names is None else arg in names

    def missing(self, op: str, args) -> Tuple[bool, str]:
        """(ok, reason): the op exists and takes every keyword in ``args``."""
        if not self.has(op):
            return False, "torch_npu %s has no %s" % (self.version, op)
        for arg in args:
            ok = self.accepts(op, arg)
            if ok is None:
                return False, "cannot read the schema of torch_npu.%s (torch_npu %s)" % (op, self.version)
            if not ok:
                return False, "torch_npu %s: %s takes no %r argument" % (self.version, op, arg)
        return True, ""

    @property
    def rotary_interleave(self) -> bool:
        return bool(self.accepts("npu_rotary_mul", "rotary_mode"))

    def describe(self) -> str:
        if not self.has("npu_rotary_mul"):
            rot = "no npu_rotary_mul: reference rotary"
        elif self.rotary_interleave:
            rot = "npu_rotary_mul interleave mode"
        else:
            rot = "npu_rotary_mul has no rotary_mode (half mode only): pairs reordered to the half layout"
        missing = [op for op in OPS if not self.has(op)]
        extra = "; missing: %s" % ", ".join(missing) if missing else ""
        return "torch_npu %s: %s%s" % (self.version, rot, extra)


_DETECTED: Dict[int, Tuple[object, NpuOps]] = {}


def detect(mod=None) -> Optional[NpuOps]:
    """The :class:`NpuOps` of an imported torch_npu (``None`` if it is not imported)."""
    mod = mod if mod is not None else loaded_torch_npu()
    if mod is None:
        return None
    hit = _DETECTED.get(id(mod))
    if hit is not None and hit[0] is mod:  # the module is held below, so its id is not reused
        return hit[1]
    present = frozenset(op for op in OPS if getattr(mod, op, None) is not None)
    ops = NpuOps(
        version=str(getattr(mod, "__version__", "unknown")),
        present=present,
        arguments={op: _schema_arguments(mod, op) for op in present},
    )
    _DETECTED[id(mod)] = (mod, ops)
    return ops


def requires(op: str, *args: str):
    """An ``OpImpl.available`` check: torch_npu imported (by the backend's start), the op present and
    every keyword the implementation passes in its schema. Never imports, never raises."""

    def check() -> Tuple[bool, str]:
        try:
            ops = detect()
        except Exception as exc:  # pragma: no cover - defensive: availability must not raise
            return False, "reading torch_npu's schemas failed: %s" % exc
        if ops is None:
            return False, "torch_npu is not imported yet (the ascend backend imports it when it starts)"
        return ops.missing(op, args)

    check.__name__ = "requires_%s" % op
    return check


def requires_all(*checks):
    """An ``OpImpl.available`` check that passes when every one of ``checks`` does (the first reason otherwise)."""

    def check() -> Tuple[bool, str]:
        for one in checks:
            ok, why = one()
            if not ok:
                return False, why
        return True, ""

    check.__name__ = "requires_all"
    return check
