"""pluggy hook implementations of the Ascend backend. Never imports torch_npu at import time.

Availability is judged without importing torch_npu (the backend's environment defaults must be in
``os.environ`` before torch_npu initialises): if something already imported it (torch >= 2.5
autoloads it, or a test put an emulation in ``sys.modules``) ``torch.npu.is_available()`` is asked;
otherwise the package must be installed, the host must have NPU device nodes and CANN's
environment must be loaded. ``start()`` imports torch_npu (with one clear error naming CANN's
``set_env.sh`` when that fails) and returns the :class:`~wanport_ascend.runtime.AscendRuntime`.

Op implementations are offered to the resolver only once torch_npu is imported and its installed
schemas take every keyword the implementation passes (``schema.requires``).
"""

from __future__ import annotations

import importlib.util

import torch

from wanport.ops.impl import AtLoad, Constraints, OpImpl, lazy
from wanport.ops.quant import QUANT_TOLERANCE
from wanport.registry import BackendSpec, hookimpl

from .schema import detect, host_status, loaded_torch_npu, requires, requires_all

NAME = "ascend"

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32})
_HALF = frozenset({torch.float16, torch.bfloat16})
_NPU = frozenset({"npu"})

#: Which implementation the resolver prefers where several fit — the one place that decides the
#: default. The relative speed on Ascend hardware has NOT been measured (no NPU was available):
#: npu_fusion_attention in BSND goes first because it needs no transposes for Wan's [B, S, N, D]
#: q/k/v; BNSD (the kernel's own order, as MindIE runs it) second; FIA last but chosen
#: automatically where the log-sum-exp is needed (ring attention), which only it returns.
#: Re-rank here after measuring (e.g. `wanport bench dit --backend ascend --ops attention=...`).
PRIORITY = {
    ("attention", "fusion_attention"): 30,
    ("attention", "fusion_attention_bnsd"): 20,
    ("attention", "fused_infer_attention"): 10,
    ("rotary", "rotary_mul"): 20,  # interleave mode (torch_npu with rotary_mode)
    ("rotary", "rotary_mul_half"): 10,  # older torch_npu: pairs reordered to half mode
    ("rms_norm", "rms_norm"): 20,
    ("layer_norm", "layer_norm_eval"): 20,
    ("layer_norm_modulate", "layer_norm_eval"): 20,
    # one implementation per scheme, so no ranking between them (the recipe's quant.dit picks)
    ("quant_linear", "dynamic_quant_matmul"): 20,  # int8_w8a8
    ("quant_linear", "weight_quant_batchmatmul"): 20,  # int8_w8a16
}

#: declared bound per implementation: relative L2 error against a float64 evaluation of the
#: contract, for bf16 tensors (bf16 rounding of inputs/outputs; float32 does far better)
_BF16_TOL = 1e-2

#: head dims each kernel accepts: npu_fusion_attention's oldest documented set (op-plugin 6.0.x:
#: {64, 80, 96, 120, 128, 256}; 1..768 since 7.0.0), FIA D <= 512 with 16-byte alignment for
#: fp16/bf16, rotary D even and < 896 (multiple of 64 in the oldest half-mode-only builds). Wan
#: uses D = 128 everywhere.
_FA_HEAD_DIMS = frozenset({64, 80, 96, 120, 128, 256})
_FIA_HEAD_DIMS = frozenset(range(8, 513, 8))
_ROPE_HEAD_DIMS = frozenset(range(2, 896, 2))
_ROPE_HALF_HEAD_DIMS = frozenset(range(64, 896, 64))

