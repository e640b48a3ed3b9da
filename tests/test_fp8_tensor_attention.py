"""FP8 attention, scheme ``fp8_tensor`` (``quant.attention: fp8_tensor``: what cuDNN's FP8 SDPA computes;
docs/quantization.md, "FP8 attention").

* the quantizer: one scale ``amax / 448`` per (sample, head), the torch fp8 cast gives the emulation's
  values bit for bit;
* the float32 emulation (the ground truth) against float64 attention: the output's rms error within
  a factor 2 of the rounding-noise prediction (Q, K, V, P and O each rounded to e4m3) -- so the error
  follows e4m3's 3 mantissa bits, not one machine's result;
* K and V smoothing: a common key offset or value offset leaves the error where it was (unsmoothed,
  a value offset would round every query's output the same way: a bias, not noise);
* scales are per (sample, head): another head's or sample's values do not move this one's output
  (what CFG-parallel and Ulysses rely on; per-tensor scales would fail it); padded keys; no LSE;
* the cuda quantizer kernel (Triton's CPU interpreter) against the torch formula, when triton is
  installed;
* selection: the reference picks its emulation when asked, ring attention (which needs the LSE) is
  refused naming the fix, cuda.fp8_cudnn says why it is unavailable; config rejects an unknown
  scheme; ``bench dit --quant`` parses the token; the tiny pipeline runs and reports the scheme.
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

from wanport.errors import BackendError, ConfigError
from wanport.ops.attention_quant import (
    BLOCK,
    FP8_ATTENTION_TOLERANCE,
    O_HEADROOM,
    P_SCALE,
    head_means,
    quantize_heads,
    smooth_heads,
    to_e4m3_grid,
)
from wanport.reference.attention import attention_math
from wanport.reference.fp8_attention import fp8_tensor_attention

HAS_FP8 = hasattr(torch, "float8_e4m3fn")
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _qkv(seed, b=1, s=300, skv=None, n=2, d=64):
    g = torch.Generator().manual_seed(seed)
    skv = skv or s
    q = torch.randn(b, s, n, d, generator=g) * 1.5
    q[:, :7] *= 1e-3  # rows deep in e4m3's subnormals of their head's scale
    k = torch.randn(b, skv, n, d, generator=g) + 0.7  # an offset the scheme's K smoothing takes away
    v = torch.randn(b, skv, n, d, generator=g) * (0.2 + 3 * torch.rand(d, generator=g))  # channels of many sizes
    return q, k, v


def _ulp(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3's step around each element of x (x's units), for a float64 x and its scale (below 2^-6,
    the subnormals, the step stays 2^-9)."""
    a = (x / scale).abs().clamp(min=2.0 ** -6)
    return torch.pow(2.0, torch.floor(torch.log2(a)) - 3) * scale


