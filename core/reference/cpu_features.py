"""Whether the host CPU multiplies bf16 matrices natively (for ``precision: auto``).

PyTorch's host bf16 matmul is fast only where the CPU has bf16 dot-product instructions:
x86-64 ``avx512_bf16`` or AMX (``amx_bf16``), ARMv8.6 ``bf16`` (Linux ``Features``, macOS
``hw.optional.arm.FEAT_BF16``). Elsewhere (e.g. an AVX2-only CPU) it converts and emulates: a
1024³ bf16 matmul there takes ~80x the fp32 time. The check reads the flags the kernel reports;
it is cheap (one file or one sysctl) and never raises.
"""

from __future__ import annotations

import platform
import subprocess
from typing import Optional, Tuple

X86_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_FLAG = "bf16"


def flags_bf16(cpuinfo: str) -> Tuple[bool, str]:
    """From the text of ``/proc/cpuinfo``: (native bf16, which flag or what is missing)."""
    words = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            words.update(value.split())
    if not words:
        return False, "no CPU flags in /proc/cpuinfo"
    found = [f for f in X86_FLAGS if f in words]
    if found:
        return True, "CPU flag %s" % found[0]
    if ARM_FLAG in words:
        return True, "CPU feature bf16"
    return False, "no CPU flag %s" % " / ".join(X86_FLAGS + (ARM_FLAG,))


def _macos_bf16() -> Tuple[bool, str]:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False, "sysctl hw.optional.arm.FEAT_BF16 unreadable"
    return (out == "1"), "hw.optional.arm.FEAT_BF16=%s" % (out or "absent")


def host_bf16_matmul(cpuinfo_path: str = "/proc/cpuinfo", system: Optional[str] = None) -> Tuple[bool, str]:
    """(native bf16 matmuls on this host, why). Unknown counts as not native (fp32 is then the safe choice)."""
    system = system or platform.system()
    if system == "Darwin":
        return _macos_bf16()
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            return flags_bf16(f.read())
    except OSError:
        pass
    try:  # other systems: ask PyTorch's own CPU probe, where this torch has it
        import torch

        probe = getattr(torch._C, "_cpu", None)
        fn = getattr(probe, "_is_avx512_bf16_supported", None)
        if fn is not None and fn():
            return True, "PyTorch reports AVX512-BF16"
    except Exception:  # a private API: any failure means unknown
        pass
    return False, "bf16 support unknown on %s" % (system or "this system")


__all__ = ["host_bf16_matmul", "flags_bf16"]
