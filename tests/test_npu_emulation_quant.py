"""The emulated torch_npu quantisation ops (npu_dynamic_quant, npu_quant_matmul,
npu_weight_quant_batchmatmul): schemas per era as op-plugin registers them, the math against float64,
and calls the real ops refuse (dtypes, shapes, layouts, keyword-only arguments)."""

from __future__ import annotations

import pytest
import torch

from npu_emulation import ERAS, NotEmulated, ops_namespace

ALL = sorted(ERAS)
NEW = ["v7", "v26"]
HALF = [torch.bfloat16, torch.float16]
U_BF16, U_F16 = 2.0 ** -8, 2.0 ** -11  # unit roundoff (half an ulp at 1) of bf16 / fp16


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def names(schema):
    return [a.name for a in schema.arguments]


def kwarg_only(schema):
    return [a.name for a in schema.arguments if a.kwarg_only]


def int8(*shape, seed=0):
    return torch.randint(-127, 128, shape, generator=gen(seed), dtype=torch.int8)


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("era", ALL)
def test_quant_schemas_per_era(era):
    ns = ops_namespace(era)
    dq = ns.npu_dynamic_quant.default._schema
    assert names(dq)[0] == "input" and kwarg_only(dq) == names(dq)[1:]  # everything after x is keyword-only
    assert len(dq.returns) == 2
    assert ("dst_type" in names(dq)) == (era != "v6rc2") and ("quant_mode" in names(dq)) == (era == "v26")
    qmm = ns.npu_quant_matmul.default._schema
    assert names(qmm)[:3] == ["x1", "x2", "scale"] and kwarg_only(qmm) == names(qmm)[3:]
    assert {"offset", "pertoken_scale", "bias", "output_dtype"} <= set(kwarg_only(qmm)) and len(qmm.returns) == 1
    assert ("group_sizes" in names(qmm)) == (era == "v26")
    # 26.0.0 types output_dtype int? (a dtype binds as its ScalarType code); older builds ScalarType?
    assert ("int? output_dtype" if era == "v26" else "ScalarType? output_dtype") in str(qmm)
    wqb = ns.npu_weight_quant_batchmatmul.default._schema
    assert names(wqb)[:7] == ["x", "weight", "antiquant_scale", "antiquant_offset", "quant_scale", "quant_offset",
                              "bias"] and not kwarg_only(wqb)
    assert ("inner_precise" in names(wqb)) == (era != "v6rc2") and len(wqb.returns) == 1


@pytest.mark.parametrize("era", ALL)
def test_quant_binding_is_strict(era):
    ns = ops_namespace(era)
    x1, w = int8(4, 16), int8(8, 16, seed=1)
    scale, tok = torch.rand(8), torch.rand(4)
    with pytest.raises(RuntimeError):  # pertoken_scale is keyword-only
        ns.npu_quant_matmul(x1, w.t(), scale, None, tok)
    with pytest.raises(RuntimeError):  # the torch-2.0 string form of output_dtype is not this schema
        ns.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=tok, output_dtype="bfloat16")
    with pytest.raises(RuntimeError):  # smooth_scales is keyword-only
        ns.npu_dynamic_quant(torch.randn(2, 8).bfloat16(), torch.ones(8).bfloat16())
    if era == "v6rc2":
        with pytest.raises(RuntimeError, match="dst_type"):
            ns.npu_dynamic_quant(torch.randn(2, 8).bfloat16(), dst_type=torch.int8)
        with pytest.raises(RuntimeError, match="inner_precise"):
            ns.npu_weight_quant_batchmatmul(torch.randn(2, 16).bfloat16(), w.t(), torch.rand(8).bfloat16(),
                                            inner_precise=0)


