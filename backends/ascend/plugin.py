"""pluggy hook implementations of the Ascend backend. Never imports torch_npu at import time."""

from __future__ import annotations

import importlib.util

from wanport.registry import BackendSpec, hookimpl

NAME = "ascend"


def _available():
    if importlib.util.find_spec("torch_npu") is None:
        return False, "torch_npu is not installed (Ascend hosts: pip install torch_npu matching torch, source CANN set_env.sh)"
    import torch

    npu = getattr(torch, "npu", None)
    if npu is None:
        return False, "torch_npu is installed but not imported; the backend imports it when it starts"
    try:
        if not npu.is_available():
            return False, "torch_npu found no NPU device"
    except Exception as exc:  # CANN missing or broken
        return False, "torch.npu.is_available() failed: %s" % exc
    return True, ""


def _start():
    raise RuntimeError("the Ascend runtime arrives with the Ascend backend issue")


@hookimpl
def wanport_backends():
    return [
        BackendSpec(
            name=NAME,
            device_type="npu",
            dist_backend="hccl",
            start=_start,
            is_available=_available,
            env_defaults={
                "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
                "TASK_QUEUE_ENABLE": "2",
                "CPU_AFFINITY_CONF": "1",
                "TOKENIZERS_PARALLELISM": "false",
            },
            priority=100,
            description="Huawei Ascend NPUs through torch_npu",
        )
    ]
