"""The DiT's image conditioning and per-token timesteps against diffusers' independent
WanTransformer3DModel (fp32, tiny random weights, head_dim 128 and the real 4096/256/1280 side dims):

* Wan2.1 I2V: ``y`` concatenated to the latent (in_dim 36), the CLIP image context through
  ``img_emb`` and the ``k_img``/``v_img``/``norm_k_img`` attention (diffusers: ``image_dim``,
  ``added_kv_proj_dim``);
* Wan2.2 TI2V: 48 channels, one timestep per token (0 on the first frame's tokens);
* Wan2.2 I2V-A14B: in_dim 36, no image context.
"""

from __future__ import annotations

import pytest
import torch

from _diffusers_keys import dit_official_to_diffusers
from _float_bounds import chain_terms, f32_bound
from wanport.checkpoints.dit_checkpoint import IMAGE_EMBED_KEY
from wanport.errors import CheckpointError
from wanport.models.dit import DiTConfig, WanDiT, param_dtype
from wanport.models.dit.requirements import dit_requirements
from wanport.precision import PRESETS
from wanport.registry import discover, resolve_ops

REL_TOL = 1e-5
BASE = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
CONFIGS = {
    "wan2.1-i2v": DiTConfig(in_dim=36, out_dim=16, model_type="i2v", image_dim=1280, **BASE),
    "wan2.2-ti2v": DiTConfig(in_dim=48, out_dim=48, model_type="ti2v", **BASE),
    "wan2.2-i2v": DiTConfig(in_dim=36, out_dim=16, model_type="i2v", **BASE),
}
GRID = (3, 4, 6)  # latent frames, latent h / 2, latent w / 2 -> 72 tokens
TOKENS = GRID[0] * GRID[1] * GRID[2]


@pytest.fixture(scope="module")
def registry():
    return discover()


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


_PAIRS = {}


def _pair(registry, kind):
    """(config, ours, diffusers') with the same random weights; built once per module."""
    if kind not in _PAIRS:
        _PAIRS[kind] = _build_pair(registry, kind)
    return _PAIRS[kind]


def _build_pair(registry, kind):
    diffusers = pytest.importorskip("diffusers")
    cfg = CONFIGS[kind]
    reqs = dit_requirements(cfg, PRESETS["fp32"], "cpu", per_token_timesteps=cfg.model_type == "ti2v")
    ops = resolve_ops(registry, registry.backends["reference"], reqs)
    ours = WanDiT.random(cfg, PRESETS["fp32"], torch.device("cpu"), seed=11).bind_ops(ops)
    extra = dict(image_dim=cfg.image_dim, added_kv_proj_dim=cfg.dim) if cfg.image_dim else {}
    theirs = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, **extra).eval()
    theirs.load_state_dict({dit_official_to_diffusers(k): v for k, v in ours.state_dict().items()}, strict=True)
    return cfg, ours, theirs