# ------------------------------------------------------------------ npu_dynamic_quant


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("dtype", HALF)
def test_dynamic_quant_per_token_int8(era, dtype):
    ns = ops_namespace(era)
    x = (torch.randn(2, 5, 64, generator=gen(1)) * torch.logspace(-3, 2, 5)[None, :, None]).to(dtype)
    kw = {"dst_type": torch.int8} if era != "v6rc2" else {}
    y, s = ns.npu_dynamic_quant(x, **kw)
    assert y.dtype == torch.int8 and y.shape == x.shape and s.dtype == torch.float32 and s.shape == (2, 5)
    amax = x.double().abs().amax(-1)
    assert torch.allclose(s.double(), amax / 127, rtol=1e-6, atol=0)
    assert (y.abs().amax(-1) == 127).all()  # the largest element of every row lands on the grid's end
    err = (y.double() * s.double()[..., None] - x.double()).abs()
    assert (err <= s.double()[..., None] * (0.5 + 1e-5)).all()  # round to nearest: half a step
    smooth = torch.rand(64, generator=gen(2)).to(dtype) + 0.5
    y2, s2 = ns.npu_dynamic_quant(x, smooth_scales=smooth)
    xs = x.double() * smooth.double()
    assert (y2.double() * s2.double()[..., None] - xs).abs().le(s2.double()[..., None] * (0.5 + 1e-5)).all()


@pytest.mark.parametrize("era", ALL)
def test_dynamic_quant_refusals(era):
    ns = ops_namespace(era)
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        ns.npu_dynamic_quant(torch.randn(2, 8))  # float32 x is not supported
    with pytest.raises(RuntimeError, match="more than 1 dim"):
        ns.npu_dynamic_quant(torch.randn(8).bfloat16())
    with pytest.raises(RuntimeError, match="smooth_scales dtype"):
        ns.npu_dynamic_quant(torch.randn(2, 8).bfloat16(), smooth_scales=torch.ones(8))
    with pytest.raises(NotEmulated):
        ns.npu_dynamic_quant(torch.zeros(2, 8).bfloat16())
    if era != "v6rc2":
        with pytest.raises(RuntimeError, match="int8 or quint4x2"):
            ns.npu_dynamic_quant(torch.randn(2, 8).bfloat16(), dst_type=torch.float16)


# ------------------------------------------------------------------ npu_quant_matmul


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("out", HALF)
def test_quant_matmul_per_channel_per_token(era, out):
    """(x1 @ x2) * scale[n] * pertoken_scale[m] (+ bias), rounded once to the output dtype. The weight
    enters as the transposed view of its [N, K] int8 storage."""
    ns = ops_namespace(era)
    m, k, n = 6, 48, 10
    x1, w = int8(m, k), int8(n, k, seed=1)
    scale, tok = torch.rand(n, generator=gen(2)) / 100, torch.rand(m, generator=gen(3)) / 100
    bias = torch.randn(n, generator=gen(4))
    if era == "v6rc2" and out == torch.bfloat16:
        scale, bias = scale.bfloat16(), bias.bfloat16()  # this era's table: bf16 scale and bias for a bf16 output
    elif era == "v6rc2":
        bias = None  # float16 output + pertoken: int32 bias only in this era
    y = ns.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=tok, bias=bias, output_dtype=out)
    assert y.dtype == out and y.shape == (m, n)
    ref = (x1.double() @ w.double().t()) * scale.double() * tok.double()[:, None]
    if bias is not None:
        ref = ref + bias.double()
    u = U_BF16 if out == torch.bfloat16 else U_F16
    assert ((y.double() - ref).abs() <= ref.abs() * (u + 1e-6) + 1e-6).all()
    # an int32 bias is added to the integer accumulator before the scales
    ib = torch.randint(-1000, 1000, (n,), generator=gen(5), dtype=torch.int32)
    y2 = ns.npu_quant_matmul(x1, w.t(), scale.float() if out == torch.float16 or era != "v6rc2" else scale,
                             pertoken_scale=tok, bias=ib, output_dtype=out)
    ref2 = (x1.double() @ w.double().t() + ib.double()) * scale.double() * tok.double()[:, None]
    assert ((y2.double() - ref2).abs() <= ref2.abs() * (u + 1e-6) + 1e-6).all()


def test_quant_matmul_batched_and_contiguous_x2():
    ns = ops_namespace("v7")
    x1, x2 = int8(3, 4, 32), int8(32, 8, seed=1)  # x2 (K, N) contiguous is accepted too
    scale = torch.rand(8, generator=gen(2))
    y = ns.npu_quant_matmul(x1, x2, scale, output_dtype=torch.bfloat16)
    assert y.shape == (3, 4, 8) and y.dtype == torch.bfloat16
    ref = (x1.double() @ x2.double()) * scale.double()
    assert ((y.double() - ref).abs() <= ref.abs() * U_BF16 * 1.001 + 1e-6).all()


