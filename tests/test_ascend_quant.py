"""The Ascend backend's quantized Linears (int8_w8a8, int8_w8a16) on the emulated torch_npu: offered
where the installed schemas allow, weights in the layout the kernels take, and agreement with the
reference backend's float32 emulation of the same scheme and with the unquantized float64 Linear,
within bounds from the arithmetic (int8 symmetric step = amax / 127, one bf16 rounding = 2^-8
relative)."""

from __future__ import annotations

import os

import pytest
import torch

from _float_bounds import f32_bound
from npu_emulation import ERAS, installed
from wanport.ops.impl import Requirements
from wanport.reference.quant_linear import EmulatedKernels
from wanport.registry import discover

ALL = sorted(ERAS)
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
U = {BF16: 2.0 ** -8, F16: 2.0 ** -11}  # unit roundoff
IMPLS = {"int8_w8a8": "dynamic_quant_matmul", "int8_w8a16": "weight_quant_batchmatmul"}


@pytest.fixture(scope="module")
def registry():
    return discover()


def get_impl(registry, name):
    return next(i for i in registry.impls if i.backend == "ascend" and i.kind == "quant_linear" and i.name == name)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def case(dtype, seed=0, k=64, n=24):
    """Activations [2, 5, K] with rows of very different magnitude, an [N, K] float weight with rows of
    different magnitude, a bias in the matmul dtype."""
    x = (randn(2, 5, k, seed=seed) * torch.logspace(-2, 1, 5)[None, :, None]).to(dtype)
    w = randn(n, k, seed=seed + 1) * torch.logspace(-3, -1, n)[:, None]
    b = (randn(n, seed=seed + 2) / 10).to(dtype)
    return x, w, b


def counting(npu, *ops):
    """Count the calls of torch_npu ops the implementation binds at load (replace them before load)."""
    calls = {op: 0 for op in ops}
    for op in ops:
        real = getattr(npu, op)

        def counted(*args, _op=op, _real=real, **kwargs):
            calls[_op] += 1
            return _real(*args, **kwargs)

        counted.default = real.default  # the registered schema stays readable (the plugin checks keywords)
        setattr(npu, op, counted)
    return calls


@pytest.mark.parametrize("era", ALL)
def test_offered_per_era_for_its_scheme_only(registry, era):
    """W8A16 on every era; W8A8 where npu_dynamic_quant has dst_type (op-plugin >= 7.0.0, whose
    npu_quant_matmul takes float32 scales/bias with a bf16 output). Each declares one scheme, half
    dtypes, the npu device, and is lossy (chosen only through quant.dit)."""
    with installed(era):
        for scheme, name in IMPLS.items():
            impl = get_impl(registry, name)
            ok, why = impl.available()
            assert ok == (scheme == "int8_w8a16" or era != "v6rc2"), why
            if not ok:
                assert "dst_type" in why
            assert not impl.exact and impl.constraints.schemes == frozenset({scheme})
            for dt in (BF16, F16):
                assert impl.constraints.check(Requirements("npu", frozenset({dt}), quant_scheme=scheme))[0]
            assert not impl.constraints.check(Requirements("npu", frozenset({F32}), quant_scheme=scheme))[0]
            other = "int8_w8a8" if scheme == "int8_w8a16" else "int8_w8a16"
            assert not impl.constraints.check(Requirements("npu", frozenset({BF16}), quant_scheme=other))[0]
            assert not impl.constraints.check(Requirements("npu", frozenset({BF16}), quant_scheme="fp8_rowwise"))[0]


def _bound_vs_float(x, w, sx, sw, y64, dtype):
    """|y - (x Wᵀ + b)| for int8 x (step sx per token, or exact when sx is None) and int8 W (step sw per
    channel), rounding to nearest: sum_k |x_k| sw/2 + |w_nk| sx/2 + sx sw/4, then one output rounding."""
    xa, wa = x.double().abs(), w.double().abs()
    half_w = (sw.double().reshape(1, -1) / 2)  # [1, N]
    bound = xa.sum(-1, keepdim=True) * half_w
    if sx is not None:
        half_x = sx.double().reshape(*x.shape[:-1], 1) / 2  # [..., 1]
        bound = bound + half_x * wa.sum(-1) + x.shape[-1] * half_x * half_w
    return bound + U[dtype] * y64.abs() + 1e-6


