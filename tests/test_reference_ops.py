"""Each reference op against an independent float64 computation of its contract."""

from __future__ import annotations

import math

import pytest
import torch

from _float_bounds import f32_bound
from wanport.models.dit.rope import rope_tables
from wanport.reference.attention import attention_math, attention_sdpa
from wanport.reference.layer_norm import layer_norm
from wanport.reference.layer_norm_modulate import layer_norm_modulate
from wanport.reference.rms_norm import rms_norm
from wanport.reference.rotary import rotary


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def attention_f64(q, k, v, scale, kv_lens=None):
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) * scale
    if kv_lens is not None:
        for b, n in enumerate(kv_lens):
            s[b, :, :, n:] = -math.inf
    lse = torch.logsumexp(s, -1)
    return (torch.softmax(s, -1) @ v).transpose(1, 2), lse


# float32: each output sums D=128 products into a score, then a softmax over at most 29 keys
# (log-sum-exp, then probabilities · v): K = 128 + 2·29 -> 2·√186·eps32 ≈ 1.6e-6.
# bfloat16: the inputs carry bf16's own rounding (2^-9 ≈ 2e-3), 1e-2 is a few of those.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, f32_bound(128 + 2 * 29)), (torch.bfloat16, 1e-2)])
def test_attention_math_matches_f64(dtype, tol):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 37, 3, 128, generator=g).to(dtype) for _ in range(3))
    k = k[:, :29].contiguous()
    v = v[:, :29].contiguous()
    kv_lens = [29, 17]
    out, lse = attention_math(q, k, v, scale=128 ** -0.5, kv_lens=kv_lens, return_lse=True)
    ref, ref_lse = attention_f64(q, k, v, 128 ** -0.5, kv_lens)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 37)
    assert rel(out, ref) < tol
    assert rel(lse, ref_lse) < f32_bound(128 + 29)  # a D-term dot product, then a 29-term log-sum-exp
    # the mask matters: without it sample 1 differs
    unmasked = attention_math(q, k, v, scale=128 ** -0.5)
    assert rel(unmasked[1], ref[1]) > 1e-2


def test_attention_math_chunking_is_invisible(monkeypatch):
    import wanport.reference.attention as mod

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 50, 2, 64, generator=g) for _ in range(3))
    whole = attention_math(q, k, v, scale=0.125)
    monkeypatch.setattr(mod, "_SCORE_BUDGET_BYTES", 2 * 50 * 4 * 3)  # 3 queries per chunk
    chunked = attention_math(q, k, v, scale=0.125)
    # Chunking changes the shapes handed to the BLAS, hence its float32 accumulation order: the two
    # results are two float32 evaluations of the same sums (a 64-term score, a 50-key log-sum-exp and a
    # 50-term probs·v) and differ by ~√K·eps32, K = 64 + 2·50 (measured: up to ~7·eps32 over 40 seeds
    # and 4 chunk sizes on an AVX2 machine, against a bound of ~26·eps32). A misplaced or dropped chunk
    # would be wrong by O(1).
    assert rel(chunked, whole) < f32_bound(64 + 2 * 50)


def test_attention_sdpa_matches_math_and_refuses_lse():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 20, 2, 128, generator=g) for _ in range(3))
    a = attention_sdpa(q, k, v, scale=0.1, kv_lens=[20, 9])
    b = attention_math(q, k, v, scale=0.1, kv_lens=[20, 9])
    assert rel(a, b) < 1e-5
    with pytest.raises(ValueError, match="log-sum-exp"):
        attention_sdpa(q, k, v, scale=0.1, return_lse=True)


def test_attention_rejects_bad_kv_lens():
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="kv_lens"):
        attention_math(q, q, q, scale=1.0, kv_lens=[0])
    with pytest.raises(ValueError, match="kv_lens"):
        attention_math(q, q, q, scale=1.0, kv_lens=[1, 2])