@pytest.mark.parametrize("era", ALL)
def test_quant_matmul_refusals(era):
    ns = ops_namespace(era)
    m, k, n = 4, 32, 8
    x1, w = int8(m, k), int8(n, k, seed=1)
    scale = torch.rand(n) if era != "v6rc2" else torch.rand(n).bfloat16()
    tok = torch.rand(m)
    bf = dict(pertoken_scale=tok, output_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="int8"):
        ns.npu_quant_matmul(x1.float(), w.t(), scale, **bf)
    with pytest.raises(RuntimeError, match="both be int8"):
        ns.npu_quant_matmul(x1, w.t().to(torch.int32), scale, **bf)
    # pertoken_scale with the default (int8) or an int32 output: refused
    with pytest.raises(RuntimeError, match="pertoken_scale is supported only"):
        ns.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=tok)
    with pytest.raises(RuntimeError, match="pertoken_scale is supported only"):
        ns.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=tok, output_dtype=torch.int32)
    with pytest.raises(RuntimeError, match="output_dtype on Atlas A2"):
        ns.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=tok, output_dtype=torch.float32)
    with pytest.raises(RuntimeError, match="pertoken_scale must be float32"):
        ns.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=tok.bfloat16(), output_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"pertoken_scale must be 1-D \(m,\)"):
        ns.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=tok[:, None], output_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="scale must be 1-D"):
        ns.npu_quant_matmul(x1, w.t(), scale[:, None], **bf)
    with pytest.raises(RuntimeError, match="scale must be 1-D"):
        ns.npu_quant_matmul(x1, w.t(), scale[:3], **bf)
    with pytest.raises(RuntimeError, match="scale dtype"):
        ns.npu_quant_matmul(x1, w.t(), scale.half(), **bf)
    with pytest.raises(RuntimeError, match="float16 output with pertoken_scale needs a float32"):
        ns.npu_quant_matmul(x1, w.t(), torch.rand(n).bfloat16(), pertoken_scale=tok, output_dtype=torch.float16)
    with pytest.raises(RuntimeError, match="bias dtype"):
        ns.npu_quant_matmul(x1, w.t(), scale, bias=torch.randn(n).half(), **bf)
    with pytest.raises(RuntimeError, match="bias shape"):
        ns.npu_quant_matmul(x1, w.t(), scale, bias=torch.zeros(1, n, dtype=torch.int32), **bf)
    with pytest.raises(RuntimeError, match="K of x1"):
        ns.npu_quant_matmul(x1, int8(n, k + 1).t(), scale, **bf)
    with pytest.raises(RuntimeError, match="contiguous or a transpose"):
        ns.npu_quant_matmul(x1, int8(n, 2 * k).t()[::2], scale, **bf)  # a strided view of the weight
    with pytest.raises(RuntimeError, match="x1 must be contiguous"):
        ns.npu_quant_matmul(int8(k, m).t(), w.t(), scale, **bf)
    with pytest.raises(RuntimeError, match="offset"):
        ns.npu_quant_matmul(x1, w.t(), scale, offset=torch.rand(n), **bf)
    if era == "v6rc2":  # 6.0.rc2: a bfloat16 output needs a bfloat16 scale, and bias int32/bfloat16
        with pytest.raises(RuntimeError, match="needs a bfloat16 scale"):
            ns.npu_quant_matmul(x1, w.t(), torch.rand(n), **bf)
        with pytest.raises(RuntimeError, match="bias dtype"):
            ns.npu_quant_matmul(x1, w.t(), scale, bias=torch.randn(n), **bf)
    else:  # later: a float32 scale and a float32 bias are fine for a bfloat16 output
        ns.npu_quant_matmul(x1, w.t(), torch.rand(n), bias=torch.randn(n), **bf)
    with pytest.raises(NotEmulated):  # int8 requantisation: a valid call the emulation does not model
        ns.npu_quant_matmul(x1, w.t(), torch.rand(n))


