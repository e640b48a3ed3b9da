"""FP8 attention (``quant.attention: fp8``; docs/quantization.md, "FP8 attention").

* the scheme's quantizers: one Q/K scale per (sample, head, 128-row block), one V scale per channel,
  each ``amax / 448``; the torch fp8 cast gives the emulation's values bit for bit;
* the float32 emulation (the ground truth) against float64 attention: the score error inside the
  worst-case bound of half an e4m3 step per element, and the output's rms error within a factor 2
  of the rounding-noise prediction propagated through softmax (so the error follows e4m3's 3
  mantissa bits, not one machine's result); padded keys; the log-sum-exp;
* the Triton kernel (run by Triton's CPU interpreter on float32 operands on e4m3's grid, P rounded
  in the kernel) against the emulation, when triton is installed;
* selection: the reference picks its emulation for the self-attention only when asked, an
  accelerator without FP8 attention refuses before weights load, cuda's kernel says why it is
  unavailable; the tiny pipeline runs with quant.attention: fp8 and its report names it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wanport.errors import BackendError
from wanport.ops.attention_quant import (
    BLOCK,
    FP8_ATTENTION_TOLERANCE,
    P_SCALE,
    quantize_channels,
    quantize_qkv,
    quantize_row_blocks,
    to_e4m3_grid,
)
from wanport.reference.attention import attention_math
from wanport.reference.fp8_attention import fp8_attention

U = 2.0 ** -4  # e4m3: 3 mantissa bits, half a step is 2^-4 of the binade's base
HAS_FP8 = hasattr(torch, "float8_e4m3fn")
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _qkv(seed, b=1, s=300, skv=None, n=2, d=64):
    g = torch.Generator().manual_seed(seed)
    skv = skv or s
    q = torch.randn(b, s, n, d, generator=g) * 1.5
    q[:, :7] *= 1e-3  # rows deep in e4m3's subnormals of their block
    k = torch.randn(b, skv, n, d, generator=g) + 0.7  # an offset the smoothing removes
    v = torch.randn(b, skv, n, d, generator=g) * (0.2 + 3 * torch.rand(d, generator=g))  # channels of many sizes
    return q, k, v


def _ulp(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3's step around each element of x (x's units), for a float64 x and its scale."""
    a = (x / scale).abs().clamp(min=2.0 ** -6)
    return torch.pow(2.0, torch.floor(torch.log2(a)) - 3) * scale


def _rows(scale_blocks: torch.Tensor, s: int) -> torch.Tensor:
    """[B, N, nblocks] -> [B, N, s, 1] (each row its block's scale), float64."""
    return scale_blocks.double().repeat_interleave(BLOCK, dim=2)[:, :, :s, None]


# ---------------------------------------------------------------- the quantizers


def test_scales_are_per_block_and_per_channel():
    q, k, v = _qkv(0, b=2, s=300, n=3)
    qf = q.float().transpose(1, 2)
    vals, scale = quantize_row_blocks(qf, to_e4m3_grid)
    assert tuple(vals.shape) == (2, 3, 384, 64) and tuple(scale.shape) == (2, 3, 3)  # 300 rows -> 3 blocks
    for j in range(3):
        block = qf[:, :, j * BLOCK:(j + 1) * BLOCK]
        assert torch.equal(scale[:, :, j], block.abs().amax(dim=(-1, -2)) / 448.0)
    assert bool((vals[:, :, 300:] == 0).all())  # the padding rows
    assert float(vals.abs().max()) == 448.0 and bool((vals.abs().amax(dim=(-1, -2)) == 448.0).all())
    bumped = qf.clone()
    bumped[1, 2, 200] *= 40.0  # one row of block 1 of sample 1, head 2
    s2 = quantize_row_blocks(bumped, to_e4m3_grid)[1]
    changed = (s2 != scale).nonzero().tolist()
    assert changed == [[1, 2, 1]]
    vt, vs = quantize_channels(v.float().transpose(1, 2), to_e4m3_grid)
    assert tuple(vt.shape) == (2, 3, 64, 384) and tuple(vs.shape) == (2, 3, 64)
    assert torch.equal(vs, v.float().abs().amax(dim=1) / 448.0)
    assert torch.equal(vt[..., :300] * vs[..., None], (vt * vs[..., None])[..., :300])
    assert bool((vt[..., 300:] == 0).all())


