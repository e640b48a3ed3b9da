"""pluggy hook implementations of the CUDA backend. Imports nothing CUDA-specific at import:
torch.cuda is queried only inside the availability check, Triton and vendor attention packages
only when an implementation is loaded."""

from __future__ import annotations

import glob
import importlib.util
import os

import torch

from wanport.ops.attention_quant import FP8_ATTENTION_TOLERANCE
from wanport.ops.impl import Constraints, OpImpl, lazy, ranked
from wanport.ops.quant import QUANT_TOLERANCE
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
    for pkg in ("triton", "flash_attn", "flash_attn_interface", "sageattention", "quack"):
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


def _has_module(name: str) -> bool:
    """Whether the module ``name`` is installed, importing nothing: a dotted name is looked up
    as a folder or file inside its top-level package's locations. Never raises."""
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except Exception:
        return False
    if spec is None:
        return False
    if not rest:
        return True
    for loc in spec.submodule_search_locations or ():
        path = os.path.join(loc, *rest.split("."))
        if os.path.isdir(path) or os.path.isfile(path + ".py"):
            return True
    return False


def _flash_attn2_available():
    # flash-attn-4 installs a namespace package also called flash_attn (only flash_attn/cute in
    # it), so that name alone does not mean FlashAttention 2 is there: look for FA2's extension
    if not _has_module("flash_attn_2_cuda"):
        return False, "flash_attn (FlashAttention 2) is not installed"
    return True, ""


#: what flash-attn-4 needs at run time: (module, the pip package that provides it)
FA4_PIECES = (
    ("flash_attn.cute", "flash-attn-4"),
    ("cutlass", "nvidia-cutlass-dsl-libs-core"),
    ("tvm_ffi", "apache-tvm-ffi"),
    ("torch_c_dlpack_ext", "torch-c-dlpack-ext"),
    ("quack", "quack-kernels"),
)


def _cutlass_toolkit_flavour() -> bool:
    """Whether the CuTe DSL's compiled IR library for some CUDA version (the -libs-cu12/-cu13
    wheel) is installed; without it ``import cutlass`` raises."""
    try:
        spec = importlib.util.find_spec("cutlass")
    except Exception:
        return False
    for loc in (spec.submodule_search_locations if spec is not None else None) or ():
        if glob.glob(os.path.join(loc, "_mlir", "_mlir_libs", "_cutlass_ir.cu*")):
            return True
    return False


def _fa4_available():
    missing = [pip for module, pip in FA4_PIECES if not _has_module(module)]
    if missing:
        why = "flash-attn-4 needs %s (pip install 'wanport[fa4]')" % ", ".join(missing)
        if "nvidia-cutlass-dsl-libs-core" in missing and _has_module("nvidia_cutlass_dsl"):
            why += ("; nvidia_cutlass_dsl is installed but its dsl_packages folder is not on the path (an "
                    "install with pip --target skips its .pth file): add <target>/nvidia_cutlass_dsl/dsl_packages "
                    "to PYTHONPATH")
        return False, why
    if not _cutlass_toolkit_flavour():
        return False, ("flash-attn-4's CuTe DSL has no CUDA toolkit flavour installed (no "
                       "cutlass/_mlir/_mlir_libs/_cutlass_ir.cu*.so): pip install nvidia-cutlass-dsl-libs-cu13 "
                       "(CUDA 13) or -cu12")
    if not torch.cuda.is_available():
        return False, "no CUDA device visible"
    major, minor = torch.cuda.get_device_capability()
    if major < 9:
        return False, "flash-attn-4 has kernels for sm90 and newer; this GPU is sm%d%d" % (major, minor)
    return True, ""


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
    """Load = import ``wanport_cuda.<module>`` (and Triton or the vendor package it imports) and
    take ``attr``, calling it with ``args`` when it is a ``make_`` factory."""
    return lazy(".%s:%s" % (module, attr), *args, call=attr.startswith("make_"), package=__package__)


_TRITON = _needs("triton", "pip install triton")


