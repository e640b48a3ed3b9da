"""The CPU emulation of torch_npu, checked against float64 math and against the binding rules of the
dispatcher (it is what the Ascend backend's tests stand on, so it is tested first)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from _float_bounds import f32_bound
from npu_emulation import ERAS, NotEmulated, ops_namespace

ALL = sorted(ERAS)
NEW = ["v7", "v26"]  # eras whose torch_npu registers `self` as `input` and has rotary_mode


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def attention64(q, k, v, scale, masked=None):
    """float64 softmax(scale q kᵀ) v on [B, N, S, D]; masked True = dropped. Also max, sum-exp, lse."""
    n, nkv = q.shape[1], k.shape[1]
    k, v = k.double().repeat_interleave(n // nkv, 1), v.double().repeat_interleave(n // nkv, 1)
    s = torch.matmul(q.double(), k.transpose(-1, -2)) * scale
    if masked is not None:
        s = s.masked_fill(masked, float("-inf"))
    m = s.amax(-1)
    e = torch.exp(s - m[..., None])
    return torch.matmul(e / e.sum(-1, keepdim=True), v), m, e.sum(-1), torch.logsumexp(s, -1)


def signature(schema):
    return ([(a.name, str(a.type), a.default_value, a.kwarg_only) for a in schema.arguments],
            [str(r.type) for r in schema.returns])


def qkv(b=2, s=6, n=2, d=128, skv=None, nkv=None, dtype=torch.float32, seed=0):
    g = gen(seed)
    q = torch.randn(b, s, n, d, generator=g).to(dtype)
    k = torch.randn(b, skv or s, nkv or n, d, generator=g).to(dtype)
    v = torch.randn(b, skv or s, nkv or n, d, generator=g).to(dtype)
    return q, k, v


# ------------------------------------------------------------------ schemas and binding


@pytest.mark.parametrize("era", ALL)
def test_registered_schemas_are_the_yaml_ones_with_torch_npus_self_rewrite(era):
    ns = ops_namespace(era)
    e = ERAS[era]
    for op, yaml in e.schemas.items():
        expected = re.sub(r"\bself\b(?=[,\)])", "input", yaml) if e.renames_self else yaml
        assert signature(getattr(ns, op).default._schema) == signature(torch._C.parse_schema(expected))
    rot = [a.name for a in ns.npu_rotary_mul.default._schema.arguments]
    assert rot[0] == ("input" if e.renames_self else "self")
    assert ("rotary_mode" in rot) == (era != "v6rc2")
    assert ("rotate" in rot) == (era == "v26")
    fa = [a.name for a in ns.npu_fusion_attention.default._schema.arguments]
    assert ("softmax_layout" in fa and "sink" in fa and "seed" in fa) == (era == "v26")
    fia = ns.npu_fused_infer_attention_score.default._schema.arguments
    assert all(a.kwarg_only for a in fia[3:]) and "softmax_lse_flag" in [a.name for a in fia]


@pytest.mark.parametrize("era", ALL)
def test_first_argument_keyword_follows_the_era(era):
    """op-plugin's yaml says `self`; torch_npu registers `input` since 6.0.rc3 (2.1.0.post8)."""
    ns = ops_namespace(era)
    x, g = torch.randn(2, 8), torch.ones(8)
    good, bad = ("input", "self") if ERAS[era].renames_self else ("self", "input")
    y, _ = ns.npu_rms_norm(**{good: x, "gamma": g})
    assert y.shape == x.shape
    with pytest.raises(RuntimeError, match="missing value for argument '%s'" % good):
        ns.npu_rms_norm(**{bad: x, "gamma": g})
    r = torch.ones(1, 4, 1, 128)
    assert ns.npu_rotary_mul(**{good: torch.randn(1, 4, 2, 128), "r1": r, "r2": r}).shape == (1, 4, 2, 128)
    with pytest.raises(RuntimeError, match="missing value"):
        ns.npu_rotary_mul(**{bad: torch.randn(1, 4, 2, 128), "r1": r, "r2": r})
    ns.npu_rms_norm(x, g, 1e-6)  # positional binds on every era


