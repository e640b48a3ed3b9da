"""pluggy hook implementations of the CUDA backend. Imports nothing CUDA-specific at import."""

from __future__ import annotations

import importlib.util

import torch

from wanport.ops.impl import Constraints, OpImpl
from wanport.registry import BackendSpec, hookimpl

NAME = "cuda"
_HALF = frozenset({torch.float16, torch.bfloat16})


def _available():
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch %s (torch.cuda.is_available() is False)" % torch.__version__
    return True, ""


def _start():
    from .runtime import CudaRuntime

    return CudaRuntime()


def _versions():
    out = {"cuda": str(torch.version.cuda), "cudnn": str(torch.backends.cudnn.version())}
    if importlib.util.find_spec("triton") is not None:
        import triton

        out["triton"] = triton.__version__
    return out


@hookimpl
def wanport_backends():
    return [
        BackendSpec(
            name=NAME,
            device_type="cuda",
            dist_backend="nccl",
            start=_start,
            is_available=_available,
            env_defaults={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
            priority=100,
            description="NVIDIA GPUs: SDPA with explicit kernels (cuDNN first)",
            versions=_versions,
        )
    ]


def _sdpa_available():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401  (torch >= 2.3)
    except ImportError:
        return False, "torch %s lacks torch.nn.attention.sdpa_kernel (needs >= 2.3)" % torch.__version__
    return True, ""


def _sdpa_loader(kind: str):
    def load():
        from .attention import make_sdpa

        return make_sdpa(kind)

    return load


@hookimpl
def wanport_op_impls():
    cuda_only = frozenset({"cuda"})
    return [
        OpImpl("attention", "sdpa_cudnn", NAME, _sdpa_loader("cudnn"),
               Constraints(dtypes=_HALF, max_head_dim=128, device_types=cuda_only), priority=30,
               available=_sdpa_available, description="cuDNN fused attention via SDPA (fastest measured on H100)"),
        OpImpl("attention", "sdpa_flash", NAME, _sdpa_loader("flash"),
               Constraints(dtypes=_HALF, max_head_dim=256, device_types=cuda_only, kv_lens=False), priority=20,
               available=_sdpa_available, description="FlashAttention-2 kernel via SDPA (no mask support)"),
        OpImpl("attention", "sdpa_efficient", NAME, _sdpa_loader("efficient"),
               Constraints(dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
                           device_types=cuda_only), priority=10,
               available=_sdpa_available, description="memory-efficient attention via SDPA"),
    ]