#: which implementation the resolver prefers where several fit, per (kind, name): the one place that
#: ranks this backend's implementations. Attention fastest first, as measured at Wan shapes on H100/H200
#: (flash-attn-4 674-682 TFLOP/s, cuDNN 563-629, FA2 363-377: docs/measurements.md); sageattn is lossy
#: and only used when a recipe names it, whatever its rank.
PRIORITY = {
    ("attention", "sageattn"): 50,
    ("attention", "fp8_triton"): 48,  # lossy: only for quant.attention: fp8 (or when a recipe names it)
    ("attention", "fp8_cudnn"): 47,  # lossy: only for quant.attention: fp8_tensor (or when a recipe names it)
    ("attention", "flash_attn4"): 45,
    ("attention", "sdpa_cudnn"): 40,
    ("attention", "flash_attn3"): 35,
    ("attention", "cudnn_lse"): 32,
    ("attention", "flash_attn2"): 25,
    ("attention", "sdpa_flash"): 20,
    ("attention", "flash_lse"): 15,
    ("attention", "sdpa_efficient"): 10,
    ("qk_norm_rope", "triton"): 30,
    ("rms_norm", "triton"): 30,
    ("layer_norm", "triton"): 30,
    ("layer_norm_modulate", "triton"): 30,
    ("add_layer_norm_modulate", "triton"): 30,
    ("linear_gelu", "cublaslt_epilogue"): 30,
    ("gated_residual", "triton"): 30,
    ("channel_rms_norm", "triton"): 30,
    ("quant_linear", "fp8_rowwise_scaled_mm"): 30,
    ("quant_linear", "fp8_tensor_scaled_mm"): 20,
}


def _torch_version(text: str):
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def fp8_reason(rowwise: bool, torch_version: str, has_scaled_mm: bool, has_fp8_dtype: bool,
               has_triton: bool, capability):
    """(ok, why) for the FP8 Linears, from facts gathered elsewhere (pure: testable without a GPU).
    ``capability``: (major, minor) of the device, or None when no CUDA device is visible."""
    if not has_fp8_dtype or not has_scaled_mm:
        return False, "torch %s lacks torch.float8_e4m3fn / torch._scaled_mm" % torch_version
    if rowwise and _torch_version(torch_version) < (2, 5):
        return False, "row-wise scaled FP8 GEMMs need torch >= 2.5 (this is %s); use quant.dit: fp8_tensor" % torch_version
    if rowwise and not has_triton:
        return False, "the per-token FP8 activation quantizers are Triton kernels: pip install triton"
    if capability is None:
        return False, "no CUDA device visible"
    major, minor = capability
    if rowwise and major < 9:
        return False, ("row-wise scaled FP8 GEMMs need sm90 or newer (Hopper); this GPU is sm%d%d: use "
                       "quant.dit: fp8_tensor on sm89" % (major, minor))
    if (major, minor) < (8, 9):
        return False, "FP8 tensor cores need sm89 or newer; this GPU is sm%d%d" % (major, minor)
    return True, ""


def _fp8_available(rowwise: bool):
    def check():
        cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
        return fp8_reason(rowwise, torch.__version__, hasattr(torch, "_scaled_mm"),
                          hasattr(torch, "float8_e4m3fn"), importlib.util.find_spec("triton") is not None, cap)

    return check


def _sm90_fp8_reason(kernel: str, has_triton: bool, has_fp8_dtype: bool, capability):
    """(ok, why) shared by the FP8 attentions: an fp8 dtype, Triton (their quantizers or kernel), a
    visible sm90+ device. ``kernel`` names the implementation in the reasons."""
    if not has_fp8_dtype:
        return False, "torch %s lacks torch.float8_e4m3fn" % torch.__version__
    if not has_triton:
        return False, "%s needs Triton: pip install triton" % kernel
    if capability is None:
        return False, "no CUDA device visible"
    major, minor = capability
    if major < 9:
        return False, ("%s needs sm90 (Hopper) or newer; this GPU is sm%d%d: set quant.attention: none"
                       % (kernel, major, minor))
    return True, ""


def fp8_attention_reason(has_triton: bool, has_fp8_dtype: bool, capability):
    """(ok, why) for the FP8 attention kernel, from facts gathered elsewhere (pure: testable without a
    GPU). ``capability``: (major, minor) of the device, or None when no CUDA device is visible."""
    return _sm90_fp8_reason("the FP8 attention (a Triton kernel)", has_triton, has_fp8_dtype, capability)


def _fp8_attention_available():
    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return fp8_attention_reason(importlib.util.find_spec("triton") is not None, hasattr(torch, "float8_e4m3fn"), cap)


def fp8_cudnn_attention_reason(has_cudnn_frontend: bool, has_triton: bool, has_fp8_dtype: bool, capability):
    """(ok, why) for cuDNN's FP8 attention (``quant.attention: fp8_tensor``), from facts gathered
    elsewhere (pure: testable without a GPU). ``capability``: (major, minor), or None when no CUDA
    device is visible."""
    if has_fp8_dtype and not has_cudnn_frontend:
        return False, ("cuDNN's FP8 attention runs through the cuDNN frontend's Python package (module cudnn): "
                       "pip install nvidia-cudnn-frontend (or 'wanport[fp8attn]')")
    return _sm90_fp8_reason("cuDNN's FP8 flash attention (Triton quantizers)", has_triton, has_fp8_dtype, capability)