@pytest.mark.parametrize("era", ALL)
def test_binding_is_strict_as_the_dispatcher(era):
    ns = ops_namespace(era)
    q, k, v = qkv(1, 4, 2)
    with pytest.raises(RuntimeError, match="Unknown keyword argument 'next_tokens'"):  # diffusers PR #12129's typo
        ns.npu_fusion_attention(q, k, v, 2, "BSND", next_tokens=65536)
    with pytest.raises(RuntimeError, match="Expected a value of type 'int' for argument 'head_num'"):
        ns.npu_fusion_attention(q, k, v, 2.0, "BSND")
    with pytest.raises(RuntimeError, match="Optional\\[List\\[int\\]\\]"):
        ns.npu_fusion_attention(q, k, v, 2, "BSND", actual_seq_qlen=torch.tensor([4]))
    out = ns.npu_fusion_attention(q, k, v, 2, "BSND", None, None, None, 0.1, 1)  # no `*`: all positional
    assert len(out) == 7
    assert ns.npu_fusion_attention(q, k, v, 2, "BSND", scale=1, keep_prob=torch.tensor(1.0).item())[0].shape == q.shape
    x, g = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(RuntimeError, match="Unknown keyword argument 'eps'"):
        ns.npu_rms_norm(x, g, eps=1e-6)
    with pytest.raises(RuntimeError, match="Unknown keyword argument 'epsilon'"):
        ns.npu_layer_norm_eval(x, [8], epsilon=1e-6)
    with pytest.raises(RuntimeError, match="gamma is undefined"):
        ns.npu_rms_norm(x, None)  # binds (None becomes an undefined tensor), then fails (diffusers #14380)
    with pytest.raises(RuntimeError, match="takes 3 positional argument"):
        ns.npu_fused_infer_attention_score(q, k, v, 2)  # everything after value is keyword-only
    if era == "v6rc2":
        with pytest.raises(RuntimeError, match="expected at most 3 argument"):
            ns.npu_rotary_mul(torch.randn(1, 4, 2, 128), torch.ones(1, 4, 1, 128), torch.ones(1, 4, 1, 128),
                              rotary_mode="interleave")