def official_rope_f64(x, grid, head_dim):
    """Wan's rope_apply as complex128 math: per-axis polar tables, adjacent pairs as complex."""
    def params(n_pos, dim):
        freqs = torch.outer(torch.arange(n_pos, dtype=torch.float64),
                            1.0 / torch.pow(10000, torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        return torch.polar(torch.ones_like(freqs), freqs)

    d = head_dim
    tables = [params(1024, d - 4 * (d // 6)), params(1024, 2 * (d // 6)), params(1024, 2 * (d // 6))]
    f, h, w = grid
    c = d // 2
    ft = torch.cat([
        tables[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        tables[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
        tables[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, c)
    xc = torch.view_as_complex(x.double().reshape(x.shape[0], x.shape[1], x.shape[2], c, 2))
    return torch.view_as_real(xc * ft[None]).flatten(3)


# float32: each output is x1·cos - x2·sin (K = 2 terms) with tables rounded once from float64.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, f32_bound(2)), (torch.bfloat16, 1e-2)])
def test_rotary_matches_official_complex_rope(dtype, tol):
    grid = (3, 4, 5)
    s = 60
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, s, 2, 128, generator=g).to(dtype)
    k = torch.randn(2, s, 2, 128, generator=g).to(dtype)
    cos, sin = rope_tables(grid, 128)
    rq, rk = rotary(q, k, cos, sin)
    assert rq.dtype == dtype and rk.dtype == dtype
    assert rel(rq, official_rope_f64(q, grid, 128)) < tol
    assert rel(rk, official_rope_f64(k, grid, 128)) < tol


def test_rotary_padding_rows_are_identity_and_shapes_checked():
    cos, sin = rope_tables((1, 2, 2), 128, total_len=6)
    assert cos.shape == (6, 128)
    x = torch.randn(1, 6, 1, 128)
    out, _ = rotary(x, x, cos, sin)
    assert torch.equal(out[:, 4:], x[:, 4:])  # bit-exact: x·1 - x'·0 rounds to x on any machine
    assert not torch.allclose(out[:, 1:4], x[:, 1:4])
    with pytest.raises(ValueError, match="rotary tables"):
        rotary(x, x, cos[:5], sin[:5])


@pytest.mark.parametrize("xdt,wdt", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                     (torch.bfloat16, torch.bfloat16)])
def test_rms_norm(xdt, wdt):
    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(2, 7, 256, generator=g)).to(xdt)
    w = (1 + 0.1 * torch.randn(256, generator=g)).to(wdt)
    y = rms_norm(x, w, 1e-6)
    xd = x.double()
    ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    assert y.dtype == torch.promote_types(xdt, wdt)
    # float32: a 256-term mean of squares, then rsqrt and two products: K = 256
    assert rel(y, ref) < (f32_bound(256) if xdt == torch.float32 else 1e-2)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("xdt", [torch.float32, torch.bfloat16])
def test_layer_norm(affine, xdt):
    g = torch.Generator().manual_seed(5)
    x = (2 + 3 * torch.randn(2, 7, 96, generator=g)).to(xdt)
    w = 1 + 0.1 * torch.randn(96, generator=g) if affine else None
    b = 0.1 * torch.randn(96, generator=g) if affine else None
    y = layer_norm(x, w, b, 1e-6)
    xd = x.double()
    ref = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + 1e-6)
    if affine:
        ref = ref * w.double() + b.double()
    assert y.dtype == xdt
    # float32: 96-term mean and variance, then the normalisation and the affine: K = 2·96
    assert rel(y, ref) < (f32_bound(2 * 96) if xdt == torch.float32 else 1e-2)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("xdt", [torch.float32, torch.bfloat16])
def test_layer_norm_modulate(per_token, xdt):
    g = torch.Generator().manual_seed(6)
    x = (1 + 2 * torch.randn(2, 9, 64, generator=g)).to(xdt)
    rows = 9 if per_token else 1
    shift = torch.randn(2, rows, 64, generator=g)
    scale = 0.5 * torch.randn(2, rows, 64, generator=g)
    y = layer_norm_modulate(x, shift, scale, 1e-6)
    xd = x.double()
    normed = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + 1e-6)
    ref = normed * (1 + scale.double()) + shift.double()
    assert y.dtype == torch.float32  # promote(x, fp32 modulation)
    # float32: 64-term mean and variance, then the normalisation and (1 + scale)·n + shift: K = 2·64
    assert rel(y, ref) < (f32_bound(2 * 64) if xdt == torch.float32 else 1e-2)


def test_gated_residual_and_out_dtype():
    from wanport.reference.gated_residual import gated_residual

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 32, generator=g).bfloat16()
    y = torch.randn(2, 5, 32, generator=g).bfloat16()
    gate = torch.randn(2, 1, 32, generator=g)
    out = gated_residual(x, y, gate)
    assert out.dtype == torch.float32
    # bf16 inputs are exact in float32: x + y·gate is two float32 roundings (K = 2)
    assert rel(out, x.double() + y.double() * gate.double()) < f32_bound(2)
    w = torch.ones(32)
    assert rms_norm(x, w, 1e-6, out_dtype=torch.bfloat16).dtype == torch.bfloat16
    # bit-exact: out_dtype is the same ops in the same order followed by the same cast
    assert torch.equal(rms_norm(x, w, 1e-6, out_dtype=torch.bfloat16), rms_norm(x, w, 1e-6).bfloat16())
    assert layer_norm(out, None, None, 1e-6, out_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert layer_norm_modulate(x, gate, gate, 1e-6, out_dtype=torch.bfloat16).dtype == torch.bfloat16