def _fp8_cudnn_attention_available():
    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return fp8_cudnn_attention_reason(_has_module("cudnn"), importlib.util.find_spec("triton") is not None,
                                      hasattr(torch, "float8_e4m3fn"), cap)


#: head dims cuDNN's FP8 SDPA takes here (a head's place in the [B, S, N, D] e4m3 tensors then stays 16-byte aligned)
FP8_CUDNN_HEAD_DIMS = frozenset(range(16, 129, 16))


#: declared error bound of every exact implementation: relative L2 vs a float64 evaluation of the
#: contract for bf16 tensors (bf16 rounding of inputs/outputs; float32 tensors do far better)
_BF16_TOL = 1e-2


@hookimpl
def wanport_op_impls():
    att = dict(device_types=_CUDA)
    return ranked(PRIORITY, [
        # attention (ranked in PRIORITY)
        OpImpl("attention", "flash_attn4", NAME, _loader("attention", "make_fa4"),
               Constraints(dtypes=_HALF, max_head_dim=128, lse=True, **att), tolerance=_BF16_TOL,
               available=_fa4_available,
               # the 512-key cross-attention runs faster on cuDNN (H200: 0.65 vs 0.90 ms at 14B 480p)
               default_sites=frozenset({"self_attention"}),
               description="FlashAttention-4 CuTe-DSL kernels (sm90+), with LSE; JIT-compiled per shape on first call"),
        OpImpl("attention", "sdpa_cudnn", NAME, _loader("attention", "make_sdpa", "cudnn"),
               Constraints(dtypes=_HALF, max_head_dim=128, **att), tolerance=_BF16_TOL,
               available=_sdpa_available, description="cuDNN fused attention via SDPA (fastest measured on H100)"),
        OpImpl("attention", "flash_attn3", NAME, _loader("attention", "make_flash_attn", 3),
               Constraints(dtypes=_HALF, max_head_dim=256, lse=True, **att), tolerance=_BF16_TOL,
               available=_needs("flash_attn_interface", "FlashAttention 3, Hopper build"),
               description="FlashAttention 3 (flash_attn_interface)"),
        OpImpl("attention", "cudnn_lse", NAME, _loader("attention", "make_lse", "cudnn"),
               Constraints(dtypes=_HALF, max_head_dim=128, lse=True, **att), tolerance=_BF16_TOL,
               available=_cudnn_lse_available, description="cuDNN attention returning the log-sum-exp"),
        OpImpl("attention", "flash_attn2", NAME, _loader("attention", "make_flash_attn", 2),
               Constraints(dtypes=_HALF, max_head_dim=256, lse=True, **att), tolerance=_BF16_TOL,
               available=_flash_attn2_available, description="FlashAttention 2 (flash_attn)"),
        OpImpl("attention", "sdpa_flash", NAME, _loader("attention", "make_sdpa", "flash"),
               Constraints(dtypes=_HALF, max_head_dim=256, **att), tolerance=_BF16_TOL,
               available=_sdpa_available, description="FlashAttention-2 kernel inside SDPA"),
        OpImpl("attention", "flash_lse", NAME, _loader("attention", "make_lse", "flash"),
               Constraints(dtypes=_HALF, max_head_dim=256, lse=True, **att), tolerance=_BF16_TOL,
               available=_sdpa_available, description="SDPA's flash kernel returning the log-sum-exp"),
        OpImpl("attention", "sdpa_efficient", NAME, _loader("attention", "make_sdpa", "efficient"),
               Constraints(dtypes=_FLOATS, **att), tolerance=_BF16_TOL,
               available=_sdpa_available, description="memory-efficient attention via SDPA"),
        OpImpl("attention", "sageattn", NAME, _loader("attention", "make_sage"),
               Constraints(dtypes=_HALF, head_dims=frozenset({64, 128}), **att), exact=False,
               tolerance=3e-2, available=_needs("sageattention", "SageAttention"),
               description="SageAttention INT8 QK (lossy: only when a recipe names it)"),
        OpImpl("attention", "fp8_triton", NAME, _loader("fp8_attention", "make_fp8_attention"),
               Constraints(dtypes=_HALF, head_dims=frozenset({64, 128}), lse=True, schemes=frozenset({"fp8"}), **att),
               exact=False, tolerance=FP8_ATTENTION_TOLERANCE, available=_fp8_attention_available,
               description="FP8 e4m3 flash attention (Triton, sm90+): smoothed K, Q/K per 128-row block, V per "
                           "channel, P per 128-key block (quant.attention: fp8)"),
        OpImpl("attention", "fp8_cudnn", NAME, _loader("fp8_cudnn_attention", "make_cudnn_fp8_attention"),
               Constraints(dtypes=_HALF, head_dims=FP8_CUDNN_HEAD_DIMS, lse=False, schemes=frozenset({"fp8_tensor"}),
                           **att),
               exact=False, tolerance=FP8_ATTENTION_TOLERANCE, available=_fp8_cudnn_attention_available,
               description="cuDNN FP8 flash attention (nvidia-cudnn-frontend sdpa_fp8, sm90+), one call per (sample, "
                           "head): e4m3 Q/K/V/O with one scale per (sample, head), no LSE (quant.attention: fp8_tensor)"),
        # the memory-bound parts of a block, Triton
        OpImpl("qk_norm_rope", "triton", NAME, _loader("qk_norm_rope", "qk_norm_rope"),
               Constraints(dtypes=_FLOATS, **att), available=_TRITON, tolerance=_BF16_TOL,
               description="q/k RMSNorm over the full dim + RoPE + cast, one pass"),
        OpImpl("rms_norm", "triton", NAME, _loader("rms_norm", "rms_norm"),
               Constraints(dtypes=_FLOATS, out_dtype=True, **att), available=_TRITON, tolerance=_BF16_TOL,
               description="RMSNorm, float32 statistics"),
        OpImpl("layer_norm", "triton", NAME, _loader("layer_norm", "layer_norm"),
               Constraints(dtypes=_FLOATS, out_dtype=True, **att), available=_TRITON, tolerance=_BF16_TOL,
               description="LayerNorm (optional affine), float32 statistics"),
        OpImpl("layer_norm_modulate", "triton", NAME, _loader("layer_norm_modulate", "layer_norm_modulate"),
               Constraints(dtypes=_FLOATS, out_dtype=True, **att), available=_TRITON, tolerance=_BF16_TOL,
               description="LayerNorm * (1 + scale) + shift, one pass"),
        OpImpl("add_layer_norm_modulate", "triton", NAME, _loader("add_layer_norm_modulate", "add_layer_norm_modulate"),
               Constraints(dtypes=_FLOATS, **att), available=_TRITON, tolerance=_BF16_TOL,
               description="x + y, then LayerNorm * (1 + scale) + shift of the sum, one pass"),
        OpImpl("linear_gelu", "cublaslt_epilogue", NAME, _loader("linear_gelu", "linear_gelu"),
               Constraints(dtypes=_HALF, **att), tolerance=_BF16_TOL,
               available=lambda: (hasattr(torch, "_addmm_activation"), "torch lacks _addmm_activation"),
               description="one GEMM with a tanh-GELU epilogue"),
        OpImpl("gated_residual", "triton", NAME, _loader("gated_residual", "gated_residual"),
               Constraints(dtypes=_FLOATS, **att), available=_TRITON, tolerance=_BF16_TOL,
               description="x + y * gate, in place into the float32 stream"),
        # quantized Linears (docs/quantization.md): FP8 e4m3 GEMMs, bf16 out (what _scaled_mm's
        # row-wise kernels return); activations quantized in the kernel that produces them
        OpImpl("quant_linear", "fp8_rowwise_scaled_mm", NAME, _loader("quant_linear", "make_fp8", "fp8_rowwise"),
               Constraints(dtypes=frozenset({torch.bfloat16}), schemes=frozenset({"fp8_rowwise"}), **att),
               exact=False, tolerance=QUANT_TOLERANCE["fp8_rowwise"], available=_fp8_available(True),
               description="FP8 e4m3 GEMM with per-channel weight / per-token activation scales (torch._scaled_mm); "
                           "activations quantized in the adaLN norm and GELU kernels"),
        OpImpl("quant_linear", "fp8_tensor_scaled_mm", NAME, _loader("quant_linear", "make_fp8", "fp8_tensor"),
               Constraints(dtypes=frozenset({torch.bfloat16}), schemes=frozenset({"fp8_tensor"}), **att),
               exact=False, tolerance=QUANT_TOLERANCE["fp8_tensor"], available=_fp8_available(False),
               description="FP8 e4m3 GEMM with one scale per tensor (torch._scaled_mm; sm89+)"),
        OpImpl("channel_rms_norm", "triton", NAME, _loader("channel_rms_norm", "channel_rms_norm"),
               Constraints(dtypes=_FLOATS, **att), available=_TRITON, tolerance=_BF16_TOL,
               description="VAE RMS norm over channels (+SiLU), one pass on channels-last data"),
    ])