# ------------------------------------------------------------------ npu_weight_quant_batchmatmul


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("dtype", HALF)
def test_weight_quant_batchmatmul_per_channel(era, dtype):
    """x @ ((w + offset) * scale) + bias: antiquantisation in x's dtype, float32 accumulation, one
    rounding of the output; the weight as the transposed view of its [N, K] int8 storage."""
    ns = ops_namespace(era)
    m, k, n = 5, 64, 12
    x = torch.randn(m, k, generator=gen(1)).to(dtype)
    w = int8(n, k, seed=2)
    s = (torch.rand(n, generator=gen(3)) / 50).to(dtype)
    off = torch.randn(n, generator=gen(4)).to(dtype)
    bias = torch.randn(n, generator=gen(5)).to(torch.float32 if dtype == torch.bfloat16 else dtype)
    y = ns.npu_weight_quant_batchmatmul(x, w.t(), s, off, None, None, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    wd = (w.double().t() + off.double()) * s.double()
    ref = x.double() @ wd + bias.double()
    u = U_BF16 if dtype == torch.bfloat16 else U_F16
    # the antiquantised weight is rounded twice (w + offset, then * scale) in x's dtype, the output once
    scale_err = (x.double().abs() @ wd.abs()) * (2 * u + u * u)
    assert ((y.double() - ref).abs() <= scale_err + ref.abs() * u + 1e-5).all()
    y1 = ns.npu_weight_quant_batchmatmul(x, w.t().contiguous(), s[None, :])  # (K, N) contiguous, (1, N) scale
    ref1 = x.double() @ (w.double().t() * s.double())
    assert ((y1.double() - ref1).abs() <= (x.double().abs() @ (w.double().t() * s.double()).abs()) * u
            + ref1.abs() * u + 1e-5).all()


@pytest.mark.parametrize("era", ALL)
def test_weight_quant_batchmatmul_refusals(era):
    ns = ops_namespace(era)
    m, k, n = 4, 32, 8
    x, w, s = torch.randn(m, k).bfloat16(), int8(n, k), torch.rand(n).bfloat16()
    with pytest.raises(RuntimeError, match="x dtype must be float16 or bfloat16"):
        ns.npu_weight_quant_batchmatmul(x.float(), w.t(), s.float())
    with pytest.raises(RuntimeError, match="must be 2-D"):
        ns.npu_weight_quant_batchmatmul(x[None], w.t(), s)
    with pytest.raises(RuntimeError, match="weight must be int8"):
        ns.npu_weight_quant_batchmatmul(x, w.t().bfloat16(), s)
    with pytest.raises(RuntimeError, match="antiquant_scale dtype"):
        ns.npu_weight_quant_batchmatmul(x, w.t(), s.float())
    with pytest.raises(RuntimeError, match="antiquant_scale must be"):
        ns.npu_weight_quant_batchmatmul(x, w.t(), s[:, None])
    with pytest.raises(RuntimeError, match="antiquant_offset shape"):
        ns.npu_weight_quant_batchmatmul(x, w.t(), s, s[None, :])
    with pytest.raises(RuntimeError, match="bias must be torch.float32 for torch.bfloat16"):
        ns.npu_weight_quant_batchmatmul(x, w.t(), s, bias=torch.randn(n).bfloat16())
    with pytest.raises(RuntimeError, match="bias must be torch.float16 for torch.float16"):
        ns.npu_weight_quant_batchmatmul(x.half(), w.t(), s.half(), bias=torch.randn(n))
    with pytest.raises(RuntimeError, match="K of x"):
        ns.npu_weight_quant_batchmatmul(x, int8(n, k + 2).t(), s)
    with pytest.raises(RuntimeError, match="contiguous or a transpose"):
        ns.npu_weight_quant_batchmatmul(x, int8(n, 2 * k).t()[::2], s)
    with pytest.raises(RuntimeError, match="quant_offset needs quant_scale"):
        ns.npu_weight_quant_batchmatmul(x, w.t(), s, None, None, torch.rand(n))
    with pytest.raises(RuntimeError, match="antiquant_group_size"):
        ns.npu_weight_quant_batchmatmul(x, w.t(), s, antiquant_group_size=48)