def _inputs(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    f, h, w = GRID
    x = torch.randn(2, cfg.out_dim, f, 2 * h, 2 * w, generator=g)
    ctx = torch.randn(2, 512, 4096, generator=g)
    ctx[1, 200:] = 0  # zero-padded prompt rows, as the pipeline builds them
    y = torch.randn(2, cfg.cond_channels, f, 2 * h, 2 * w, generator=g) if cfg.cond_channels else None
    clip = torch.randn(2, 257, cfg.image_dim, generator=g) if cfg.image_dim else None
    return x, ctx, y, clip


@pytest.mark.parametrize("t", [0, 500, 999])
def test_wan21_i2v_matches_diffusers(registry, t):
    cfg, ours, theirs = _pair(registry, "wan2.1-i2v")
    assert all(p.abs().max() > 0 for p in ours.parameters())  # every parameter randomised
    x, ctx, y, clip = _inputs(cfg, t)
    tt = torch.tensor([t, max(t - 7, 0)])
    with torch.no_grad():
        a = ours(x, tt, ctx, y=y, clip_fea=clip)
        b = theirs(torch.cat([x, y], 1), tt, ctx, encoder_hidden_states_image=clip, return_dict=False)[0]
    err = _rel(a, b)
    print("wan2.1 i2v DiT t=%d: rel err %.2e" % (t, err))
    assert a.shape == (2, 16) + x.shape[2:]
    assert err <= REL_TOL


def test_wan21_i2v_image_context_matters(registry):
    cfg, ours, _ = _pair(registry, "wan2.1-i2v")
    x, ctx, y, clip = _inputs(cfg, 3)
    with torch.no_grad():
        a = ours(x, torch.tensor([700, 700]), ctx, y=y, clip_fea=clip)
        b = ours(x, torch.tensor([700, 700]), ctx, y=y, clip_fea=clip.flip(1))
        c = ours(x, torch.tensor([700, 700]), ctx, y=torch.zeros_like(y), clip_fea=clip)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("kind", ["wan2.2-ti2v", "wan2.2-i2v"])
def test_wan22_per_token_timesteps_match_diffusers(registry, kind):
    cfg, ours, theirs = _pair(registry, kind)
    x, ctx, y, _ = _inputs(cfg, 5)
    first = GRID[1] * GRID[2]  # the first latent frame's tokens
    t = torch.tensor([[900] * TOKENS, [431] * TOKENS])
    t[:, :first] = 0  # TI2V image mode: the first frame is clean
    xin = x if y is None else torch.cat([x, y], 1)
    with torch.no_grad():
        a = ours(x, t, ctx, y=y)
        b = theirs(xin, t, ctx, return_dict=False)[0]
    err = _rel(a, b)
    print("%s DiT, per-token t: rel err %.2e" % (kind, err))
    assert err <= REL_TOL


def test_per_token_equal_to_scalar_when_uniform(registry):
    cfg, ours, _ = _pair(registry, "wan2.2-ti2v")
    x, ctx, _, _ = _inputs(cfg, 6)
    with torch.no_grad():
        a = ours(x, torch.tensor([640, 640]), ctx)
        b = ours(x, torch.full((2, TOKENS), 640), ctx)
    # the same math; only the shapes differ (the time projection runs on [B·S, C] instead of [B, C]),
    # which may change the float32 accumulation order: √K·eps32 over the DiT's summed products (its
    # Linears, and per layer self-attention over the tokens and cross-attention over 512 text rows)
    attention = cfg.num_layers * (2 * (cfg.dim // cfg.num_heads) + 2 * (TOKENS + 512))
    assert _rel(a, b) < f32_bound(chain_terms(ours, attention))


def test_official_key_names_and_dtypes_i2v_14b():
    cfg = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, out_dim=16,
                    model_type="i2v", image_dim=1280)
    model = WanDiT.on_meta(cfg, PRESETS["official"])
    shapes = model.expected_shapes()
    assert shapes["patch_embedding.weight"] == (5120, 36, 1, 2, 2)
    assert shapes["img_emb.proj.0.weight"] == (1280,) and shapes["img_emb.proj.0.bias"] == (1280,)
    assert shapes["img_emb.proj.1.weight"] == (1280, 1280)
    assert shapes["img_emb.proj.3.weight"] == (5120, 1280)
    assert shapes["img_emb.proj.4.weight"] == (5120,)
    assert shapes["blocks.0.cross_attn.k_img.weight"] == (5120, 5120)
    assert shapes["blocks.39.cross_attn.v_img.bias"] == (5120,)
    assert shapes["blocks.0.cross_attn.norm_k_img.weight"] == (5120,)
    assert len(shapes) == 15 + 8 + 40 * 32  # t2v keys + img_emb (8) + k_img, v_img (4) + norm_k_img per block
    assert not any("emb_pos" in k for k in shapes)  # flf2v only
    assert IMAGE_EMBED_KEY in shapes
    pol = PRESETS["official"]
    assert param_dtype("img_emb.proj.0.weight", pol) == torch.float32  # LayerNorms: float32 under autocast
    assert param_dtype("img_emb.proj.4.bias", pol) == torch.float32
    assert param_dtype("img_emb.proj.1.weight", pol) == torch.bfloat16  # Linears: bf16
    assert param_dtype("blocks.3.cross_attn.norm_k_img.weight", pol) == torch.float32
    assert param_dtype("blocks.3.cross_attn.k_img.weight", pol) == torch.bfloat16
    wan22 = WanDiT.on_meta(CONFIGS["wan2.2-i2v"], pol).expected_shapes()
    assert not any(k.startswith("img_emb") or "k_img" in k for k in wan22)  # Wan2.2 I2V: no CLIP


def test_official_precision_i2v_stays_close(registry):
    cfg, ours, _ = _pair(registry, "wan2.1-i2v")
    reqs = dit_requirements(cfg, PRESETS["official"], "cpu")
    assert torch.float32 in reqs["layer_norm"].dtypes  # img_emb's first LayerNorm sees float32 CLIP features
    official = WanDiT.on_meta(cfg, PRESETS["official"])
    official.load_state_dict(ours.state_dict(), assign=True)
    official.apply_policy_dtypes()
    official.bind_ops(resolve_ops(registry, registry.backends["reference"], reqs))
    x, ctx, y, clip = _inputs(cfg, 9)
    with torch.no_grad():
        a = official(x[:1], torch.tensor([800]), ctx[:1].bfloat16(), y=y[:1], clip_fea=clip[:1].half())
        b = ours(x[:1], torch.tensor([800]), ctx[:1], y=y[:1], clip_fea=clip[:1].half().float())
    assert a.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item() > 0.999


def test_conditioning_errors(registry):
    cfg, ours, _ = _pair(registry, "wan2.1-i2v")
    x, ctx, y, clip = _inputs(cfg, 1)
    t = torch.tensor([1, 1])
    with pytest.raises(ValueError, match="conditioning y"):
        ours(x, t, ctx, clip_fea=clip)
    with pytest.raises(ValueError, match="clip_fea"):
        ours(x, t, ctx, y=y)
    with pytest.raises(ValueError, match="input channels"):
        ours(x, t, ctx, y=y[:, :4], clip_fea=clip)
    with pytest.raises(ValueError, match="per-token timesteps"):
        ours(x, torch.ones(2, 5, dtype=torch.long), ctx, y=y, clip_fea=clip)


def test_config_rules():
    with pytest.raises(CheckpointError, match="in_dim = 2"):
        DiTConfig(in_dim=16, out_dim=16, model_type="i2v", **BASE).check()
    with pytest.raises(CheckpointError, match="needs in_dim = out_dim"):
        DiTConfig(in_dim=36, out_dim=48, model_type="ti2v", **BASE).check()
    with pytest.raises(CheckpointError, match="belongs to model_type 'i2v'"):
        DiTConfig(model_type="t2v", image_dim=1280, **BASE).check()
    with pytest.raises(CheckpointError, match="not supported yet"):
        DiTConfig(model_type="flf2v", in_dim=36, **BASE).check()
    for cfg in CONFIGS.values():
        cfg.check()
        assert "image_dim" not in cfg.to_json()  # not an official config.json key