# ------------------------------------------------------------------ npu_fusion_attention


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("layout", ["BSND", "BNSD", "BSH", "SBH"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fusion_attention_layouts_and_the_7_tuple(era, layout, dtype):
    ns = ops_namespace(era)
    b, s, skv, n, nkv, d = 2, 5, 7, 4, 2, 128  # GQA: Nq / Nkv = 2
    q, k, v = qkv(b, s, n, d, skv=skv, nkv=nkv, dtype=dtype)
    scale = d ** -0.5
    ref, m, ssum, lse = attention64(*(t.transpose(1, 2) for t in (q, k, v)), scale)
    conv = {"BSND": lambda t: t, "BNSD": lambda t: t.transpose(1, 2).contiguous(),
            "BSH": lambda t: t.flatten(2), "SBH": lambda t: t.flatten(2).transpose(0, 1).contiguous()}[layout]
    out = ns.npu_fusion_attention(conv(q), conv(k), conv(v), n, layout, scale=scale, keep_prob=1.0)
    assert len(out) == 7 and [type(x) for x in out[4:]] == [int, int, int]
    o, smax, ssm, sout, seed, offset, numels = out
    assert o.dtype == dtype and o.shape == conv(q).shape
    assert smax.dtype == ssm.dtype == torch.float32 and smax.shape == ssm.shape == (b, n, s, 8)
    assert torch.equal(smax, smax[..., :1].expand_as(smax))  # the 8 entries repeat one value
    assert sout.shape == (0,) and sout.dtype == dtype
    assert (seed, offset, numels) == (0, 0, b * n * s * skv)
    # float32 against float64: a D-term score, then a softmax over Skv keys (tests/_float_bounds.py)
    tol = f32_bound(d + 2 * skv) if dtype == torch.float32 else 1e-2
    assert rel(o, conv(ref.transpose(1, 2))) < tol
    assert rel(smax[..., 0], m) < f32_bound(d) and rel(ssm[..., 0], ssum) < 1e-5 if dtype == torch.float32 else True
    # max + log(sum) is the log-sum-exp ring attention merges with
    assert rel(smax[..., 0] + ssm[..., 0].log(), lse) < (f32_bound(d + skv) if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("era", ALL)
def test_fusion_attention_mask_polarity_shapes_and_dtypes(era):
    ns = ops_namespace(era)
    b, s, n, d = 2, 4, 2, 128
    q, k, v = qkv(b, s, n, d, skv=6)
    lens = torch.tensor([6, 3])
    drop = torch.arange(6)[None, :] >= lens[:, None]  # [B, Skv]: True = padded key
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    ref = attention64(qt, kt, vt, 0.1, drop[:, None, None, :])[0].transpose(1, 2)
    b1ss = drop[:, None, None, :].expand(b, 1, s, 6)
    for mask in (b1ss, b1ss.to(torch.uint8), b1ss.expand(b, n, s, 6)):  # B1SS, uint8, BNSS
        out = ns.npu_fusion_attention(q, k, v, n, "BSND", atten_mask=mask.contiguous(), scale=0.1)[0]
        assert rel(out, ref) < f32_bound(128 + 2 * 6)  # float32 vs float64: D-term scores, 6-key softmax
    # SDPA's polarity (True = keep) passed as is attends to exactly the other keys: the caller must invert
    keep = ~b1ss
    wrong = ns.npu_fusion_attention(q[1:], k[1:], v[1:], n, "BSND", atten_mask=keep[1:].contiguous(), scale=0.1)[0]
    flipped = attention64(qt[1:], kt[1:], vt[1:], 0.1, ~drop[1:, None, None, :])[0].transpose(1, 2)
    assert rel(wrong, flipped) < f32_bound(128 + 2 * 6) and rel(wrong, ref[1:]) > 0.1
    # one shared mask: 11SS and SS
    shared = torch.zeros(s, 6, dtype=torch.bool)
    shared[:, 4:] = True
    want = attention64(qt, kt, vt, 0.1, shared)[0].transpose(1, 2)
    for mask in (shared, shared[None, None]):
        assert rel(ns.npu_fusion_attention(q, k, v, n, "BSND", atten_mask=mask, scale=0.1)[0], want) < f32_bound(
            128 + 2 * 6)
    with pytest.raises(RuntimeError, match="atten_mask shape"):  # no broadcast of a singleton query dim
        ns.npu_fusion_attention(q, k, v, n, "BSND", atten_mask=drop[:, None, None, :], scale=0.1)
    with pytest.raises(RuntimeError, match="atten_mask dtype"):  # additive float masks are not supported
        ns.npu_fusion_attention(q, k, v, n, "BSND", atten_mask=b1ss.float() * -1e4, scale=0.1)
    with pytest.raises(NotEmulated, match="fully masked"):
        ns.npu_fusion_attention(q, k, v, n, "BSND", atten_mask=torch.ones(s, 6, dtype=torch.bool))


@pytest.mark.parametrize("era", ["v7"])
def test_fusion_attention_sparse_band_and_ignored_without_mask(era):
    ns = ops_namespace(era)
    q, k, v = qkv(1, 6, 2, 128)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    full = attention64(qt, kt, vt, 0.1)[0].transpose(1, 2)
    # no mask: sparse_mode / pre / next are ignored, full attention
    out = ns.npu_fusion_attention(q, k, v, 2, "BSND", scale=0.1, pre_tockens=0, next_tockens=0, sparse_mode=4)[0]
    assert rel(out, full) < f32_bound(128 + 2 * 6)  # float32 vs float64: D-term scores, 6-key softmax
    # causal via sparse_mode 0: lower-triangular keep mask + next_tockens=0
    tri = torch.ones(6, 6, dtype=torch.bool).triu(1)
    causal = attention64(qt, kt, vt, 0.1, tri)[0].transpose(1, 2)
    out = ns.npu_fusion_attention(q, k, v, 2, "BSND", atten_mask=tri, scale=0.1, pre_tockens=6, next_tockens=0)[0]
    assert rel(out, causal) < f32_bound(128 + 2 * 6)


def test_fusion_attention_tnd_varlen():
    ns = ops_namespace("v7")
    g = gen(3)
    q, k, v = (torch.randn(7, 2, 128, generator=g) for _ in range(3))
    o, smax, _, _, _, _, numels = ns.npu_fusion_attention(q, k, v, 2, "TND", scale=0.1, actual_seq_qlen=[3, 7],
                                                          actual_seq_kvlen=[3, 7])
    for a_, b_ in ((0, 3), (3, 7)):
        seg = [t[a_:b_].transpose(0, 1)[None] for t in (q, k, v)]
        assert rel(o[a_:b_], attention64(*seg, 0.1)[0][0].transpose(0, 1)) < f32_bound(128 + 2 * 4)
    assert smax.shape == (7, 2, 8) and numels == 2 * (3 * 3 + 4 * 4)
    with pytest.raises(RuntimeError, match="needs actual_seq_qlen"):
        ns.npu_fusion_attention(q, k, v, 2, "TND")
    with pytest.raises(RuntimeError, match="same length"):
        ns.npu_fusion_attention(q, k, v, 2, "TND", actual_seq_qlen=[3, 7], actual_seq_kvlen=[7])


@pytest.mark.parametrize("era", ALL)
def test_fusion_attention_validation(era):
    ns = ops_namespace(era)
    q, k, v = qkv(1, 4, 2)
    fa = ns.npu_fusion_attention
    with pytest.raises(RuntimeError, match="input_layout should be"):
        fa(q, k, v, 2, "BSDN")
    with pytest.raises(RuntimeError, match="input_layout should be"):
        fa(q, k, v, 2, "")
    if ERAS[era].layout_case_insensitive:
        assert fa(q, k, v, 2, "bsnd", scale=0.1)[0].shape == q.shape
    else:
        with pytest.raises(RuntimeError, match="input_layout"):
            fa(q, k, v, 2, "bsnd")
    with pytest.raises(RuntimeError, match="head_num 4 does not match"):
        fa(q, k, v, 4, "BSND")
    with pytest.raises(RuntimeError, match="head_num must be greater than 0"):
        fa(q, k, v, 0, "BSND")
    for kp in (0.0, 1.5, -1.0):
        with pytest.raises(RuntimeError, match="keep_prob"):
            fa(q, k, v, 2, "BSND", keep_prob=kp)
    with pytest.raises(NotEmulated, match="dropout"):
        fa(q, k, v, 2, "BSND", keep_prob=0.9)
    with pytest.raises(RuntimeError, match="same dtype"):
        fa(q, k.half(), v, 2, "BSND")
    with pytest.raises(RuntimeError, match="same shape"):
        fa(q, k, v[:, :3], 2, "BSND")
    with pytest.raises(RuntimeError, match="needs 4-D"):
        fa(q.flatten(2), k, v, 2, "BSND")
    with pytest.raises(RuntimeError, match="padding_mask"):
        fa(q, k, v, 2, "BSND", padding_mask=torch.zeros(1))
    with pytest.raises(RuntimeError, match="sparse_mode 7"):
        fa(q, k, v, 2, "BSND", sparse_mode=7)
    with pytest.raises(RuntimeError, match="query dtype"):
        fa(q.double(), k.double(), v.double(), 2, "BSND")
    q72, k72, v72 = qkv(1, 4, 2, 72)
    if ERAS[era].fa_head_dims is None:
        assert fa(q72, k72, v72, 2, "BSND")[0].shape == q72.shape
        q800 = qkv(1, 2, 1, 800)
        with pytest.raises(RuntimeError, match="head dim"):
            fa(*q800, 1, "BSND")
    else:  # 6.0-era docs: D in {64, 80, 96, 120, 128, 256}
        with pytest.raises(RuntimeError, match="head dim must be one of"):
            fa(q72, k72, v72, 2, "BSND")
    if era == "v26":
        with pytest.raises(RuntimeError, match="softmax_layout"):
            fa(q, k, v, 2, "BSND", softmax_layout="TND")
    else:
        with pytest.raises(RuntimeError, match="Unknown keyword argument 'softmax_layout'"):
            fa(q, k, v, 2, "BSND", softmax_layout="")


# ------------------------------------------------------------------ npu_fused_infer_attention_score


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("layout", ["BSND", "BNSD", "BSH", "BNSD_BSND"])
def test_fia_layouts_lse_and_kv_lengths(era, layout):
    ns = ops_namespace(era)
    b, s, skv, n, d = 2, 5, 9, 2, 128
    q, k, v = qkv(b, s, n, d, skv=skv, dtype=torch.bfloat16)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    lens = [9, 4]
    drop = (torch.arange(skv)[None, :] >= torch.tensor(lens)[:, None])[:, None, None, :]
    ref, _, _, lse = attention64(qt, kt, vt, d ** -0.5, drop)
    conv = {"BSND": lambda t: t, "BNSD": lambda t: t.transpose(1, 2).contiguous(),
            "BNSD_BSND": lambda t: t.transpose(1, 2).contiguous(), "BSH": lambda t: t.flatten(2)}[layout]
    res = ns.npu_fused_infer_attention_score(conv(q), conv(k), conv(v), num_heads=n, scale=d ** -0.5,
                                             input_layout=layout, actual_seq_lengths_kv=lens, softmax_lse_flag=True)
    assert isinstance(res, tuple) and len(res) == 2
    out, lse_out = res
    want = {"BNSD": ref} .get(layout, ref.transpose(1, 2))
    want = want.flatten(2) if layout == "BSH" else want
    assert out.dtype == torch.bfloat16 and rel(out, want) < 1e-2
    assert lse_out.dtype == torch.float32 and lse_out.shape == (b, n, s, 1)
    assert rel(lse_out[..., 0], lse) < 1e-3
    out2, placeholder = ns.npu_fused_infer_attention_score(conv(q), conv(k), conv(v), num_heads=n, scale=d ** -0.5,
                                                           input_layout=layout)
    assert placeholder.numel() == 0 and out2.shape == out.shape  # a tuple even without the flag


def test_fia_validation():
    ns = ops_namespace("v7")
    fia = ns.npu_fused_infer_attention_score
    q, k, v = qkv(1, 4, 2, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="query dtype"):
        fia(q.float(), k.float(), v.float(), num_heads=2, input_layout="BSND")
    with pytest.raises(RuntimeError, match="num_heads 1 must equal"):
        fia(q, k, v, input_layout="BSND")  # num_heads defaults to 1
    with pytest.raises(RuntimeError, match="non-contiguous"):
        fia(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), num_heads=2, input_layout="BNSD")
    with pytest.raises(RuntimeError, match="not supported"):
        fia(q, k, v, num_heads=2, input_layout="SBH")
    q100 = qkv(1, 4, 2, 100, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        fia(*q100, num_heads=2, input_layout="BSND")
    with pytest.raises(RuntimeError, match="actual_seq_lengths_kv"):
        fia(q, k, v, num_heads=2, input_layout="BSND", actual_seq_lengths_kv=[5])
    with pytest.raises(RuntimeError, match="sparse_mode 5"):
        fia(q, k, v, num_heads=2, input_layout="BSND", sparse_mode=5)


# ------------------------------------------------------------------ npu_rotary_mul


def complex_rope64(x, theta):
    """Wan's formulation: (x[2i] + j x[2i+1]) * e^{j theta_i}, complex128. x [B, S, N, D], theta [S, D/2]."""
    xc = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    rot = torch.polar(torch.ones_like(theta.double()), theta.double())[None, :, None, :]
    return torch.view_as_real(xc * rot).flatten(-2)


@pytest.mark.parametrize("era", NEW)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_interleave_equals_the_complex_product(era, dtype):
    ns = ops_namespace(era)
    g = gen(1)
    b, s, n, d = 2, 6, 3, 128
    x = torch.randn(b, s, n, d, generator=g).to(dtype)
    theta = torch.rand(s, d // 2, generator=g) * 6
    cos = theta.cos().repeat_interleave(2, -1)
    sin = theta.sin().repeat_interleave(2, -1)
    out = ns.npu_rotary_mul(x, cos.view(1, s, 1, d), sin.view(1, s, 1, d), rotary_mode="interleave")
    assert out.dtype == dtype and out.shape == x.shape
    # float32: x·cos ± x'·sin, two products and a sum per element, with tables from float32 cos/sin (which may
    # be 1 ulp off on some CPUs' vector math): 4 ulps over K = 2
    assert rel(out, complex_rope64(x, theta)) < (f32_bound(2, ulps=4) if dtype == torch.float32 else 1e-2)
    # the kernel casts r1/r2 to x's dtype first
    c, sn = cos.to(dtype).float().view(1, s, 1, d), sin.to(dtype).float().view(1, s, 1, d)
    xf = x.float()
    turned = torch.stack((-xf[..., 1::2], xf[..., 0::2]), -1).flatten(-2)
    assert torch.equal(out, (xf * c + turned * sn).to(dtype))  # bit-exact: the same element-wise ops, same order
    # BNSD input takes 11SD tables
    xb = x.transpose(1, 2).contiguous()
    outb = ns.npu_rotary_mul(xb, cos.view(1, 1, s, d), sin.view(1, 1, s, d), rotary_mode="interleave")
    assert torch.equal(outb.transpose(1, 2), out)


@pytest.mark.parametrize("era", ALL)
def test_rotary_half_mode(era):
    ns = ops_namespace(era)
    g = gen(2)
    x = torch.randn(1, 5, 2, 128, generator=g)
    r1 = torch.randn(1, 5, 1, 128, generator=g)
    r2 = torch.randn(1, 5, 1, 128, generator=g)
    x1, x2 = x.double().chunk(2, -1)
    want = x.double() * r1.double() + torch.cat((-x2, x1), -1) * r2.double()
    assert rel(ns.npu_rotary_mul(x, r1, r2), want) < f32_bound(2)  # 'half' is the default (and only mode on v6rc2)


@pytest.mark.parametrize("era", NEW)
def test_rotary_validation(era):
    ns = ops_namespace(era)
    x = torch.randn(2, 5, 3, 128)
    t = torch.ones(1, 5, 1, 128)
    rm = ns.npu_rotary_mul
    with pytest.raises(RuntimeError, match="should be half or interleave"):
        rm(x, t, t, rotary_mode="interleaved")
    with pytest.raises(RuntimeError, match="should be half or interleave"):
        rm(x, t, t, rotary_mode="Interleave")
    with pytest.raises(RuntimeError, match="not an accepted layout"):  # per-batch tables: half mode only
        rm(x, torch.ones(2, 5, 1, 128), torch.ones(2, 5, 1, 128), rotary_mode="interleave")
    assert rm(x, torch.ones(2, 5, 1, 128), torch.ones(2, 5, 1, 128)).shape == x.shape  # BS1D in half mode
    with pytest.raises(RuntimeError, match="not an accepted layout"):
        rm(x, torch.ones(5, 128)[None, None], torch.ones(5, 128)[None, None], rotary_mode="interleave")
    with pytest.raises(RuntimeError, match="same shape"):
        rm(x, t, torch.ones(1, 5, 3, 128))
    with pytest.raises(RuntimeError, match="even"):
        rm(torch.randn(1, 5, 1, 7), torch.ones(1, 5, 1, 7), torch.ones(1, 5, 1, 7))
    with pytest.raises(RuntimeError, match="B \\* N < 1000"):
        rm(torch.randn(2, 3, 500, 8), torch.ones(1, 3, 1, 8), torch.ones(1, 3, 1, 8), rotary_mode="interleave")
    x3 = torch.randn(5, 3, 128)
    if era == "v26":  # TND: T1D tables
        assert rm(x3, torch.ones(5, 1, 128), torch.ones(5, 1, 128), rotary_mode="interleave").shape == x3.shape
        rot = torch.zeros(128, 128)
        assert torch.equal(rm(x, t, t, rotate=rot), x)  # x * 1 + (x @ 0) * 1
    else:  # 4-D only in the 7.0.0 docs
        with pytest.raises(RuntimeError, match="must be 4-D"):
            rm(x3, torch.ones(5, 1, 128), torch.ones(5, 1, 128), rotary_mode="interleave")


def test_rotary_old_era_constraints():
    rm = ops_namespace("v6rc2").npu_rotary_mul
    with pytest.raises(RuntimeError, match="multiple of 64"):
        rm(torch.randn(1, 4, 2, 32), torch.ones(1, 4, 1, 32), torch.ones(1, 4, 1, 32))
    assert rm(torch.randn(2, 4, 2, 64), torch.ones(2, 1, 2, 64), torch.ones(2, 1, 2, 64)).shape == (2, 4, 2, 64)


# ------------------------------------------------------------------ npu_rms_norm


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_returns_y_and_rstd(era, dtype):
    ns = ops_namespace(era)
    g = gen(4)
    x = torch.randn(2, 7, 256, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(256, generator=g)).to(dtype)
    y, rstd = ns.npu_rms_norm(x, w, epsilon=1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    assert rstd.dtype == torch.float32 and rstd.shape == (2, 7, 1)
    r64 = torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6)
    assert rel(rstd, r64) < f32_bound(256)  # a 256-term mean of squares, then rsqrt
    assert rel(y, x.double() * r64 * w.double()) < (f32_bound(256) if dtype == torch.float32 else 1e-2)
    # gamma over the two trailing dims
    y2, rstd2 = ns.npu_rms_norm(x, torch.ones(7, 256, dtype=dtype))
    assert rstd2.shape == (2, 1, 1)
    mixed = torch.ones(256)
    if dtype != torch.float32 and not ERAS[era].rms_mixed_gamma:
        with pytest.raises(RuntimeError, match="gamma dtype"):
            ns.npu_rms_norm(x, mixed)
    else:
        assert ns.npu_rms_norm(x, mixed)[0].dtype == dtype  # output follows x, not gamma
    with pytest.raises(RuntimeError, match="trailing dims"):
        ns.npu_rms_norm(x, torch.ones(128, dtype=dtype))
    with pytest.raises(RuntimeError, match="2..8 dims"):
        ns.npu_rms_norm(x[0, 0], w)


# ------------------------------------------------------------------ npu_layer_norm_eval


@pytest.mark.parametrize("era", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_eval(era, dtype):
    ns = ops_namespace(era)
    g = gen(5)
    x = torch.randn(2, 6, 64, generator=g).to(dtype)
    w = torch.randn(64, generator=g).to(dtype)
    b = torch.randn(64, generator=g).to(dtype)
    ref = F.layer_norm(x.double(), (64,), w.double(), b.double(), 1e-6)
    tol = f32_bound(2 * 64) if dtype == torch.float32 else 1e-2  # 64-term mean and variance
    assert rel(ns.npu_layer_norm_eval(x, [64], w, b, eps=1e-6), ref) < tol
    assert rel(ns.npu_layer_norm_eval(x, [64], eps=1e-6), F.layer_norm(x.double(), (64,), eps=1e-6)) < tol
    assert ns.npu_layer_norm_eval(x, [64]).dtype == dtype
    with pytest.raises(RuntimeError, match="normalized_shape"):
        ns.npu_layer_norm_eval(x, [32], w, b)
    with pytest.raises(RuntimeError, match="dtype"):
        ns.npu_layer_norm_eval(x, [64], w.double(), b)


def test_layer_norm_eval_resizes_weight_and_bias_to_the_first_sample():
    """[B, 1, C] modulation with B > 1 collapses to sample 0 (clone + resize_ in LayerNormEvalKernelNpu)."""
    ns = ops_namespace("v7")
    g = gen(6)
    x = torch.randn(2, 5, 32, generator=g)
    scale = torch.randn(2, 1, 32, generator=g)
    shift = torch.randn(2, 1, 32, generator=g)
    normed = F.layer_norm(x.double(), (32,), eps=1e-6)
    per_sample = normed * (1 + scale.double()) + shift.double()
    out = ns.npu_layer_norm_eval(x, [32], 1 + scale, shift, eps=1e-6)
    first = normed * (1 + scale[:1].double()) + shift[:1].double()
    assert rel(out, first) < f32_bound(2 * 32)  # every sample got sample 0's modulation (32-term statistics)
    assert rel(out[1], per_sample[1]) > 0.1
    assert rel(out[:1], per_sample[:1]) < f32_bound(2 * 32)  # batch 1: [1, 1, C] acts like [C]
    grown = ns.npu_layer_norm_eval(x, [32], torch.ones(16), None)  # resize_ grows: uninitialised memory
    assert torch.isnan(grown).any()