@pytest.mark.parametrize("era", ["v7", "v26"])
@pytest.mark.parametrize("dtype", [BF16, F16])
def test_w8a8_matches_the_reference_emulation(registry, era, dtype):
    ref = EmulatedKernels("int8_w8a8")
    x, w, b = case(dtype)
    with installed(era) as npu:
        calls = counting(npu, "npu_dynamic_quant", "npu_quant_matmul")
        kern = get_impl(registry, IMPLS["int8_w8a8"]).load()
        qw, sw = kern.quantize_weight(w)
        # the layout npu_quant_matmul takes as x2 = weight.t(): int8 [N, K] contiguous, scale float32 [N, 1]
        assert qw.dtype == torch.int8 and qw.shape == w.shape and qw.is_contiguous() and sw.shape == (w.shape[0], 1)
        rqw, rsw = ref.quantize_weight(w)
        assert torch.equal(qw, rqw) and torch.equal(sw, rsw)
        qa = kern.quantize_activation(x)  # npu_dynamic_quant
        ra = ref.quantize_activation(x)
        assert qa.data.dtype == torch.int8 and qa.scale.shape == (2, 5, 1) and qa.dtype == dtype
        assert (qa.data.int() - ra.data.int()).abs().max().item() <= 1  # a tie may round either way
        assert torch.allclose(qa.scale, ra.scale, rtol=1e-6, atol=0)
        y = kern.linear(x, qw, sw, b, out_dtype=dtype)
        y_pre = kern.linear(qa, qw, sw, b, out_dtype=dtype)  # an activation quantized once, reused
        y32 = kern.linear(x, qw, sw, None, out_dtype=F32)
    # the kernels computed them: one dynamic quant per unquantized input, one matmul per linear
    assert calls == {"npu_dynamic_quant": 3, "npu_quant_matmul": 3}
    assert y.dtype == dtype and y.shape == (2, 5, w.shape[0]) and torch.equal(y, y_pre)
    assert y32.dtype == F32
    # exact-input float64 of the scheme: dequantized activation x dequantized weight + bias
    wd = rqw.double() * rsw.double()
    y64 = ra.dequantize().double() @ wd.t() + b.double()
    k = x.shape[-1]
    acc = (ra.dequantize().double().abs() @ wd.abs().t())
    for got in (y, ref.linear(x, rqw, rsw, b, out_dtype=dtype)):  # ours and the reference: one rounding each
        assert ((got.double() - y64).abs() <= U[dtype] * y64.abs() + f32_bound(k) * acc + 1e-6).all()
    y64_nb = y64 - b.double()
    assert ((y32.double() - y64_nb).abs() <= U[dtype] * y64_nb.abs() + f32_bound(k) * acc + 1e-6).all()
    # against the unquantized Linear: the int8 steps of both operands
    true = x.double() @ w.double().t() + b.double()
    assert ((y.double() - true).abs() <= _bound_vs_float(x, w, ra.scale, rsw, true, dtype)).all()
    # and the quantization is not a no-op: the steps are visible against the float result
    assert (y.double() - true).abs().max().item() > 0


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("dtype", [BF16, F16])
def test_w8a16_matches_the_reference_emulation(registry, era, dtype):
    ref = EmulatedKernels("int8_w8a16")
    x, w, b = case(dtype, seed=3)
    with installed(era) as npu:
        calls = counting(npu, "npu_weight_quant_batchmatmul")
        kern = get_impl(registry, IMPLS["int8_w8a16"]).load()
        qw, sw = kern.quantize_weight(w)
        assert qw.dtype == torch.int8 and qw.is_contiguous() and sw.dtype == F32 and sw.shape == (w.shape[0], 1)
        assert kern.quantize_activation(x).scale is None  # weight-only: activations stay as they are
        y = kern.linear(x, qw, sw, b, out_dtype=dtype)
        y2 = kern.linear(x[0], qw, sw, None, out_dtype=dtype)  # 2-D input, no bias
    assert calls == {"npu_weight_quant_batchmatmul": 2}
    assert y.dtype == dtype and y.shape == (2, 5, w.shape[0])
    wd = qw.double() * sw.double()
    y64 = x.double() @ wd.t() + b.double()
    acc = x.double().abs() @ wd.abs().t()
    k, u = x.shape[-1], U[dtype]
    # the kernel rounds the scale to x's dtype and the dequantized weight once more: 2u on each product
    assert ((y.double() - y64).abs() <= (2 * u + u * u) * acc + u * y64.abs() + f32_bound(k) * acc + 1e-6).all()
    r = ref.linear(x, qw, sw, b, out_dtype=dtype)
    assert ((r.double() - y64).abs() <= u * y64.abs() + f32_bound(k) * acc + 1e-6).all()
    y2_64 = x[0].double() @ wd.t()
    assert ((y2.double() - y2_64).abs() <= (2 * u + u * u) * acc[0] + u * y2_64.abs() + 1e-6).all()
    true = x.double() @ w.double().t() + b.double()
    assert ((y.double() - true).abs() <= _bound_vs_float(x, w, None, sw, true, dtype) + 2 * u * acc).all()


def test_w8a8_not_offered_on_6_0_rc2_and_its_call_would_fail(registry):
    """On 6.0.rc2 (bf16-only scales with a bf16 output) the implementation is not offered; loaded
    anyway, its first call fails binding the dst_type keyword that this torch_npu does not have."""
    x, w, b = case(BF16)
    with installed("v6rc2"):
        impl = get_impl(registry, IMPLS["int8_w8a8"])
        assert not impl.available()[0]
        kern = impl.load()
        qw, sw = kern.quantize_weight(w)
        with pytest.raises(RuntimeError, match="dst_type"):
            kern.linear(x, qw, sw, b, out_dtype=BF16)


# ------------------------------------------------------------------ the tiny pipeline, quantized, on the emulated NPU


