"""The Wan DiT against diffusers' independent WanTransformer3DModel, key names, precision flow."""

from __future__ import annotations

import pytest
import torch

from _diffusers_keys import dit_official_to_diffusers
from _float_bounds import f32_bound
from wanport.models.dit import DiTConfig, WanDiT
from wanport.models.dit.requirements import dit_requirements
from wanport.precision import PRESETS, PrecisionPolicy
from wanport.registry import discover, resolve_ops

CFG = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2)  # head_dim 128, real text/freq dims


@pytest.fixture(scope="module")
def registry():
    return discover()


def table(registry, policy):
    return resolve_ops(registry, registry.backends["reference"], dit_requirements(CFG, policy, "cpu"))


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def pair(registry):
    diffusers = pytest.importorskip("diffusers")
    ours = WanDiT.random(CFG, PRESETS["fp32"], torch.device("cpu"), seed=7).bind_ops(table(registry, PRESETS["fp32"]))
    theirs = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=CFG.num_heads, attention_head_dim=CFG.head_dim,
        in_channels=CFG.in_dim, out_channels=CFG.out_dim, text_dim=CFG.text_dim, freq_dim=CFG.freq_dim,
        ffn_dim=CFG.ffn_dim, num_layers=CFG.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=CFG.eps).eval()
    state = {dit_official_to_diffusers(k): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    return ours, theirs


def test_all_parameters_randomised(pair):
    ours, _ = pair
    for name, p in ours.named_parameters():
        assert p.abs().max() > 0 and p.std() > 0 if p.numel() > 1 else True, name
    assert ours.head.head.weight.abs().max() > 0  # the official init zeroes it and would hide errors


@pytest.mark.parametrize("t", [0, 3, 500, 999])
def test_fp32_matches_diffusers(pair, t):
    ours, theirs = pair
    g = torch.Generator().manual_seed(t)
    x = torch.randn(2, 16, 3, 8, 12, generator=g)
    ctx = torch.randn(2, 512, 4096, generator=g)
    ctx[1, 300:] = 0  # zero-padded prompt rows, as the pipeline builds them
    tt = torch.tensor([t, max(t - 1, 0)])
    with torch.no_grad():
        a = ours(x, tt, ctx)
        b = theirs(x, tt, ctx, return_dict=False)[0]
    assert a.shape == b.shape == (2, 16, 3, 8, 12)
    # diffusers computes the timestep sinusoid in float32 (official: float64), which
    # dominates the difference at large t; everything else agrees to ~3e-7.
    assert rel(a, b) <= 1e-5


def test_float64_agrees_to_rounding_of_diffusers_sinusoid(pair, registry):
    ours, theirs = pair
    p64 = PrecisionPolicy("fp64", *([torch.float64] * 6))
    o64 = WanDiT.on_meta(CFG, p64)
    o64.load_state_dict({k: v.double() for k, v in ours.state_dict().items()}, assign=True)
    o64.bind_ops(table(registry, PRESETS["fp32"]))
    t64 = theirs.double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 2, 4, 6, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 512, 4096, generator=g, dtype=torch.float64)
    with torch.no_grad():
        a = o64(x, torch.tensor([0]), ctx)
        b = t64(x, torch.tensor([0]), ctx, return_dict=False)[0]
    theirs.float()
    # At t=0 the sinusoid is exact in any precision; what remains is diffusers' rotary tables, which it
    # keeps in float32 even in a float64 model: each cos/sin carries one float32 rounding, so the rotated
    # q/k are off by ~eps32 and the scores (128-term dot products) by ~√128·eps32 (measured 1.6·eps32).
    assert rel(a, b) < f32_bound(128)


def test_official_precision_stays_close_to_fp32(pair, registry):
    ours, _ = pair
    official = WanDiT.on_meta(CFG, PRESETS["official"])
    official.load_state_dict(ours.state_dict(), assign=True)
    official.apply_policy_dtypes()
    official.bind_ops(table(registry, PRESETS["official"]))
    assert official.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert official.blocks[0].modulation.dtype == torch.float32
    assert official.time_embedding[0].weight.dtype == torch.float32
    assert official.head.head.weight.dtype == torch.float32
    assert official.blocks[0].self_attn.norm_q.weight.dtype == torch.float32
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 3, 8, 12, generator=g)
    ctx = torch.randn(1, 512, 4096, generator=g).bfloat16()
    with torch.no_grad():
        a = official(x, torch.tensor([700]), ctx)
        b = ours(x, torch.tensor([700]), ctx.float())
    assert a.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert cos > 0.999
    assert rel(a, b) > 1e-5  # bf16 matmuls really happened


def test_official_key_names_and_shapes_14b():
    cfg = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
    shapes = WanDiT.on_meta(cfg, PRESETS["official"]).expected_shapes()
    assert shapes["patch_embedding.weight"] == (5120, 16, 1, 2, 2)
    assert shapes["text_embedding.0.weight"] == (5120, 4096)
    assert shapes["time_embedding.0.weight"] == (5120, 256)
    assert shapes["time_projection.1.weight"] == (30720, 5120)
    assert shapes["head.modulation"] == (1, 2, 5120)
    assert shapes["head.head.weight"] == (64, 5120)
    assert shapes["blocks.39.modulation"] == (1, 6, 5120)
    assert shapes["blocks.0.self_attn.norm_q.weight"] == (5120,)
    assert shapes["blocks.0.norm3.bias"] == (5120,)
    assert shapes["blocks.0.cross_attn.o.weight"] == (5120, 5120)
    assert shapes["blocks.0.ffn.0.weight"] == (13824, 5120)
    assert shapes["blocks.0.ffn.2.weight"] == (5120, 13824)
    per_block = {k.split(".", 2)[2] for k in shapes if k.startswith("blocks.0.")}
    assert len(per_block) == 27  # 2 x (q,k,v,o weight+bias, norm_q, norm_k) + norm3 w/b + 4 ffn + modulation
    assert len(shapes) == 15 + 40 * 27  # patch 2, text 4, time 4, projection 2, head 3
    assert not any("norm1" in k or "norm2" in k for k in shapes)  # parameter-free norms
    params = sum(torch.Size(s).numel() for s in shapes.values())
    assert 14.0e9 < params < 14.5e9


def test_forward_without_ops_is_a_clear_error():
    m = WanDiT.random(CFG, PRESETS["fp32"], torch.device("cpu"))
    with pytest.raises(RuntimeError, match="bind_ops"):
        m(torch.randn(1, 16, 1, 2, 2), torch.tensor([1]), torch.randn(1, 512, 4096))