@pytest.mark.skipif(not HAS_FP8, reason="torch without float8_e4m3fn")
def test_fp8_cast_gives_the_emulation_values():
    """A kernel's operands (torch's e4m3 cast) are the emulation's values bit for bit."""
    q, k, v = _qkv(1, s=260)
    emu = quantize_qkv(q, k, v, to_e4m3_grid)
    cast = quantize_qkv(q.bfloat16(), k.bfloat16(), v.bfloat16(), lambda t: t.to(torch.float8_e4m3fn))
    emu_b = quantize_qkv(q.bfloat16(), k.bfloat16(), v.bfloat16(), to_e4m3_grid)
    for a, b in zip(emu_b, cast):
        assert torch.equal(a, b.float()) if b.dtype == torch.float8_e4m3fn else torch.equal(a, b)
    assert cast[0].dtype == torch.float8_e4m3fn and emu[0].dtype == torch.float32


# ---------------------------------------------------------------- the emulation vs float64


def test_score_error_inside_half_a_step_per_element():
    """The scores the scheme computes from its Q/K values are within the worst case of half an e4m3
    step on every element of q and of the smoothed k (plus float32 products)."""
    q, k, v = _qkv(2)
    s, d = q.shape[1], q.shape[-1]
    q8, sq, k8, sk, _, _, k_mean = quantize_qkv(q, k, v, to_e4m3_grid)
    qd = q.double().transpose(1, 2)
    kd = k.double().transpose(1, 2) - k_mean.double()
    got = (q8[:, :, :s].double() * _rows(sq, s)) @ (k8[:, :, :s].double() * _rows(sk, s)).transpose(-1, -2)
    exact = qd @ kd.transpose(-1, -2)
    uq, uk = _ulp(qd, _rows(sq, s)) / 2, _ulp(kd, _rows(sk, s)) / 2
    aq, ak = qd.abs(), kd.abs()
    bound = uq @ ak.transpose(-1, -2) + aq @ uk.transpose(-1, -2) + uq @ uk.transpose(-1, -2) \
        + d * 2.0 ** -23 * ((aq + uq) @ (ak + uk).transpose(-1, -2))
    err = (got - exact).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    assert float((err / bound).max()) > 0.2  # the bound is not vacuous


