"""Wan2.1 VAE: state-dict layout, shape rules, determinism/causality, parity with diffusers.

diffusers' ``AutoencoderKLWan`` is used only here, as an independent implementation: both
models get the same random weights (every parameter, gammas included) through the docs/wan-model.md §7.2
key map and must agree in fp32.
"""

from __future__ import annotations

import math

import pytest
import torch

from _diffusers_vae_keys import vae21_official_to_diffusers
from _float_bounds import chain_terms, f32_bound
from wanport.models.vae.wan21 import VAE21_MEAN, VAE21_STD, WanVAE21

REL_TOL = 1e-5


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            else:
                p.copy_(r / math.sqrt(p[0].numel()))


def _build(dim: int, seed: int = 0) -> WanVAE21:
    with torch.device("meta"):
        vae = WanVAE21(dim=dim, z_dim=16)
    vae = vae.to_empty(device="cpu")
    _randomise(vae, seed)
    return vae.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _video(frames: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1


def _latent(t: int, h: int, w: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, t, h, w, generator=g)


@pytest.fixture(scope="module")
def small_vae() -> WanVAE21:
    return _build(dim=8, seed=0)


# ---------------------------------------------------------------------------------------------
# state dict


def test_state_dict_matches_official_layout():
    with torch.device("meta"):
        vae = WanVAE21()
    sd = vae.state_dict()
    assert len(sd) == 194
    assert sum(t.numel() for t in sd.values()) == 126_892_531  # 126.89 M (docs/wan-model.md §5.1)
    expected = {
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
        "encoder.downsamples.0.residual.2.weight": (96, 96, 3, 3, 3),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.downsamples.8.time_conv.weight": (384, 384, 3, 1, 1),
        "encoder.downsamples.10.residual.6.weight": (384, 384, 3, 3, 3),
        "encoder.middle.0.residual.3.gamma": (384, 1, 1, 1),
        "encoder.middle.1.norm.gamma": (384, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.middle.1.proj.weight": (384, 384, 1, 1),
        "encoder.head.0.gamma": (384, 1, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.middle.2.residual.6.bias": (384,),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
        "decoder.head.0.gamma": (96, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape))
    assert {k.split(".")[0] for k in sd} == {"encoder", "decoder", "conv1", "conv2"}
    assert not any(k.startswith("encoder.downsamples.11") or k.startswith("decoder.upsamples.15") for k in sd)


def test_config_from_shapes_round_trip():
    for dim, z in ((96, 16), (8, 16), (32, 4)):
        with torch.device("meta"):
            vae = WanVAE21(dim=dim, z_dim=z)
        shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
        assert WanVAE21.config_from_shapes(shapes) == {"dim": dim, "z_dim": z}
    with pytest.raises(ValueError, match="conv2.weight"):
        WanVAE21.config_from_shapes({"encoder.conv1.weight": (96, 3, 3, 3, 3)})
    with pytest.raises(ValueError, match="missing"):
        WanVAE21.config_from_shapes({"model.conv2.weight": (16, 16, 1, 1, 1)})


def test_constants():
    assert len(VAE21_MEAN) == len(VAE21_STD) == 16
    assert VAE21_MEAN[0] == -0.7571 and VAE21_MEAN[-1] == -0.2921
    assert VAE21_STD[0] == 2.8184 and VAE21_STD[-1] == 1.9160


# ---------------------------------------------------------------------------------------------
# shapes, determinism, causality


def test_shapes(small_vae):
    vae = small_vae
    assert vae.encode(_video(1, 16, 24)).shape == (1, 16, 1, 2, 3)
    z = vae.encode(_video(9, 16, 24))
    assert z.shape == (1, 16, 3, 2, 3) and z.dtype == torch.float32
    for t in (1, 2, 3):
        x = vae.decode(_latent(t, 2, 3))
        assert x.shape == (1, 3, 1 + 4 * (t - 1), 16, 24) and x.dtype == torch.float32
        assert x.abs().max() <= 1.0
    with pytest.raises(ValueError):
        vae.encode(_video(4, 16, 16))
    with pytest.raises(ValueError):
        vae.encode(_video(5, 12, 16))
    with pytest.raises(ValueError):
        vae.decode(torch.zeros(1, 8, 2, 2, 2))


def test_deterministic_and_reentrant(small_vae):
    vae = small_vae
    video, z = _video(9, 16, 16), _latent(3, 2, 2)
    e1 = vae.encode(video)
    d1 = vae.decode(z)
    e2 = vae.encode(video)  # a decode in between must not leak state into encode
    d2 = vae.decode(z)
    assert torch.equal(e1, e2)  # bit-exact: the same calls on the same shapes in one process
    assert torch.equal(d1, d2)


def test_progress_callback(small_vae):
    calls = []
    small_vae.decode(_latent(3, 2, 2), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_chunked_processing_is_causal(small_vae):
    """Earlier latent/video frames do not depend on later ones (the cache only looks back)."""
    vae = small_vae
    video = _video(9, 16, 16)
    z_full, z_prefix = vae.encode(video), vae.encode(video[:, :, :5])
    # The same frames through the same layers, but some convolutions see tensors of another length and
    # may accumulate in another order: a float32 reorder through the whole network, ~√K·eps32 with K
    # the products summed on the way (its convolutions' fan-ins; ~1.4e-5 here, measured ~1e-7). A
    # look-ahead would move the early frames by far more (the check below shows dependence is O(1)).
    assert _rel(z_full[:, :, :2], z_prefix) <= f32_bound(chain_terms(vae.encoder))
    z = _latent(3, 2, 2)
    x_full, x_prefix = vae.decode(z), vae.decode(z[:, :, :2])
    assert _rel(x_full[:, :, :5], x_prefix) <= f32_bound(chain_terms(vae.decoder))  # ~1.6e-5 (measured 9.5e-7)
    # ... and the chunks do see their past: frame 1's latent depends on frame 0.
    other = video.clone()
    other[:, :, 0] = 0
    assert not torch.allclose(vae.encode(other)[:, :, 1], z_full[:, :, 1])


def test_low_precision_params_return_float32():
    vae = _build(dim=8, seed=3)
    video = _video(5, 16, 16)
    ref_z = vae.encode(video)
    ref_x = vae.decode(ref_z)
    vae = vae.to(torch.bfloat16)
    z = vae.encode(video)
    x = vae.decode(z)
    assert z.dtype == torch.float32 and x.dtype == torch.float32
    assert _rel(z, ref_z) < 0.1 and _rel(x, ref_x) < 0.1


# ---------------------------------------------------------------------------------------------
# parity with diffusers


def _diffusers_twin(vae: WanVAE21, dim: int):
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLWan(
            base_dim=dim,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        )
    sd = {vae21_official_to_diffusers(k): v.clone() for k, v in vae.state_dict().items()}
    assert len(sd) == len(vae.state_dict())
    ref_keys = set(ref.state_dict())
    assert set(sd) == ref_keys, (sorted(set(sd) - ref_keys)[:5], sorted(ref_keys - set(sd))[:5])
    ref.load_state_dict(sd, strict=True, assign=True)
    return ref.eval()


def _check_parity(vae: WanVAE21, dim: int, frames: int, h: int, w: int):
    """Relative L2 errors of encode and decode against diffusers.

    The official code applies the constants as ``(mu - mean) * (1/std)`` and
    ``z / (1/std) + mean``; with diffusers' side normalised the same way the two agree exactly,
    with ``/ std`` and ``* std`` (1-ulp different inputs, amplified by the random decoder) they
    agree to ~1e-6. Both are checked.
    """
    ref = _diffusers_twin(vae, dim)
    mean = torch.tensor(VAE21_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(VAE21_STD).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / std
    video = _video(frames, h, w, seed=11)
    with torch.no_grad():
        z = vae.encode(video)
        mu = ref.encode(video).latent_dist.mode()
        enc = (_rel(z, (mu - mean) * inv_std), _rel(z, (mu - mean) / std))

        # decode a latent with a realistic spread: the encoding of the video plus noise
        lat = z + 0.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
        x = vae.decode(lat)
        dec = (_rel(x, ref.decode(lat / inv_std + mean).sample), _rel(x, ref.decode(lat * std + mean).sample))
    saturated = (x.abs() >= 1.0).float().mean().item()
    print(
        "dim=%d parity (official scaling | /std,*std): encode %.3e | %.3e, decode %.3e | %.3e, clamped %.1f%%"
        % (dim, enc[0], enc[1], dec[0], dec[1], 100 * saturated)
    )
    return max(enc), max(dec), saturated, x.shape


def test_parity_with_diffusers_small():
    vae = _build(dim=8, seed=0)
    enc_err, dec_err, saturated, shape = _check_parity(vae, dim=8, frames=9, h=32, w=48)
    assert shape == (1, 3, 9, 32, 48)
    assert saturated < 0.25  # the comparison is not hidden by the clamp
    assert enc_err <= REL_TOL
    assert dec_err <= REL_TOL


def test_parity_with_diffusers_real_width():
    vae = _build(dim=96, seed=7)
    enc_err, dec_err, saturated, shape = _check_parity(vae, dim=96, frames=5, h=16, w=16)
    assert shape == (1, 3, 5, 16, 16)
    assert saturated < 0.25
    assert enc_err <= REL_TOL
    assert dec_err <= REL_TOL