def _heads(desc: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, N, 1, 1] float64, to scale [B, N, S, D] tensors."""
    return desc.double()[:, :, None, None]


# ---------------------------------------------------------------- the quantizer


def test_one_scale_per_sample_and_head():
    q, _, _ = _qkv(0, b=2, s=300, n=3)
    vals, desc = quantize_heads(q, to_e4m3_grid)
    assert tuple(vals.shape) == (2, 300, 3, 64) and tuple(desc.shape) == (2, 3) and desc.dtype == torch.float32
    assert torch.equal(desc, q.abs().amax(dim=(1, 3)) / 448.0)
    assert bool((vals.abs().amax(dim=(1, 3)) == 448.0).all())  # each head's largest value maps to 448
    assert torch.equal(vals, to_e4m3_grid(vals))  # on e4m3's grid
    bumped = q.clone()
    bumped[1, 200, 2] *= 40.0  # one row of sample 1, head 2
    changed = (quantize_heads(bumped, to_e4m3_grid)[1] != desc).nonzero().tolist()
    assert changed == [[1, 2]]


@pytest.mark.skipif(not HAS_FP8, reason="torch without float8_e4m3fn")
def test_fp8_cast_gives_the_emulation_values():
    q, _, _ = _qkv(1, b=2, s=260)
    qb = q.bfloat16()
    emu, emu_d = quantize_heads(qb, to_e4m3_grid)
    cast, cast_d = quantize_heads(qb, lambda t: t.to(torch.float8_e4m3fn))
    assert cast.dtype == torch.float8_e4m3fn and torch.equal(emu, cast.float()) and torch.equal(emu_d, cast_d)


# ---------------------------------------------------------------- the emulation vs float64


@pytest.mark.parametrize("seed, scale_mult", [(3, 1.0), (4, 2.0)])
def test_emulation_error_follows_the_rounding_noise(seed, scale_mult):
    """First-order propagation of independent roundings, each uniform on +-step/2 (variance
    step^2/12), with ONE scale per (sample, head) for q, k, v:
    - scores move by ds = scale*(dq.k + q.dk), which moves out_i by sum_j w_ij ds_ij (v_j - out_i);
    - V is smoothed (vc = v - mean) before its rounding, which adds sum_j w_ij^2 dvc_j^2;
    - P's rounding (448 p on e4m3's grid, p against the running max of the 128-key blocks seen so
      far, then rescaled to the final max) adds sum_j (dp_ij / l_i)^2 vc_j^2 (P multiplies the
      smoothed values; the mean is added back exactly);
    - O's own rounding to e4m3 (of oc = w vc, at the smoothed V's scale times O_HEADROOM) adds
      step(oc / s_o)^2 s_o^2 / 12 per element (where |oc| << amax it lands among the subnormals).
    The observed rms error is within a factor 2 of that prediction, and the relative L2 inside the
    declared tolerance."""
    q, k, v = _qkv(seed)
    d = q.shape[-1]
    scale = d ** -0.5 * scale_mult
    s = q.shape[1]
    out = fp8_tensor_attention(q, k, v, scale=scale).double()
    exact = attention_math(q.double(), k.double(), v.double(), scale=scale)
    err = (out - exact).transpose(1, 2)  # [B, N, S, D]

    _, dq = quantize_heads(q, to_e4m3_grid)
    _, dk = quantize_heads(smooth_heads(k), to_e4m3_grid)  # K is quantized after its mean is taken away
    _, dv = quantize_heads(smooth_heads(v), to_e4m3_grid)
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q, k, v))
    kc = smooth_heads(k).double().transpose(1, 2)
    vc = smooth_heads(v).double().transpose(1, 2)
    sc = scale * qd @ kd.transpose(-1, -2)  # [B, N, S, S]
    w = torch.softmax(sc, dim=-1)
    o = w @ vd
    var_q = _ulp(qd, _heads(dq)) ** 2 / 12
    var_k = _ulp(kc, _heads(dk)) ** 2 / 12
    var_s = scale ** 2 * (var_q @ (kc ** 2).transpose(-1, -2) + (qd ** 2) @ var_k.transpose(-1, -2))
    var_from_s = torch.einsum("bnij,bnijd->bnid", w ** 2 * var_s, (vd[:, :, None] - o[:, :, :, None]) ** 2)
    var_from_v = (w ** 2) @ (_ulp(vc, _heads(dv)) ** 2 / 12)
    nb = -(-s // BLOCK)
    pad = torch.nn.functional.pad(sc, (0, nb * BLOCK - s), value=-math.inf)
    running = pad.reshape(*sc.shape[:-1], nb, BLOCK).amax(-1).cummax(dim=-1).values  # [B, N, S, nb]
    m_run = running.repeat_interleave(BLOCK, dim=-1)[..., :s]
    m_fin = sc.amax(-1, keepdim=True)
    p_run = torch.exp(sc - m_run)
    l = torch.exp(sc - m_fin).sum(-1, keepdim=True)
    step_p = _ulp(p_run * P_SCALE, torch.ones(())) / P_SCALE
    var_from_p = ((step_p ** 2 / 12) * (torch.exp(m_run - m_fin) / l) ** 2) @ (vc ** 2)
    var_from_o = _ulp(w @ vc, _heads(dv) * O_HEADROOM) ** 2 / 12
    predicted = torch.sqrt((var_from_s + var_from_v + var_from_p + var_from_o).mean())
    observed = torch.sqrt((err ** 2).mean())
    assert 0.5 < float(observed / predicted) < 2.0, (float(observed), float(predicted))
    # O's rounding is a real part of it (without that term the prediction would be off)
    assert float(var_from_o.mean() / (predicted ** 2)) > 0.05
    rel = float((out - exact).norm() / exact.norm())
    assert 1e-3 < rel < FP8_ATTENTION_TOLERANCE, rel


def test_scales_are_per_sample_and_head():
    """Sample 0 / head 0's output has the same bits when every other head and sample is 50x larger
    (one scale over the whole tensor would coarsen head 0's grid 50x and move it); sample 1 gives
    the bits it gives alone (what CFG-parallel and Ulysses, which split samples and heads, need)."""
    q, k, v = _qkv(5, b=2, s=200, n=3)
    scale = q.shape[-1] ** -0.5
    out = fp8_tensor_attention(q, k, v, scale=scale)
    big = [x.clone() for x in (q, k, v)]
    for x in big:
        x[1] *= 50.0
        x[0, :, 1:] *= 50.0
    out_big = fp8_tensor_attention(*big, scale=scale)
    assert torch.equal(out_big[0, :, 0], out[0, :, 0])
    alone = fp8_tensor_attention(*(x[1:, :, 2:] for x in big), scale=scale)
    assert torch.equal(out_big[1:, :, 2:], alone)
    # the check has teeth: the tensor-wide amax is far above head 0's, so a scale per tensor (or per
    # sample) would put head 0 on a 50x coarser grid and change its output
    for x, xb in zip((q, k, v), big):
        assert float(xb.abs().max()) > 10 * float(x[0, :, 0].abs().max())
    coarse = to_e4m3_grid(q[0, :, 0] * (448.0 / big[0].abs().max())) * (big[0].abs().max() / 448.0)
    assert not torch.equal(coarse, to_e4m3_grid(q[0, :, 0] * (448.0 / q[0, :, 0].abs().max())) * (
        q[0, :, 0].abs().max() / 448.0))


def test_a_common_key_offset_is_smoothed_away():
    """Adding the same vector to every key of a head changes no softmax weight; with K smoothing it
    does not change the error either, while K quantized with the offset (one scale per head spanning
    offset + spread) would round each key by a step of the offset's size: scores off by q . dk with
    |dk| ~ 2^-4 |offset|, here tens of times the spread's own rounding."""
    q, k, v = _qkv(8, s=256)
    scale = q.shape[-1] ** -0.5
    offset = 20.0 * torch.randn(1, 1, k.shape[2], k.shape[3], generator=torch.Generator().manual_seed(9))
    exact = attention_math(q.double(), k.double(), v.double(), scale=scale)

    def rel(out):
        return float((out.double() - exact).norm() / exact.norm())

    plain, shifted = rel(fp8_tensor_attention(q, k, v, scale=scale)), rel(fp8_tensor_attention(q, k + offset, v, scale=scale))
    assert shifted < 1.5 * plain, (plain, shifted)
    # what the offset would do unsmoothed: K's e4m3 rounding error grows with it
    k8, dk = quantize_heads(k + offset, to_e4m3_grid)
    kc8, dkc = quantize_heads(smooth_heads(k + offset), to_e4m3_grid)
    err_raw = (k8 * dk[:, None, :, None] - (k + offset)).norm()
    err_smooth = (kc8 * dkc[:, None, :, None] - smooth_heads(k + offset)).norm()
    assert err_raw > 5 * err_smooth


def test_a_common_value_offset_is_smoothed_away():
    """Adding the same vector to every value of a head adds it to every output (softmax weights sum
    to 1). With V smoothing the error does not grow with it: the offset is taken away before V and O
    are rounded and added back in float32. Unsmoothed, V's and O's scale would span the offset, and
    where attention averages many keys (every output row close to the same mean) each row's O would
    round the SAME way: the error would be a per-channel bias tens of times the spread's rounding."""
    q, k, v = _qkv(10, s=256)
    q = q * 0.05  # flat attention: every output close to the keys' mean, as in a DiT with random weights
    scale = q.shape[-1] ** -0.5
    offset = 20.0 * torch.randn(1, 1, v.shape[2], v.shape[3], generator=torch.Generator().manual_seed(11))

    def abs_err(vv):
        exact = attention_math(q.double(), k.double(), vv.double(), scale=scale)
        return (fp8_tensor_attention(q, k, vv, scale=scale).double() - exact)

    plain, shifted = abs_err(v), abs_err(v + offset)
    # the offset's own float32 rounding (|offset| ~ 50, ulp 4e-6) is far below the e4m3 error
    assert float(shifted.norm()) < 1.5 * float(plain.norm()), (float(plain.norm()), float(shifted.norm()))
    # the mean is what smoothing takes away: exactly the per-channel mean over the keys
    assert torch.allclose(head_means(v + offset), head_means(v) + offset, atol=1e-4)
    # what rounding the unsmoothed output would do: the flat-attention output is nearly the same
    # for every query, so e4m3 rounds all queries alike -- the error's mean over the queries (a
    # bias) is then as large as the error itself
    exact = attention_math(q.double(), k.double(), (v + offset).double(), scale=scale)
    s_o = (v + offset).abs().amax(dim=(1, 3)).double()[:, None, :, None] / 448.0
    raw = to_e4m3_grid((exact / s_o).float()).double() * s_o - exact
    assert float(raw.mean(dim=1).norm()) > 0.5 * float(raw.norm()) / raw.shape[1] ** 0.5
    assert float(raw.norm()) > 5 * float(shifted.norm()), (float(raw.norm()), float(shifted.norm()))


def test_padded_keys_and_no_log_sum_exp():
    q, k, v = _qkv(6, b=2, s=150, skv=260)
    scale = q.shape[-1] ** -0.5
    out = fp8_tensor_attention(q, k, v, scale=scale, kv_lens=[260, 131])
    alone = fp8_tensor_attention(q[1:], k[1:, :131], v[1:, :131], scale=scale)
    assert torch.equal(out[1:], alone)  # sample 1's scales see only its valid keys
    ex = attention_math(q.double(), k.double(), v.double(), scale=scale, kv_lens=[260, 131])
    assert float((out.double() - ex).norm() / ex.norm()) < FP8_ATTENTION_TOLERANCE
    assert out.dtype == q.dtype
    with pytest.raises(ValueError, match="no log-sum-exp"):
        fp8_tensor_attention(q, k, v, scale=scale, return_lse=True)


# ---------------------------------------------------------------- the cuda quantizer, interpreted

_INTERPRETED = textwrap.dedent("""
    import numpy as np, torch
    import triton.runtime.interpreter as interp
    _orig = interp._patch_lang_tensor
    def _patched(tensor, scope):  # numpy >= 2.4 refuses int() of a 1-element array (Triton 3.6's scalars)
        _orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
    interp._patch_lang_tensor = _patched
    from wanport_cuda.fp8_cudnn_attention import SHIFT_IN, SHIFT_OUT, centered_amax, scale_cast
    from wanport.ops.attention_quant import head_multipliers
    g = torch.Generator().manual_seed(3)
    worst = 0.0
    full = torch.randn(2, 150, 3, 48, generator=g) * torch.tensor([1.0, 30.0, 0.01])[None, None, :, None]
    full = full + torch.randn(2, 1, 3, 48, generator=g)
    for x in (full, full[:, :97], full.transpose(0, 1).contiguous().transpose(0, 1)):  # a key slice, odd strides
        mult, desc = head_multipliers(x)
        for sat in (True, False):
            got = scale_cast(x, mult, torch.float32, saturate=sat)
            want = x.float() * mult[:, None, :, None]
            want = want.clamp(-448.0, 448.0) if sat else want
            assert got.is_contiguous() and got.shape == x.shape
            worst = max(worst, float((got - want).abs().max()))
        back = scale_cast(got, desc, torch.float32, saturate=False)
        worst = max(worst, float((back - got * desc[:, None, :, None]).abs().max()))
        mean = x.float().mean(dim=1)  # [B, N, D]
        centred = x.float() - mean[:, None]
        worst = max(worst, float((centered_amax(x, mean) - centred.abs().amax(dim=(1, 3))).abs().max()))
        got = scale_cast(x, mult, torch.float32, saturate=True, shift=mean, shift_mode=SHIFT_IN)
        worst = max(worst, float((got - (centred * mult[:, None, :, None]).clamp(-448.0, 448.0)).abs().max()))
        back = scale_cast(got, desc, torch.float32, saturate=False, shift=mean, shift_mode=SHIFT_OUT)
        worst = max(worst, float((back - (got * desc[:, None, :, None] + mean[:, None])).abs().max()))
    print("WORST", worst)
""")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_quantizer_kernel_in_the_interpreter_matches_the_torch_formula():
    """The scale-and-cast kernel's indexing (sample, head, row tiles, head dim 48 masked to 64,
    strided inputs; the mean subtracted or added per channel) and the centred amax, run by Triton's
    interpreter with float32 output: the torch formula exactly
    (the e4m3 rounding itself is the GPU cast, checked on the device by the check script)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert float(res.stdout.split("WORST")[-1]) == 0.0


# ---------------------------------------------------------------- selection


@pytest.fixture(scope="module")
def registry():
    from wanport.registry import discover

    return discover()


def _reqs(device_type, attention_quant, ring_lse=False):
    from wanport.models.dit import DiTConfig
    from wanport.models.dit.requirements import dit_requirements
    from wanport.precision import PRESETS

    return dit_requirements(DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1), PRESETS["official"],
                            device_type, attention_quant=attention_quant, ring_lse=ring_lse)


def test_reference_picks_its_emulation_and_refuses_ring(registry):
    from wanport.registry import resolve_ops

    ref = registry.backends["reference"]
    table = resolve_ops(registry, ref, _reqs("cpu", "fp8_tensor"))
    assert table.self_attention.impl == "reference.emulate_fp8_tensor"
    assert table.self_attention.why == "quant.attention: fp8_tensor"
    assert table.cross_attention.impl == "reference.math"
    with pytest.raises(BackendError) as e:
        resolve_ops(registry, ref, _reqs("cpu", "fp8_tensor", ring_lse=True))
    msg = str(e.value)
    assert "quant.attention: fp8_tensor" in msg and "cannot return the log-sum-exp" in msg
    assert "parallel.ring: 1" in msg and "Set quant.attention: none" in msg
    # fp8 (with its LSE) still goes with ring attention
    assert resolve_ops(registry, ref, _reqs("cpu", "fp8", ring_lse=True)).self_attention.impl == "reference.emulate_fp8"


def test_cuda_fp8_cudnn_says_why_it_is_unavailable(registry):
    from wanport_cuda.plugin import fp8_cudnn_attention_reason

    impl = next(i for i in registry.impls if i.qualified_name == "cuda.fp8_cudnn" and i.kind == "attention")
    assert impl.exact is False and impl.tolerance == FP8_ATTENTION_TOLERANCE
    c = impl.constraints
    assert c.schemes == frozenset({"fp8_tensor"}) and not c.lse and c.device_types == frozenset({"cuda"})
    assert c.head_dims == frozenset({16, 32, 48, 64, 80, 96, 112, 128})
    assert c.dtypes == frozenset({torch.float16, torch.bfloat16})
    if not torch.cuda.is_available():
        ok, why = impl.available()
        assert not ok and why
    assert fp8_cudnn_attention_reason(True, True, True, (9, 0)) == (True, "")
    assert fp8_cudnn_attention_reason(True, True, True, (10, 0)) == (True, "")
    assert "sm90" in fp8_cudnn_attention_reason(True, True, True, (8, 9))[1]
    assert "pip install nvidia-cudnn-frontend" in fp8_cudnn_attention_reason(False, True, True, (9, 0))[1]
    assert "triton" in fp8_cudnn_attention_reason(True, False, True, (9, 0))[1]
    assert "float8_e4m3fn" in fp8_cudnn_attention_reason(True, True, False, (9, 0))[1]
    assert "no CUDA device" in fp8_cudnn_attention_reason(True, True, True, None)[1]


def test_config_takes_the_scheme_and_rejects_an_unknown_one():
    from wanport.config.loader import load_recipe

    cfg, _ = load_recipe(None, ["quant.attention=fp8_tensor"])
    assert cfg.quant.attention == "fp8_tensor"
    with pytest.raises(ConfigError, match="'fp8_block' is not one of none, fp8, fp8_tensor"):
        load_recipe(None, ["quant.attention=fp8_block"])


def test_bench_dit_quant_token():
    from wanport.bench.dit import parse_quant

    assert parse_quant("fp8_tensor_attention") == (None, "fp8_tensor")
    assert parse_quant("fp8_rowwise+fp8_tensor_attention") == ("fp8_rowwise", "fp8_tensor")
    assert parse_quant("fp8_tensor") == ("fp8_tensor", None)  # the Linear scheme of that name
    with pytest.raises(ConfigError, match="fp8_tensor_attention"):
        parse_quant("fp8_attention+fp8_tensor_attention")


# ---------------------------------------------------------------- end to end


def test_tiny_pipeline_runs_with_fp8_tensor_attention(tiny_ckpt, tmp_path):
    from wanport import cli

    argv = ["run", "--no-progress", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path,
            "output.name=a", "sample.steps=1", "sample.size=32*32", "sample.frame_num=5",
            "quant.attention=fp8_tensor", "backend=reference"]  # the emulation also where a GPU is present
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["ops"]["self_attention"] == {"impl": "reference.emulate_fp8_tensor",
                                               "why": "quant.attention: fp8_tensor"}
    assert report["ops"]["cross_attention"]["impl"] == "reference.math"
    assert os.path.getsize(tmp_path / "a.mp4") > 0
