"""pluggy hook implementations of the CUDA backend. Imports nothing CUDA-specific at import:
torch.cuda is queried only inside the availability check, Triton and vendor attention packages
only when an implementation is loaded."""

from __future__ import annotations

import importlib.util

import torch

from wanport.ops.impl import Constraints, OpImpl
from wanport.registry import BackendSpec, hookimpl

NAME = "cuda"
_HALF = frozenset({torch.float16, torch.bfloat16})
_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32})
_CUDA = frozenset({"cuda"})


def _available():
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch %s (torch.cuda.is_available() is False)" % torch.__version__
    return True, ""


def _start():
    from .runtime import CudaRuntime

    return CudaRuntime()


def _versions():
    out = {"cuda": str(torch.version.cuda), "cudnn": str(torch.backends.cudnn.version())}
    for pkg in ("triton", "flash_attn", "flash_attn_interface", "sageattention"):
        if importlib.util.find_spec(pkg) is not None:
            try:
                out[pkg] = str(getattr(__import__(pkg), "__version__", "installed"))
            except Exception as exc:  # a broken optional package must not break the report
                out[pkg] = "import failed: %s" % exc
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
            description="NVIDIA GPUs: SDPA with explicit kernels (cuDNN first), Triton kernels for the norms, RoPE, residual",
            versions=_versions,
        )
    ]


def _needs(module: str, why: str):
    def check():
        if importlib.util.find_spec(module) is None:
            return False, "%s is not installed (%s)" % (module, why)
        return True, ""

    return check


def _sdpa_available():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401  (torch >= 2.3)
    except ImportError:
        return False, "torch %s lacks torch.nn.attention.sdpa_kernel (needs >= 2.3)" % torch.__version__
    return True, ""


def _cudnn_lse_available():
    if not hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention"):
        return False, "torch %s has no aten._scaled_dot_product_cudnn_attention" % torch.__version__
    return True, ""


def _loader(module: str, attr: str, *args):
    def load():
        mod = importlib.import_module("%s.%s" % (__package__, module))
        fn = getattr(mod, attr)
        return fn(*args) if args or attr.startswith("make_") else fn

    return load


_TRITON = _needs("triton", "pip install triton")


#: declared error bound of every exact implementation: relative L2 vs a float64 evaluation of the
#: contract for bf16 tensors (bf16 rounding of inputs/outputs; float32 tensors do far better)
_BF16_TOL = 1e-2


@hookimpl
def wanport_op_impls():
    att = dict(device_types=_CUDA)
    return [
        # attention, fastest first (measured on H100 at Wan shapes, docs/measurements.md §3)
        OpImpl("attention", "sdpa_cudnn", NAME, _loader("attention", "make_sdpa", "cudnn"),
               Constraints(dtypes=_HALF, max_head_dim=128, **att), priority=40, tolerance=_BF16_TOL,
               available=_sdpa_available, description="cuDNN fused attention via SDPA (fastest measured on H100)"),
        OpImpl("attention", "flash_attn3", NAME, _loader("attention", "make_flash_attn", 3),
               Constraints(dtypes=_HALF, max_head_dim=256, lse=True, **att), priority=35, tolerance=_BF16_TOL,
               available=_needs("flash_attn_interface", "FlashAttention 3, Hopper build"),
               description="FlashAttention 3 (flash_attn_interface)"),
        OpImpl("attention", "cudnn_lse", NAME, _loader("attention", "make_lse", "cudnn"),
               Constraints(dtypes=_HALF, max_head_dim=128, lse=True, **att), priority=32, tolerance=_BF16_TOL,
               available=_cudnn_lse_available, description="cuDNN attention returning the log-sum-exp"),
        OpImpl("attention", "flash_attn2", NAME, _loader("attention", "make_flash_attn", 2),
               Constraints(dtypes=_HALF, max_head_dim=256, lse=True, **att), priority=25, tolerance=_BF16_TOL,
               available=_needs("flash_attn", "FlashAttention 2"), description="FlashAttention 2 (flash_attn)"),
        OpImpl("attention", "sdpa_flash", NAME, _loader("attention", "make_sdpa", "flash"),
               Constraints(dtypes=_HALF, max_head_dim=256, **att), priority=20, tolerance=_BF16_TOL,
               available=_sdpa_available, description="FlashAttention-2 kernel inside SDPA"),
        OpImpl("attention", "flash_lse", NAME, _loader("attention", "make_lse", "flash"),
               Constraints(dtypes=_HALF, max_head_dim=256, lse=True, **att), priority=15, tolerance=_BF16_TOL,
               available=_sdpa_available, description="SDPA's flash kernel returning the log-sum-exp"),
        OpImpl("attention", "sdpa_efficient", NAME, _loader("attention", "make_sdpa", "efficient"),
               Constraints(dtypes=_FLOATS, **att), priority=10, tolerance=_BF16_TOL,
               available=_sdpa_available, description="memory-efficient attention via SDPA"),
        OpImpl("attention", "sageattn", NAME, _loader("attention", "make_sage"),
               Constraints(dtypes=_HALF, head_dims=frozenset({64, 128}), **att), priority=50, exact=False,
               tolerance=3e-2, available=_needs("sageattention", "SageAttention"),
               description="SageAttention INT8 QK (lossy: only when a recipe names it)"),
        # the memory-bound parts of a block, Triton
        OpImpl("qk_norm_rope", "triton", NAME, _loader("qk_norm_rope", "qk_norm_rope"),
               Constraints(dtypes=_FLOATS, **att), priority=30, available=_TRITON, tolerance=_BF16_TOL,
               description="q/k RMSNorm over the full dim + RoPE + cast, one pass"),
        OpImpl("rms_norm", "triton", NAME, _loader("rms_norm", "rms_norm"),
               Constraints(dtypes=_FLOATS, out_dtype=True, **att), priority=30, available=_TRITON, tolerance=_BF16_TOL,
               description="RMSNorm, float32 statistics"),
        OpImpl("layer_norm", "triton", NAME, _loader("layer_norm", "layer_norm"),
               Constraints(dtypes=_FLOATS, out_dtype=True, **att), priority=30, available=_TRITON, tolerance=_BF16_TOL,
               description="LayerNorm (optional affine), float32 statistics"),
        OpImpl("layer_norm_modulate", "triton", NAME, _loader("layer_norm_modulate", "layer_norm_modulate"),
               Constraints(dtypes=_FLOATS, out_dtype=True, **att), priority=30, available=_TRITON, tolerance=_BF16_TOL,
               description="LayerNorm * (1 + scale) + shift, one pass"),
        OpImpl("linear_gelu", "cublaslt_epilogue", NAME, _loader("linear_gelu", "linear_gelu"),
               Constraints(dtypes=_HALF, **att), priority=30, tolerance=_BF16_TOL,
               available=lambda: (hasattr(torch, "_addmm_activation"), "torch lacks _addmm_activation"),
               description="one GEMM with a tanh-GELU epilogue"),
        OpImpl("gated_residual", "triton", NAME, _loader("gated_residual", "gated_residual"),
               Constraints(dtypes=_FLOATS, **att), priority=30, available=_TRITON, tolerance=_BF16_TOL,
               description="x + y * gate, in place into the float32 stream"),
    ]
