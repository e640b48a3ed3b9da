"""torch_npu schema eras the emulation reproduces: the op schemas exactly as each release
registers them, plus the per-release constraints the kernels check.

Schema strings are copied verbatim from Ascend/op-plugin ``op_plugin/config/op_plugin_functions.yaml``
(branch named per era; for 6.0.rc2 the torch-2.1 file ``op_plugin/config/v2r1/op_plugin_functions.yaml``).
The quantisation ops' constraints (dtype tables, shapes, layouts) come from the same branches'
``codegen/templates/_op_plugin_docs.py`` (6.0.rc2, 7.0.0) and ``docs/en/custom_APIs/torch_npu/
torch_npu-npu_{dynamic_quant,quant_matmul,weight_quant_batchmatmul}.md`` (26.0.0), the output
shape and the x2 transpose rule from ``op_plugin/ops/opapi/QuantMatmulKernelNpuOpApi.cpp``.
torch_npu does not register them verbatim: its codegen (Ascend/pytorch ``codegen/custom_functions.py``,
``compute_register_symbol`` / ``RegisterCustomSchema``) rewrites the argument name ``self`` to
``input`` — ``re.sub(r'\\bself\\b(?=[,\\)])', 'input', func_schema)`` — since the 2024-08-20 change
"Custom operators support input keyword arguments" (present on v2.1.0-6.0.rc3 and every later
branch, absent on v2.1.0-6.0.rc2). So ``npu_rms_norm(self=...)`` binds on 2.1.0.post6 and fails on
2.1.0.post12 and later, where ``input=`` binds. ``Era.registered`` applies the same rewrite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

_FA_60 = ("npu_fusion_attention(Tensor query, Tensor key, Tensor value, int head_num, str input_layout, "
          "Tensor? pse=None, Tensor? padding_mask=None, Tensor? atten_mask=None, float scale=1., "
          "float keep_prob=1., int pre_tockens=2147483647, int next_tockens=2147483647, int inner_precise=0, "
          "int[]? prefix=None, int[]? actual_seq_qlen=None, int[]? actual_seq_kvlen=None, int sparse_mode=0, "
          "bool gen_mask_parallel=True, bool sync=False) -> (Tensor, Tensor, Tensor, Tensor, int, int, int)")
_FA_26 = ("npu_fusion_attention(Tensor query, Tensor key, Tensor value, int head_num, str input_layout, "
          "Tensor? pse=None, Tensor? padding_mask=None, Tensor? atten_mask=None, float scale=1., "
          "float keep_prob=1., int pre_tockens=2147483647, int next_tockens=2147483647, int inner_precise=0, "
          "int[]? prefix=None, int[]? actual_seq_qlen=None, int[]? actual_seq_kvlen=None, int sparse_mode=0, "
          "bool gen_mask_parallel=True, bool sync=False, str softmax_layout=\"\", Tensor? sink=None, "
          "Tensor? dropout_mask=None, int seed=0, int offset=0) -> (Tensor, Tensor, Tensor, Tensor, int, int, int)")

_FIA_HEAD = ("npu_fused_infer_attention_score(Tensor query, Tensor key, Tensor value, *, Tensor? pse_shift=None, "
             "Tensor? atten_mask=None, SymInt[]? actual_seq_lengths=None, SymInt[]? actual_seq_lengths_kv=None, "
             "Tensor? dequant_scale1=None, Tensor? quant_scale1=None, Tensor? dequant_scale2=None, "
             "Tensor? quant_scale2=None, Tensor? quant_offset2=None, Tensor? antiquant_scale=None, "
             "Tensor? antiquant_offset=None, Tensor? key_antiquant_scale=None, Tensor? key_antiquant_offset=None, "
             "Tensor? value_antiquant_scale=None, Tensor? value_antiquant_offset=None, Tensor? block_table=None, "
             "Tensor? query_padding_size=None, Tensor? kv_padding_size=None, Tensor? key_shared_prefix=None, "
             "Tensor? value_shared_prefix=None, SymInt[]? actual_shared_prefix_len=None, ")
_FIA_TAIL = ("int num_heads=1, float scale=1.0, int pre_tokens=2147483647, int next_tokens=2147483647, "
             "str input_layout=\"BSH\", int num_key_value_heads=0, int sparse_mode=0, int inner_precise=0, "
             "int block_size=0, int antiquant_mode=0, int key_antiquant_mode=0, int value_antiquant_mode=0, "
             "bool softmax_lse_flag=False) -> (Tensor, Tensor)")
_FIA_60 = _FIA_HEAD + _FIA_TAIL
_FIA_70 = _FIA_HEAD + "Tensor? query_rope=None, Tensor? key_rope=None, Tensor? key_rope_antiquant_scale=None, " + _FIA_TAIL

_RMS = "npu_rms_norm(Tensor self, Tensor gamma, float epsilon=1e-06) -> (Tensor, Tensor)"
_LNE = ("npu_layer_norm_eval(Tensor input, int[] normalized_shape, Tensor? weight=None, Tensor? bias=None, "
        "float eps=1e-05) -> Tensor")
_ROT_60 = "npu_rotary_mul(Tensor self, Tensor r1, Tensor r2) -> Tensor"
_ROT_70 = "npu_rotary_mul(Tensor self, Tensor r1, Tensor r2, str rotary_mode='half') -> Tensor"
_ROT_26 = "npu_rotary_mul(Tensor self, Tensor r1, Tensor r2, str rotary_mode='half', Tensor? rotate=None) -> Tensor"

# Quantisation ops (the torch-2.1 builds' yaml for 6.0.rc2 as above; op_api entries of the main yaml
# for 7.0.0 and 26.0.0). op-plugin 7.0.0 added group_index/dst_type to npu_dynamic_quant; 26.0.0
# typed the dtype arguments `int?` (the dispatcher binds a torch.dtype to its ScalarType code there)
# and added quant_mode/dst_type_max, the x1/x2/scale dtype overrides, group_sizes and y_scale.
_DQ_60 = "npu_dynamic_quant(Tensor input, *, Tensor? smooth_scales=None) -> (Tensor, Tensor)"
_DQ_70 = ("npu_dynamic_quant(Tensor input, *, Tensor? smooth_scales=None, Tensor? group_index=None, "
          "ScalarType? dst_type=None) -> (Tensor, Tensor)")
_DQ_26 = ("npu_dynamic_quant(Tensor input, *, Tensor? smooth_scales=None, Tensor? group_index=None, "
          "int? dst_type=None, str quant_mode=\"pertoken\", float dst_type_max=0.0) -> (Tensor, Tensor)")
_QMM_60 = ("npu_quant_matmul(Tensor x1, Tensor x2, Tensor scale, *, Tensor? offset=None, Tensor? pertoken_scale=None, "
           "Tensor? bias=None, ScalarType? output_dtype=None) -> Tensor")
_QMM_26 = ("npu_quant_matmul(Tensor x1, Tensor x2, Tensor scale, *, Tensor? offset=None, Tensor? pertoken_scale=None, "
           "Tensor? bias=None, int? output_dtype=None, int? x1_dtype=None, int? x2_dtype=None, "
           "int? pertoken_scale_dtype=None, int? scale_dtype=None, int[]? group_sizes=None, "
           "Tensor? y_scale=None) -> Tensor")
_WQB_HEAD = ("npu_weight_quant_batchmatmul(Tensor x, Tensor weight, Tensor antiquant_scale, "
             "Tensor? antiquant_offset=None, Tensor? quant_scale=None, Tensor? quant_offset=None, Tensor? bias=None, "
             "int antiquant_group_size=0")
_WQB_60 = _WQB_HEAD + ") -> Tensor"
_WQB_70 = _WQB_HEAD + ", int inner_precise=0) -> Tensor"
_WQB_26 = _WQB_HEAD + ", int inner_precise=0, int? weight_dtype=None) -> Tensor"

_SELF = re.compile(r"\bself\b(?=[,\)])")


@dataclass(frozen=True)
class Era:
    key: str  # short name used by tests
    torch_npu: str  # a torch_npu release of this era
    op_plugin: str  # the op-plugin branch the schemas come from
    namespace: str  # private torch.ops namespace of the emulated ops
    renames_self: bool  # torch_npu's codegen registers `self` as `input`
    schemas: Mapping[str, str]
    fa_head_dims: Optional[FrozenSet[int]]  # None: 1..768
    layout_case_insensitive: bool  # npu_fusion_attention upper-cases input_layout (op-plugin >= 6.0.0)
    rotary_ndims: Tuple[int, ...]  # x ranks npu_rotary_mul accepts
    rotary_d_multiple: int  # D must be a multiple of this (64 in the 6.0 docs; even later)
    rotary_any_broadcast: bool  # 6.0 docs: r1/r2 broadcast on any axis but the last
    rms_mixed_gamma: bool  # fp32 gamma with fp16/bf16 x accepted (newest docs); else same dtype
    #: npu_quant_matmul's dtype table of the 6.0.rc2 docs: a bfloat16 output needs a bfloat16 scale,
    #: bias only int32/bfloat16 (bfloat16 only with a bfloat16 output); 7.0.0 on: float32/bfloat16
    #: scale and int32/bfloat16/float32 bias for a bfloat16 output
    qmm_bf16_scale_only: bool = False
    notes: str = ""

    def registered(self) -> Dict[str, str]:
        """Each schema as torch_npu registers it in the dispatcher."""
        if not self.renames_self:
            return dict(self.schemas)
        return {op: _SELF.sub("input", s) for op, s in self.schemas.items()}

    @property
    def has_rotary_mode(self) -> bool:
        return "rotary_mode" in self.schemas["npu_rotary_mul"]


ERAS: Dict[str, Era] = {
    "v6rc2": Era(
        key="v6rc2", torch_npu="2.1.0.post6", op_plugin="6.0.rc2", namespace="npu_emu_v6rc2", renames_self=False,
        schemas={"npu_fusion_attention": _FA_60, "npu_fused_infer_attention_score": _FIA_60,
                 "npu_rotary_mul": _ROT_60, "npu_rms_norm": _RMS, "npu_layer_norm_eval": _LNE,
                 "npu_dynamic_quant": _DQ_60, "npu_quant_matmul": _QMM_60, "npu_weight_quant_batchmatmul": _WQB_60},
        fa_head_dims=frozenset({64, 80, 96, 120, 128, 256}), layout_case_insensitive=False,
        rotary_ndims=(4,), rotary_d_multiple=64, rotary_any_broadcast=True, rms_mixed_gamma=False,
        qmm_bf16_scale_only=True,
        notes="torch 2.1 + torch_npu 2.1.0.post6 (CANN 8.0.RC2): rotary half mode only, `self` keywords"),
    "v7": Era(
        key="v7", torch_npu="2.1.0.post12", op_plugin="7.0.0", namespace="npu_emu_v7", renames_self=True,
        schemas={"npu_fusion_attention": _FA_60, "npu_fused_infer_attention_score": _FIA_70,
                 "npu_rotary_mul": _ROT_70, "npu_rms_norm": _RMS, "npu_layer_norm_eval": _LNE,
                 "npu_dynamic_quant": _DQ_70, "npu_quant_matmul": _QMM_60, "npu_weight_quant_batchmatmul": _WQB_70},
        fa_head_dims=None, layout_case_insensitive=True,
        rotary_ndims=(4,), rotary_d_multiple=2, rotary_any_broadcast=False, rms_mixed_gamma=False,
        notes="torch 2.1 + torch_npu 2.1.0.post12 (CANN 8.1.RC1): the field's torch-2.1 stack"),
    "v26": Era(
        key="v26", torch_npu="2.8.0.post4", op_plugin="26.0.0", namespace="npu_emu_v26", renames_self=True,
        schemas={"npu_fusion_attention": _FA_26, "npu_fused_infer_attention_score": _FIA_70,
                 "npu_rotary_mul": _ROT_26, "npu_rms_norm": _RMS, "npu_layer_norm_eval": _LNE,
                 "npu_dynamic_quant": _DQ_26, "npu_quant_matmul": _QMM_26, "npu_weight_quant_batchmatmul": _WQB_26},
        fa_head_dims=None, layout_case_insensitive=True,
        rotary_ndims=(3, 4), rotary_d_multiple=2, rotary_any_broadcast=False, rms_mixed_gamma=True,
        notes="torch 2.8 + torch_npu 2.8.0.post4 (CANN 9.0.0): current schemas"),
}