def _run(tiny_ckpt, out_dir, backend, name, extra=()):
    from wanport.config import load_recipe
    from wanport.pipeline.run import run

    # the DiT's Linears in bf16 (the kernels take bf16/fp16), T5 and the VAE in float32 (fast on any CPU)
    cfg, raw = load_recipe(None, ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % out_dir, "sample.steps=1",
                                  "sample.size=32*32", "sample.frame_num=1", "backend=%s" % backend,
                                  "output.name=%s" % name,
                                  "precision={preset: fp32, matmul: bf16, attention: bf16}"] + list(extra))
    return run(cfg, raw, progress=False)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_tiny_t2v_int8_w8a8_end_to_end_on_the_emulated_npu(tiny_ckpt, tmp_path, monkeypatch):
    """`quant.dit: int8_w8a8` with `backend: ascend` (emulated torch_npu 2.1.0.post12): every block
    Linear runs npu_dynamic_quant + npu_quant_matmul, and the video is as close to the exact (unquantized)
    reference run as the reference backend's own int8_w8a8 emulation is. The yardstick is that
    emulation's distance to the exact run, measured in the same test: the two quantized runs round
    different activations to different int8 steps (the other ops differ by bf16 rounding order), so
    each sits at about the quantization error from the exact video; 2x leaves room for the two
    roundings not to correlate. Measured (1 step, 32x32x1): rel-L2 to the exact video 0.023 (reference
    emulation) and 0.024 (ascend), ascend vs reference emulation 0.022."""
    import wanport.io.video as video_io
    import wanport_ascend.plugin as plugin

    for key in plugin.ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    videos = {}
    real = video_io.write_mp4
    monkeypatch.setattr(video_io, "write_mp4", lambda video, path, fps: (
        videos.__setitem__(os.path.basename(path).split(".")[0], video.clone()), real(video, path, fps)))
    _run(tiny_ckpt, tmp_path, "reference", "exact")
    ref_q = _run(tiny_ckpt, tmp_path, "reference", "ref_q", ["quant.dit=int8_w8a8"])
    with installed("v7") as npu:
        calls = counting(npu, "npu_dynamic_quant", "npu_quant_matmul")
        npu_q = _run(tiny_ckpt, tmp_path, "ascend", "npu_q", ["quant.dit=int8_w8a8"])
    assert npu_q["ops"]["quant_linear"]["impl"] == "ascend.dynamic_quant_matmul"
    assert ref_q["ops"]["quant_linear"]["impl"] == "reference.emulate_int8_w8a8"
    layers = npu_q["quant"]["layers"]["dit"]
    assert [l["name"] for l in layers] == [l["name"] for l in ref_q["quant"]["layers"]["dit"]]
    assert layers and all(l["impl"] == "ascend.dynamic_quant_matmul" and l["scheme"] == "int8_w8a8" for l in layers)
    forwards = 1 * 2  # 1 step x (conditional + unconditional)
    assert calls["npu_quant_matmul"] == forwards * len(layers)  # every quantized Linear, every forward
    # one per-token quantization per distinct input: q/k/v share one, cross-attention k/v another
    assert 0 < calls["npu_dynamic_quant"] < calls["npu_quant_matmul"]
    exact, rq, nq = videos["exact"], videos["ref_q"], videos["npu_q"]
    assert nq.shape == exact.shape == (3, 1, 32, 32) and torch.isfinite(nq).all()
    floor = _rel(rq, exact)
    assert 0 < floor < 0.1  # quantization shows, and stays small
    assert _rel(nq, exact) < 2 * floor
    assert _rel(nq, rq) < 2 * floor


@pytest.mark.parametrize("era,scheme,expect", [
    ("v7", "int8_w8a8", "ascend.dynamic_quant_matmul"),
    ("v6rc2", "int8_w8a16", "ascend.weight_quant_batchmatmul"),
    ("v6rc2", "int8_w8a8", "npu_dynamic_quant takes no 'dst_type' argument"),  # refused, with the reason
    ("v26", "fp8_rowwise", "does not implement the quantization scheme 'fp8_rowwise'"),  # no FP8 on Atlas A2
])
def test_op_table_per_scheme_and_era(registry, era, scheme, expect):
    """The resolver gives the quant_linear site to the ascend implementation of the recipe's scheme,
    or refuses before any weight loads (no fallback to the reference emulation on an accelerator)."""
    from wanport.errors import BackendError
    from wanport.models.dit import DiTConfig
    from wanport.models.dit.requirements import dit_requirements
    from wanport.precision import PRESETS
    from wanport.registry import resolve_ops

    cfg = DiTConfig(model_type="t2v", dim=256, ffn_dim=512, num_heads=2, num_layers=1)
    reqs = dit_requirements(cfg, PRESETS["official"], "npu", quant_scheme=scheme)
    with installed(era):
        spec = registry.backends["ascend"]
        if expect.startswith("ascend."):
            assert resolve_ops(registry, spec, reqs).describe()["quant_linear"] == expect
        else:
            with pytest.raises(BackendError, match=expect):
                resolve_ops(registry, spec, reqs)
