"""Wan2.2 VAE: official state-dict layout, patchify, shape rules, causality, parity with diffusers'
independent ``AutoencoderKLWan(is_residual=True, ...)`` (docs/wan-model.md §5.4, §7.2) on tiny random weights."""

from __future__ import annotations

import math

import pytest
import torch

from _diffusers_vae_keys import vae22_official_to_diffusers
from _float_bounds import chain_terms, f32_bound
from wanport.models.vae.wan22 import VAE22_MEAN, VAE22_STD, WanVAE22, patchify, unpatchify

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


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def small():
    vae = WanVAE22(dim=8, dec_dim=12).eval()
    _randomise(vae, 0)
    return vae


def test_state_dict_matches_official_layout():
    with torch.device("meta"):
        vae = WanVAE22()
    sd = vae.state_dict()
    assert len(sd) == 196
    assert sum(t.numel() for t in sd.values()) == 704_688_668  # 704.69 M (docs/wan-model.md §5.4)
    expected = {
        "encoder.conv1.weight": (160, 12, 3, 3, 3),
        "encoder.downsamples.0.downsamples.0.residual.0.gamma": (160, 1, 1, 1),
        "encoder.downsamples.0.downsamples.2.resample.1.weight": (160, 160, 3, 3),
        "encoder.downsamples.1.downsamples.0.shortcut.weight": (320, 160, 1, 1, 1),
        "encoder.downsamples.1.downsamples.2.time_conv.weight": (320, 320, 3, 1, 1),
        "encoder.downsamples.3.downsamples.1.residual.6.weight": (640, 640, 3, 3, 3),
        "encoder.middle.1.to_qkv.weight": (1920, 640, 1, 1),
        "encoder.head.2.weight": (96, 640, 3, 3, 3),
        "conv1.weight": (96, 96, 1, 1, 1),
        "conv2.weight": (48, 48, 1, 1, 1),
        "decoder.conv1.weight": (1024, 48, 3, 3, 3),
        "decoder.upsamples.0.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.0.upsamples.3.resample.1.weight": (1024, 1024, 3, 3),  # keeps the channels
        "decoder.upsamples.2.upsamples.0.shortcut.weight": (512, 1024, 1, 1, 1),
        "decoder.upsamples.2.upsamples.3.resample.1.weight": (512, 512, 3, 3),
        "decoder.upsamples.3.upsamples.2.residual.6.weight": (256, 256, 3, 3, 3),
        "decoder.head.2.weight": (12, 256, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("avg_shortcut" in k for k in sd)  # parameter-free shortcuts
    assert not any(k.startswith("decoder.upsamples.3.upsamples.3") or k.startswith("encoder.downsamples.3.downsamples.2")
                   for k in sd)  # the last stages do not resample
    assert WanVAE22.config_from_shapes({k: v.shape for k, v in sd.items()}) == {"dim": 160, "dec_dim": 256, "z_dim": 48}
    with pytest.raises(ValueError, match="patchified"):  # a Wan2.1 VAE is told apart
        WanVAE22.config_from_shapes({"encoder.conv1.weight": (96, 3, 3, 3, 3), "decoder.head.2.weight": (3, 96, 3, 3, 3),
                                     "conv2.weight": (16, 16, 1, 1, 1)})


def test_constants_and_patchify():
    assert len(VAE22_MEAN) == len(VAE22_STD) == 48
    assert VAE22_MEAN[0] == -0.2289 and VAE22_STD[-1] == 0.7744
    x = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 3, 2, 4, 6)
    p = patchify(x)
    assert p.shape == (2, 12, 2, 2, 3)
    assert torch.equal(unpatchify(p), x)
    # channel c*4 + r*2 + q holds the pixel at row offset q, column offset r (official "(c r q)")
    assert torch.equal(p[:, 1 * 4 + 1 * 2 + 0], x[:, 1, :, 0::2, 1::2])
    assert torch.equal(p[:, 2 * 4 + 0 * 2 + 1], x[:, 2, :, 1::2, 0::2])


def test_shapes_and_causality(small):
    g = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 9, 32, 64, generator=g) * 2 - 1
    z = small.encode(video)
    assert z.shape == (1, 48, 3, 2, 4) and z.dtype == torch.float32
    assert small.encode(video[:, :, :1]).shape == (1, 48, 1, 2, 4)
    # earlier latents ignore later frames; a shorter video may change the float32 accumulation order of
    # some convolutions: bounded by √K·eps32 over the network's summed products (tests/_float_bounds.py)
    assert _rel(small.encode(video[:, :, :5]), z[:, :, :2]) < f32_bound(chain_terms(small.encoder))
    x = small.decode(z)
    assert x.shape == (1, 3, 9, 32, 64) and x.abs().max() <= 1
    assert _rel(small.decode(z[:, :, :2]), x[:, :, :5]) < f32_bound(chain_terms(small.decoder))
    with pytest.raises(ValueError):
        small.encode(torch.zeros(1, 3, 5, 24, 32))  # not a multiple of 16
    with pytest.raises(ValueError):
        small.decode(torch.zeros(1, 16, 2, 2, 2))  # a Wan2.1 latent


def test_parity_with_diffusers(small):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.AutoencoderKLWan(
        base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, latents_mean=list(VAE22_MEAN), latents_std=list(VAE22_STD)).eval()
    state = {vae22_official_to_diffusers(k): v.clone() for k, v in small.state_dict().items()}
    assert set(state) == set(ref.state_dict())
    ref.load_state_dict(state, strict=True)
    mean = torch.tensor(VAE22_MEAN).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(VAE22_STD).view(1, -1, 1, 1, 1)
    g = torch.Generator().manual_seed(11)
    video = torch.rand(1, 3, 5, 32, 48, generator=g) * 2 - 1
    with torch.no_grad():
        z = small.encode(video)
        enc = _rel(z, (ref.encode(video).latent_dist.mode() - mean) * inv_std)
        lat = z + 0.5 * torch.randn(z.shape, generator=g)
        x = small.decode(lat)
        dec = _rel(x, ref.decode(lat / inv_std + mean).sample)
    saturated = (x.abs() >= 1).float().mean().item()
    print("wan2.2 VAE parity: encode %.2e, decode %.2e, clamped %.1f%%" % (enc, dec, 100 * saturated))
    assert saturated < 0.25  # the comparison is not hidden by the clamp
    assert enc <= REL_TOL and dec <= REL_TOL
