"""The Ascend backend's op implementations on the emulated torch_npu, against wanport's reference
implementations, for the shapes and dtypes the DiT uses, on every emulated torch_npu era."""

from __future__ import annotations

import pytest
import torch

import wanport_ascend.attention as npu_attention
from npu_emulation import ERAS, installed
from wanport.errors import BackendError
from wanport.models.dit import DiTConfig
from wanport.models.dit.requirements import dit_requirements
from wanport.models.dit.rope import rope_tables
from wanport.ops.quant import QUANT_TOLERANCE
from wanport.precision import PRESETS
from wanport.reference.attention import attention_math
from wanport.reference.layer_norm_modulate import layer_norm_modulate as ref_modulate
from wanport.reference.rotary import rotary as ref_rotary
from wanport.registry import discover, resolve_ops
from wanport.testing import BackendConformance

ALL = sorted(ERAS)
BF16, F32 = torch.bfloat16, torch.float32
D = 128  # every Wan model's head dim
ASCEND_SITES = ("self_attention", "cross_attention", "rotary", "rms_norm", "layer_norm", "layer_norm_modulate",
                "add_layer_norm_modulate", "qk_norm_rope")


@pytest.fixture(scope="module")
def registry():
    return discover()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def get_impl(registry, kind, name):
    return next(i for i in registry.impls if i.backend == "ascend" and i.kind == kind and i.name == name)


def tol(impl, dtype):
    return impl.tolerance if dtype != F32 else 1e-5