ENV_DEFAULTS = {
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "TASK_QUEUE_ENABLE": "2",
    "CPU_AFFINITY_CONF": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _available():
    mod = loaded_torch_npu()
    if mod is None:
        if importlib.util.find_spec("torch_npu") is None:
            return False, ("torch_npu is not installed (Ascend hosts: pip install the torch_npu wheel matching "
                           "torch %s, then source CANN's set_env.sh)" % torch.__version__)
        return host_status()
    npu = getattr(torch, "npu", None) or getattr(mod, "npu", None)
    if npu is None:
        return False, "torch_npu is imported but registered no torch.npu module"
    try:
        if not npu.is_available():
            return False, "torch_npu found no NPU device (torch.npu.is_available() is False)"
    except Exception as exc:  # CANN missing or broken
        return False, "torch.npu.is_available() failed: %s: %s" % (type(exc).__name__, exc)
    return True, ""


def _start():
    from .runtime import start_runtime

    return start_runtime()


def _versions():
    mod = loaded_torch_npu()
    if mod is None:
        return {"torch_npu": "not imported"}
    from .runtime import cann_version

    ops = detect(mod)
    return {"torch_npu": str(getattr(mod, "__version__", "unknown")), "cann": cann_version(mod),
            "npu_ops": ops.describe() if ops is not None else "unknown"}


@hookimpl
def wanport_backends():
    return [
        BackendSpec(
            name=NAME,
            device_type="npu",
            dist_backend="hccl",
            start=_start,
            is_available=_available,
            env_defaults=dict(ENV_DEFAULTS),
            priority=100,
            description="Huawei Ascend NPUs through torch_npu's fused kernels (FlashAttentionScore, RotaryMul, "
                        "RmsNorm, LayerNorm)",
            versions=_versions,
        )
    ]


def _npu_op(op: str) -> AtLoad:
    """``torch_npu.<op>``, looked up when the implementation loads (bound once, not per call)."""

    def get():
        from .schema import import_torch_npu

        return getattr(import_torch_npu(), op)

    return AtLoad(get)


def _loader(module: str, factory: str, op: str, *args):
    """Load = build the implementation around ``torch_npu.<op>``."""
    return lazy(".%s:%s" % (module, factory), _npu_op(op), *args, package=__package__)


def _vendor_loader(module: str, factory: str):
    """Load = build the implementation from the torch_npu module (for kinds that bind several ops)."""

    def load():
        from .schema import import_torch_npu

        torch_npu = import_torch_npu()
        return getattr(importlib.import_module("%s.%s" % (__package__, module)), factory)(torch_npu)

    return load


_FA_ARGS = ("atten_mask", "scale", "keep_prob", "pre_tockens", "next_tockens", "inner_precise", "sparse_mode")
_FIA_ARGS = ("num_heads", "num_key_value_heads", "input_layout", "scale", "sparse_mode", "inner_precise",
             "softmax_lse_flag", "actual_seq_lengths_kv")


def _impl(kind, name, loader, constraints, available, description, exact=True, tolerance=_BF16_TOL):
    return OpImpl(kind, name, NAME, loader, constraints, priority=PRIORITY[(kind, name)], description=description,
                  available=available, tolerance=tolerance, exact=exact)


@hookimpl
def wanport_op_impls():
    npu = dict(device_types=_NPU)
    norm = Constraints(dtypes=_FLOATS, out_dtype=True, **npu)
    return [
        _impl("attention", "fusion_attention", _loader("attention", "make_fusion_attention", "npu_fusion_attention", "BSND"),
              Constraints(dtypes=_FLOATS, head_dims=_FA_HEAD_DIMS, **npu),
              requires("npu_fusion_attention", *_FA_ARGS),
              "npu_fusion_attention, BSND (no transposes), atten_mask for unequal kv lengths"),
        _impl("attention", "fusion_attention_bnsd", _loader("attention", "make_fusion_attention", "npu_fusion_attention", "BNSD"),
              Constraints(dtypes=_FLOATS, head_dims=_FA_HEAD_DIMS, **npu),
              requires("npu_fusion_attention", *_FA_ARGS),
              "npu_fusion_attention, BNSD (the kernel's order; transposes in and out)"),
        _impl("attention", "fused_infer_attention",
              _loader("attention", "make_fused_infer_attention", "npu_fused_infer_attention_score"),
              Constraints(dtypes=_HALF, head_dims=_FIA_HEAD_DIMS, lse=True, **npu),
              requires("npu_fused_infer_attention_score", *_FIA_ARGS),
              "npu_fused_infer_attention_score, BSND, kv lengths via actual_seq_lengths_kv, log-sum-exp"),
        _impl("rotary", "rotary_mul", _loader("rotary", "make_rotary_interleave", "npu_rotary_mul"),
              Constraints(dtypes=_FLOATS, head_dims=_ROPE_HEAD_DIMS, **npu),
              requires("npu_rotary_mul", "rotary_mode"),
              "npu_rotary_mul interleave mode, float32 1S1D cos/sin (views of the model's tables)"),
        _impl("rotary", "rotary_mul_half", _loader("rotary", "make_rotary_half", "npu_rotary_mul"),
              Constraints(dtypes=_FLOATS, head_dims=_ROPE_HALF_HEAD_DIMS, **npu),
              requires("npu_rotary_mul"),
              "npu_rotary_mul half mode on pairs reordered to halves (torch_npu without rotary_mode)"),
        _impl("rms_norm", "rms_norm", _loader("rms_norm", "make_rms_norm", "npu_rms_norm"),
              norm, requires("npu_rms_norm", "epsilon"),
              "npu_rms_norm(x, gamma, epsilon)[0], one dtype per call"),
        _impl("layer_norm", "layer_norm_eval", _loader("layer_norm", "make_layer_norm", "npu_layer_norm_eval"),
              norm, requires("npu_layer_norm_eval", "normalized_shape", "weight", "bias", "eps"),
              "npu_layer_norm_eval with the [C] affine parameters"),
        _impl("layer_norm_modulate", "layer_norm_eval",
              _loader("layer_norm_modulate", "make_layer_norm_modulate", "npu_layer_norm_eval"),
              Constraints(dtypes=_FLOATS, out_dtype=True, batch_gt1=False, per_token_modulation=False, **npu),
              requires("npu_layer_norm_eval", "normalized_shape", "weight", "bias", "eps"),
              "npu_layer_norm_eval with weight = 1 + scale, bias = shift (one modulation row)"),
        # quantized Linears (Atlas A2: INT8 only, no FP8). Lossy by the recipe's request (quant.dit);
        # declared tolerance: the scheme's (vs the unquantized float64 Linear, wanport.ops.quant); against
        # the reference emulation of the scheme they differ by bf16 rounding of the output (and, W8A16,
        # of the weight scale), which tests/test_ascend_quant.py bounds
        _impl("quant_linear", "dynamic_quant_matmul", _vendor_loader("quant_linear", "make_w8a8"),
              Constraints(dtypes=_HALF, schemes=frozenset({"int8_w8a8"}), **npu),
              requires_all(requires("npu_dynamic_quant", "dst_type"),
                           requires("npu_quant_matmul", "pertoken_scale", "bias", "output_dtype")),
              "int8_w8a8: npu_dynamic_quant per token + npu_quant_matmul (per-channel fp32 weight scale)",
              exact=False, tolerance=QUANT_TOLERANCE["int8_w8a8"]),
        _impl("quant_linear", "weight_quant_batchmatmul", _vendor_loader("quant_linear", "make_w8a16"),
              Constraints(dtypes=_HALF, schemes=frozenset({"int8_w8a16"}), **npu),
              requires("npu_weight_quant_batchmatmul", "bias"),
              "int8_w8a16: npu_weight_quant_batchmatmul (per-channel antiquant_scale in x's dtype)",
              exact=False, tolerance=QUANT_TOLERANCE["int8_w8a16"]),
    ]