@pytest.mark.parametrize("seed, scale_mult", [(3, 1.0), (4, 2.0)])
def test_emulation_error_follows_the_rounding_noise(seed, scale_mult):
    """First-order propagation of independent roundings (uniform on +-step/2, variance step^2/12):
    scores move by scale*(dq.k + q.dk), which moves out_i by sum_j w_ij ds_ij (v_j - out_i); V's
    rounding adds sum_j w_ij^2 dv_j^2; P's rounding (448 p on e4m3's grid, p taken against the
    running max of the 128-key blocks seen so far, then rescaled to the final max) adds
    sum_j (dp_ij / l_i)^2 v_j^2. The observed rms error is within a factor 2 of that prediction."""
    q, k, v = _qkv(seed)
    d = q.shape[-1]
    scale = d ** -0.5 * scale_mult
    s = q.shape[1]
    out = fp8_attention(q, k, v, scale=scale).double()
    exact = attention_math(q.double(), k.double(), v.double(), scale=scale)
    err = (out - exact).transpose(1, 2)  # [B, N, S, D]

    _, sq, _, sk, _, sv, k_mean = quantize_qkv(q, k, v, to_e4m3_grid)
    qd, vd = q.double().transpose(1, 2), v.double().transpose(1, 2)
    kd = k.double().transpose(1, 2) - k_mean.double()
    sc = scale * qd @ kd.transpose(-1, -2)  # [B, N, S, S] (smoothed: softmax is the same)
    w = torch.softmax(sc, dim=-1)
    o = w @ vd
    var_q = _ulp(qd, _rows(sq, s)) ** 2 / 12
    var_k = _ulp(kd, _rows(sk, s)) ** 2 / 12
    var_s = scale ** 2 * (var_q @ (kd ** 2).transpose(-1, -2) + (qd ** 2) @ var_k.transpose(-1, -2))
    var_from_s = torch.einsum("bnij,bnijd->bnid", w ** 2 * var_s, (vd[:, :, None] - o[:, :, :, None]) ** 2)
    var_v = _ulp(vd, sv.double()[:, :, None, :]) ** 2 / 12
    var_from_v = (w ** 2) @ var_v
    nb = -(-s // BLOCK)
    pad = torch.nn.functional.pad(sc, (0, nb * BLOCK - s), value=-math.inf)
    running = pad.reshape(*sc.shape[:-1], nb, BLOCK).amax(-1).cummax(dim=-1).values  # [B, N, S, nb]
    m_run = running.repeat_interleave(BLOCK, dim=-1)[..., :s]
    m_fin = sc.amax(-1, keepdim=True)
    p_run = torch.exp(sc - m_run)
    l = torch.exp(sc - m_fin).sum(-1, keepdim=True)
    step_p = _ulp(p_run * P_SCALE, torch.ones(())) / P_SCALE
    var_w = (step_p ** 2 / 12) * (torch.exp(m_run - m_fin) / l) ** 2
    var_from_p = var_w @ (vd ** 2)
    predicted = torch.sqrt((var_from_s + var_from_v + var_from_p).mean())
    observed = torch.sqrt((err ** 2).mean())
    assert 0.5 < float(observed / predicted) < 2.0, (float(observed), float(predicted))
    rel = float((out - exact).norm() / exact.norm())
    assert 1e-3 < rel < FP8_ATTENTION_TOLERANCE, rel


def test_padded_keys_and_log_sum_exp():
    """Keys past kv_lens do not count (each sample's smoothing and V scales see only its keys: the
    same as running the sample alone on its keys), and the LSE matches float64 attention's to the
    score error (the smoothing's shift added back)."""
    q, k, v = _qkv(5, b=2, s=150, skv=260)
    scale = q.shape[-1] ** -0.5
    out, lse = fp8_attention(q, k, v, scale=scale, kv_lens=[260, 131], return_lse=True)
    alone = fp8_attention(q[1:], k[1:, :131], v[1:, :131], scale=scale)
    assert torch.equal(out[1:], alone)
    ex, ex_lse = attention_math(q.double(), k.double(), v.double(), scale=scale, kv_lens=[260, 131], return_lse=True)
    assert float((out.double() - ex).norm() / ex.norm()) < FP8_ATTENTION_TOLERANCE
    assert lse.dtype == torch.float32 and tuple(lse.shape) == (2, 2, 150)
    assert float((lse.double() - ex_lse).abs().max()) < 0.1  # |ds| of a few 1e-2 at these scores
    with pytest.raises(ValueError):
        fp8_attention(q, k, v, scale=scale, kv_lens=[0, 5])


# ---------------------------------------------------------------- the Triton kernel, interpreted

_INTERPRETED = textwrap.dedent("""
    import numpy as np, torch
    import triton.runtime.interpreter as interp
    _orig = interp._patch_lang_tensor
    def _patched(tensor, scope):  # numpy >= 2.4 refuses int() of a 1-element array (Triton 3.6's scalars)
        _orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
    interp._patch_lang_tensor = _patched
    from wanport_cuda.fp8_attention import make_fp8_attention
    from wanport.reference.fp8_attention import fp8_attention
    kern = make_fp8_attention(emulate=True)
    g = torch.Generator().manual_seed(7)
    worst = 0.0
    for b, s, skv, n, d, lens in ((1, 200, 200, 2, 64, None), (2, 130, 260, 1, 128, [260, 100])):
        q = torch.randn(b, s, n, d, generator=g)
        k = torch.randn(b, skv, n, d, generator=g) + 0.3
        v = torch.randn(b, skv, n, d, generator=g)
        o, l = kern(q, k, v, scale=d ** -0.5, kv_lens=lens, return_lse=True)
        r, rl = fp8_attention(q, k, v, scale=d ** -0.5, kv_lens=lens, return_lse=True)
        assert o.shape == r.shape and l.shape == rl.shape
        worst = max(worst, float((o - r).norm() / r.norm()), float((l - rl).abs().max()))
    print("WORST", worst)
""")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernel_in_the_interpreter_matches_the_emulation():
    """The kernel's code path (block loop, masks, scales, online softmax, P rounding, LSE) run by
    Triton's interpreter on CPU with float32 operands on e4m3's grid: the emulation within float32
    summation order and exp2-vs-exp (1e-5; a P element flipping one e4m3 step would show as ~1e-3)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    worst = float(res.stdout.split("WORST")[-1])
    assert worst < 1e-5, worst


# ---------------------------------------------------------------- selection


@pytest.fixture(scope="module")
def registry():
    from wanport.registry import discover

    return discover()


def _reqs(device_type, attention_quant):
    from wanport.models.dit import DiTConfig
    from wanport.models.dit.requirements import dit_requirements
    from wanport.precision import PRESETS

    return dit_requirements(DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1), PRESETS["official"],
                            device_type, attention_quant=attention_quant)


def test_reference_picks_its_emulation_only_when_asked(registry):
    from wanport.registry import resolve_ops

    ref = registry.backends["reference"]
    table = resolve_ops(registry, ref, _reqs("cpu", "fp8"))
    assert table.self_attention.impl == "reference.emulate_fp8" and table.self_attention.why == "quant.attention: fp8"
    assert table.cross_attention.impl == "reference.math"
    plain = resolve_ops(registry, ref, _reqs("cpu", None))
    assert plain.self_attention.impl == "reference.math"  # lossy: never by default
    with pytest.raises(BackendError, match="does not implement quantization scheme fp8"):
        resolve_ops(registry, ref, _reqs("cpu", "fp8"), {"self_attention": "reference.math"})


def test_an_accelerator_without_fp8_attention_refuses(registry):
    """Ascend (Atlas A2 has no FP8) refuses at resolution -- before any weight loads -- and the
    reference emulation is not a fallback on an accelerator."""
    from npu_emulation import installed
    from wanport.registry import resolve_ops

    with installed("v26"):
        with pytest.raises(BackendError) as e:
            resolve_ops(registry, registry.backends["ascend"], _reqs("npu", "fp8"))
    msg = str(e.value)
    assert "quant.attention: fp8: backend 'ascend' has no FP8 attention" in msg
    assert "reference.emulate_fp8" not in msg and "Set quant.attention: none" in msg


def test_cuda_fp8_attention_says_why_it_is_unavailable(registry):
    from wanport_cuda.plugin import fp8_attention_reason

    impl = next(i for i in registry.impls if i.qualified_name == "cuda.fp8_triton")
    assert impl.exact is False and 0 < impl.tolerance == FP8_ATTENTION_TOLERANCE
    assert impl.constraints.schemes == frozenset({"fp8"}) and impl.constraints.lse
    if not torch.cuda.is_available():
        ok, why = impl.available()
        assert not ok and why
    assert fp8_attention_reason(True, True, (9, 0)) == (True, "")
    assert "sm90" in fp8_attention_reason(True, True, (8, 9))[1]
    assert "triton" in fp8_attention_reason(False, True, (9, 0))[1]
    assert "float8_e4m3fn" in fp8_attention_reason(True, False, (9, 0))[1]
    assert "no CUDA device" in fp8_attention_reason(True, True, None)[1]


# ---------------------------------------------------------------- end to end


def test_tiny_pipeline_runs_with_fp8_attention(tiny_ckpt, tmp_path):
    from wanport import cli

    argv = ["run", "--no-progress", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path,
            "output.name=a", "sample.steps=1", "sample.size=32*32", "sample.frame_num=5", "quant.attention=fp8"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["ops"]["self_attention"] == {"impl": "reference.emulate_fp8", "why": "quant.attention: fp8"}
    assert report["ops"]["cross_attention"]["impl"] == "reference.math"
    assert os.path.getsize(tmp_path / "a.mp4") > 0


def test_bench_dit_runs_fp8_attention_beside_the_exact_forward():
    from wanport.bench.dit import bench_dit, markdown, parse_quant
    from wanport.errors import ConfigError

    assert parse_quant("fp8_rowwise+fp8_attention") == ("fp8_rowwise", "fp8")
    assert parse_quant("fp8_attention") == (None, "fp8") and parse_quant(None) == (None, None)
    for bad in ("fp8", "fp8_attention+fp8_attention", "int8_w8a8+fp8_rowwise"):
        with pytest.raises(ConfigError, match="--quant takes"):
            parse_quant(bad)
    result = bench_dit("wan2.1-t2v-tiny", "64*64", 5, backend="reference", warmup=0, repeats=1,
                       quant="int8_w8a16+fp8_attention")
    q = result["quant"]
    assert q["self_attention_impl"] == "reference.emulate_fp8" and q["attention"] == "fp8"
    assert q["quant_linear_impl"] == "reference.emulate_int8_w8a16" and q["layers_quantized"] > 0
    assert result["ops"]["self_attention"] == "reference.math"  # the exact forward
    assert 0 < q["rel_l2_vs_exact"] < 0.5 and q["nonfinite"] == 0
    assert "reference.emulate_fp8" in markdown(result)