def randn(*shape, dtype=F32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ------------------------------------------------------------------ the conformance kit, on every era


class TestAscendConformance(BackendConformance):
    """Every Ascend implementation against its op contract and the float64 reference, over the
    contract's shapes and dtypes inside its declared constraints, on each emulated torch_npu era
    (wanport.testing; an implementation an era cannot offer is skipped with the reason)."""

    backend = "ascend"
    contexts = {era: (lambda era=era: installed(era)) for era in ALL}


def test_rotary_interleave_needs_rotary_mode(registry):
    impl = get_impl(registry, "rotary", "rotary_mul")
    for era in ALL:
        with installed(era):
            ok, why = impl.available()
            assert ok == ERAS[era].has_rotary_mode, era
            assert ok or "rotary_mode" in why


# ------------------------------------------------------------------ attention


class Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


def test_fusion_attention_call_mask_polarity_and_paths(monkeypatch):
    with installed("v7") as npu:
        spy = Spy(npu.npu_fusion_attention)
        fn = npu_attention.make_fusion_attention(spy, "BSND")
        q, k, v = (randn(2, 6, 3, D, dtype=BF16, seed=s) for s in range(3))
        fn(q, k, v, scale=0.125)
        args, kw = spy.calls[-1]
        assert args[3:] == (3, "BSND") and type(args[3]) is int
        assert kw == dict(atten_mask=None, scale=0.125, keep_prob=1.0, pre_tockens=2147483647,
                          next_tockens=2147483647, inner_precise=0, sparse_mode=0)
        fn(q, k, v, scale=0.125, kv_lens=[6, 4])
        mask = spy.calls[-1][1]["atten_mask"]
        assert mask.dtype == torch.bool and mask.shape == (2, 1, 6, 6)  # B1SS, the kernel's polarity:
        assert mask[1, 0, :, 4:].all() and not mask[1, 0, :, :4].any() and not mask[0].any()  # True = masked
        fn(q, k, v, scale=0.125, kv_lens=[6, 4])
        assert spy.calls[-1][1]["atten_mask"] is mask  # built once per (lengths, shape)
        fn(q, k, v, scale=0.125, kv_lens=[5, 5])  # equal lengths: sliced keys, no mask
        args, kw = spy.calls[-1]
        assert kw["atten_mask"] is None and args[1].shape[1] == 5
        monkeypatch.setattr(npu_attention, "_MASK_BUDGET_BYTES", 0)  # big masks: one call per sample
        n0 = len(spy.calls)
        out = fn(q, k, v, scale=0.125, kv_lens=[6, 4])
        assert [c[0][1].shape[1] for c in spy.calls[n0:]] == [6, 4]
        assert all(c[1]["atten_mask"] is None for c in spy.calls[n0:])
        assert rel(out, attention_math(q, k, v, scale=0.125, kv_lens=[6, 4])) < 1e-2
        bnsd = npu_attention.make_fusion_attention(spy, "BNSD")
        bnsd(q, k, v, scale=0.125)
        assert spy.calls[-1][0][0].shape == (2, 3, 6, D) and spy.calls[-1][0][4] == "BNSD"


def test_fused_infer_attention_call():
    with installed("v26") as npu:
        spy = Spy(npu.npu_fused_infer_attention_score)
        fn = npu_attention.make_fused_infer_attention(spy)
        q, k, v = (randn(2, 6, 3, D, dtype=BF16, seed=s) for s in range(3))
        out, lse = fn(q, k, v, scale=0.125, kv_lens=[6, 2], return_lse=True)
        args, kw = spy.calls[-1]
        assert len(args) == 3 and kw["num_heads"] == 3 and kw["input_layout"] == "BSND"
        assert kw["actual_seq_lengths_kv"] == [6, 2] and kw["softmax_lse_flag"] is True and kw["scale"] == 0.125
        fn(q, k, v, scale=0.125)
        assert "actual_seq_lengths_kv" not in spy.calls[-1][1] and spy.calls[-1][1]["softmax_lse_flag"] is False


# ------------------------------------------------------------------ rotary


def test_rotary_interleave_large_batch_heads_go_in_chunks():
    with installed("v7") as npu:
        from wanport_ascend.rotary import make_rotary_interleave

        spy = Spy(npu.npu_rotary_mul)
        fn = make_rotary_interleave(spy)
        cos, sin = rope_tables((1, 1, 3), D)
        q = randn(3, 3, 400, D, seed=6)  # B * N = 1200 >= 1000
        qo, _ = fn(q, q, cos, sin)
        assert [c[0][0].shape[0] for c in spy.calls] == [2, 1, 2, 1]  # per tensor: batches of 2 (2*400 < 1000)
        assert spy.calls[0][0][1].shape == (1, 3, 1, D) and spy.calls[0][1] == {"rotary_mode": "interleave"}
        assert spy.calls[0][0][1].dtype == F32
        assert rel(qo, ref_rotary(q, q, cos, sin)[0]) < 1e-5


def test_rotary_half_tables_built_once_per_table_pair():
    with installed("v6rc2") as npu:
        from wanport_ascend.rotary import make_rotary_half

        spy = Spy(npu.npu_rotary_mul)
        fn = make_rotary_half(spy)
        cos, sin = rope_tables((1, 2, 2), D)
        q = randn(1, 4, 2, D, seed=7)
        fn(q, q, cos, sin)
        fn(q, q, cos, sin)
        tables = {id(c[0][1]) for c in spy.calls}
        assert len(tables) == 1 and all(len(c[0]) == 3 and not c[1] for c in spy.calls)  # no rotary_mode


# ------------------------------------------------------------------ norms


@pytest.mark.parametrize("xdt,out", [(BF16, None), (F32, BF16)])
def test_layer_norm_modulate_passes_one_modulation_row_as_the_affine_parameters(registry, xdt, out):
    impl = get_impl(registry, "layer_norm_modulate", "layer_norm_eval")
    assert not impl.constraints.batch_gt1 and not impl.constraints.per_token_modulation
    with installed("v7") as npu:
        spy = Spy(npu.npu_layer_norm_eval)
        from wanport_ascend.layer_norm_modulate import make_layer_norm_modulate

        fn = make_layer_norm_modulate(spy)
        x = randn(1, 20, 512, dtype=xdt, seed=13)
        shift = 0.3 * randn(1, 1, 512, seed=14)
        scale = 0.3 * randn(1, 1, 512, seed=15)
        y = fn(x, shift, scale, 1e-6, out_dtype=out)
        ref = ref_modulate(x, shift, scale, 1e-6, out_dtype=out)
        assert y.dtype == ref.dtype and rel(y, ref) < tol(impl, BF16 if BF16 in (xdt, out) else F32)
        args, kw = spy.calls[-1]
        assert args[1] == [512] and args[2].shape == (512,) and args[3].shape == (512,)  # [C], not [1, 1, C]
        assert torch.equal(args[2], 1 + scale.reshape(512)) and kw == {"eps": 1e-6}


@pytest.mark.parametrize("per_token", [False, True])
def test_layer_norm_modulate_more_rows_than_one_fall_back_to_f_layer_norm(registry, per_token):
    """The kernel would apply sample 0's modulation to every sample (see test_npu_emulation)."""
    with installed("v7") as npu:
        spy = Spy(npu.npu_layer_norm_eval)
        from wanport_ascend.layer_norm_modulate import make_layer_norm_modulate

        fn = make_layer_norm_modulate(spy)
        x = randn(2, 20, 512, dtype=BF16, seed=16)
        rows = (2, 20) if per_token else (2, 1)
        shift, scale = randn(*rows, 512, seed=17), randn(*rows, 512, seed=18)
        y = fn(x, shift, scale, 1e-6, out_dtype=BF16)
        assert not spy.calls
        assert torch.equal(y, ref_modulate(x, shift, scale, 1e-6, out_dtype=BF16))
        shared = fn(x, shift[:1, :1], scale[:1, :1], 1e-6)  # one row shared by the batch: the kernel is right
        assert len(spy.calls) == 1 and rel(shared, ref_modulate(x, shift[:1, :1], scale[:1, :1], 1e-6)) < 1e-2


# ------------------------------------------------------------------ resolution


CFG = DiTConfig(dim=512, ffn_dim=1024, num_heads=4, num_layers=1)


def reqs(policy="official", **kw):
    return dit_requirements(CFG, PRESETS[policy], "npu", **kw)


@pytest.mark.parametrize("era", ALL)
def test_resolution_per_era_and_requirements(registry, era):
    spec = registry.backends["ascend"]
    with installed(era):
        t = resolve_ops(registry, spec, reqs())
        rotary = "ascend.rotary_mul" if ERAS[era].has_rotary_mode else "ascend.rotary_mul_half"
        table = t.describe()
        assert {site: table[site] for site in ASCEND_SITES} == {
            "self_attention": "ascend.fusion_attention", "cross_attention": "ascend.fusion_attention",
            "rotary": rotary, "rms_norm": "ascend.rms_norm", "layer_norm": "ascend.layer_norm_eval",
            "layer_norm_modulate": "ascend.layer_norm_eval",
            "add_layer_norm_modulate": "composed(ascend.layer_norm_eval)",
            "qk_norm_rope": "composed(ascend.rms_norm, %s)" % rotary}
        assert all(table[s].startswith("reference.") for s in table if s not in ASCEND_SITES), table
        assert all(getattr(t, s).why == "default" for s in ("self_attention", "rotary", "rms_norm", "layer_norm"))
        # per-token timesteps or batch > 1: the modulate kernel would collapse to sample 0 -> F.layer_norm
        for kw in ({"per_token_timesteps": True}, {"batch_gt1": True}):
            t = resolve_ops(registry, spec, reqs(**kw))
            assert t.layer_norm_modulate.impl == "reference.torch" and "fallback" in t.layer_norm_modulate.why
            assert t.add_layer_norm_modulate.impl == "composed(reference.torch)"
            assert t.self_attention.impl == "ascend.fusion_attention" and t.rms_norm.impl == "ascend.rms_norm"
        # ring attention needs the log-sum-exp: FIA
        t = resolve_ops(registry, spec, reqs(ring_lse=True, padded_keys=True))
        assert t.self_attention.impl == "ascend.fused_infer_attention"
        assert t.cross_attention.impl == "ascend.fusion_attention"
        # fp32 attention: FlashAttentionScore takes it, FIA does not
        t = resolve_ops(registry, spec, reqs("fp32", ring_lse=True))
        assert t.cross_attention.impl == "ascend.fusion_attention" and t.self_attention.impl == "reference.math"
        # recipe overrides
        t = resolve_ops(registry, spec, reqs(), {"attention": "ascend.fusion_attention_bnsd"})
        assert t.self_attention.impl == t.cross_attention.impl == "ascend.fusion_attention_bnsd"
        t = resolve_ops(registry, spec, reqs(), {"attention": "fused_infer_attention"})
        assert t.cross_attention.impl == "ascend.fused_infer_attention"
        with pytest.raises(BackendError, match="float32 not supported"):
            resolve_ops(registry, spec, reqs("fp32"), {"attention": "ascend.fused_infer_attention"})
        if not ERAS[era].has_rotary_mode:
            with pytest.raises(BackendError, match="takes no 'rotary_mode' argument"):
                resolve_ops(registry, spec, reqs(), {"rotary": "ascend.rotary_mul"})


def test_ascend_impls_declare_npu_and_wait_for_torch_npu(registry):
    ascend = [i for i in registry.impls if i.backend == "ascend"]
    assert {i.kind for i in ascend} == {"attention", "rotary", "rms_norm", "layer_norm", "layer_norm_modulate",
                                        "quant_linear"}
    # exact except the quantized Linears, lossy by the recipe's quant.dit (tests/test_ascend_quant.py),
    # which declare their scheme's tolerance
    assert all(i.constraints.device_types == frozenset({"npu"}) and i.exact == (i.kind != "quant_linear")
               for i in ascend)
    assert all(i.tolerance == 1e-2 for i in ascend if i.kind != "quant_linear")
    assert all(i.tolerance == QUANT_TOLERANCE[next(iter(i.constraints.schemes))] for i in ascend
               if i.kind == "quant_linear")
    for impl in ascend:  # torch_npu not imported (backend not started): offered to nobody, with the reason
        ok, why = impl.available()
        assert not ok and "not imported" in why
    cpu_reqs = dit_requirements(CFG, PRESETS["official"], "cpu")
    with pytest.raises(BackendError, match="torch_npu is not imported"):
        resolve_ops(registry, registry.backends["reference"], cpu_reqs, {"attention": "ascend.fusion_attention"})
    with installed("v7"):  # even with torch_npu there: npu kernels are not for other device types
        with pytest.raises(BackendError, match="runs on npu, not on device type 'cpu'"):
            resolve_ops(registry, registry.backends["reference"], cpu_reqs, {"attention": "ascend.fusion_attention"})
