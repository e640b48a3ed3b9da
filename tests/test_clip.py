"""The Wan2.1 I2V CLIP image encoder: the official key names load strictly into transformers'
CLIPVisionModelWithProjection; the penultimate-layer output equals transformers' own
``hidden_states[-2]`` and an independent re-implementation of the official ViT forward
(``use_31_block``), written here from docs/wan-model.md §4.2; the official preprocessing; key errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _float_bounds import chain_terms, f32_bound
from wanport.errors import CheckpointError
from wanport.models.clip import (
    CLIPImageEncoder,
    check_clip_state,
    clip_config_from_shapes,
    expected_visual_shapes,
    hf_clip_config_kwargs,
    wan_clip_to_hf,
)
from wanport.models.clip.encoder import MEAN, STD
from wanport.models.clip.tiny import tiny_clip_state


@pytest.fixture(scope="module")
def state():
    return {k: v.float() for k, v in tiny_clip_state(seed=4, width=160, layers=3).items()}


@pytest.fixture(scope="module")
def encoder(state):
    return CLIPImageEncoder.from_state_dict(state, dtype=torch.float32)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _official_visual(state, x, heads, use_31_block=True):
    """The official VisionTransformer forward (pre-norm, exact GELU, LayerNorm eps 1e-5), direct
    from the official key names: patch conv (no bias), CLS, positions, pre_norm, blocks."""
    d = state["visual.cls_embedding"].shape[-1]
    p = state["visual.patch_embedding.weight"].shape[-1]
    b = x.shape[0]
    h = F.conv2d(x, state["visual.patch_embedding.weight"], stride=p).flatten(2).transpose(1, 2)
    h = torch.cat([state["visual.cls_embedding"].expand(b, -1, -1), h], dim=1) + state["visual.pos_embedding"]
    ln = lambda t, n: F.layer_norm(t, (d,), state[n + ".weight"], state[n + ".bias"], 1e-5)  # noqa: E731
    h = ln(h, "visual.pre_norm")
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("visual.transformer.")})
    for i in layers[:-1] if use_31_block else layers:
        pre = "visual.transformer.%d." % i
        s = h.shape[1]
        qkv = F.linear(ln(h, pre + "norm1"), state[pre + "attn.to_qkv.weight"], state[pre + "attn.to_qkv.bias"])
        q, k, v = qkv.view(b, s, 3, heads, d // heads).unbind(2)
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads), -1)
        o = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, s, d)
        h = h + F.linear(o, state[pre + "attn.proj.weight"], state[pre + "attn.proj.bias"])
        m = F.gelu(F.linear(ln(h, pre + "norm2"), state[pre + "mlp.0.weight"], state[pre + "mlp.0.bias"]))
        h = h + F.linear(m, state[pre + "mlp.2.weight"], state[pre + "mlp.2.bias"])
    return h


def test_key_layout_and_config(state):
    cfg = clip_config_from_shapes({k: v.shape for k, v in state.items()})
    assert cfg == {"hidden_size": 160, "intermediate_size": 640, "num_hidden_layers": 3, "num_attention_heads": 2,
                   "image_size": 224, "patch_size": 14, "projection_dim": 32}
    official = expected_visual_shapes(dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                           image_size=224, patch_size=14, projection_dim=1024))
    assert official["visual.pos_embedding"] == (1, 257, 1280)
    assert official["visual.patch_embedding.weight"] == (1280, 3, 14, 14)
    assert official["visual.transformer.31.attn.to_qkv.weight"] == (3840, 1280)
    assert official["visual.head"] == (1280, 1024)
    assert len(official) == 5 + 32 * 12 + 3
    assert any(k.startswith("textual.") for k in state) and "log_scale" in state  # the whole official file


def test_strict_load_and_penultimate_layer(state, encoder):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**hf_clip_config_kwargs(encoder.config))).eval()
    missing, unexpected = hf.load_state_dict(wan_clip_to_hf(state), strict=True)
    assert not missing and not unexpected
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 90, 140, generator=g) * 2 - 1
    with torch.no_grad():
        ours = encoder.encode(image)
        pixels = encoder.preprocess(image)
        hidden = hf(pixel_values=pixels, output_hidden_states=True).hidden_states
        official = _official_visual(state, pixels, heads=2)
    assert ours.shape == (1, 257, 160)
    assert len(encoder.model.vision_model.encoder.layers) == 2  # the unused last block is dropped
    err_hf, err_official = _rel(ours, hidden[-2]), _rel(ours, official)
    print("CLIP penultimate layer: vs transformers hidden_states[-2] %.2e, vs official forward %.2e"
          % (err_hf, err_official))
    # the same transformers layers, called through another entry point (attention kernel, one layer
    # fewer): at most a float32 reorder through the tower, √K·eps32 over its summed products
    # (+ per layer an 80-term score and a softmax over 257 tokens, in the 2 layers used)
    assert err_hf < f32_bound(chain_terms(encoder.model, attention_terms=2 * (80 + 2 * 257)))
    assert err_official < 1e-5
    assert _rel(ours, hidden[-1]) > 1e-2  # and it is not the last layer


def test_preprocessing_is_the_official_squash(encoder):
    image = torch.rand(3, 60, 200) * 2 - 1
    px = encoder.preprocess(image)
    ref = F.interpolate(image[None], size=(224, 224), mode="bicubic", align_corners=False) * 0.5 + 0.5
    ref = (ref - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    # aspect not kept, no crop; bit-exact: the same ops in the same order on the same shapes
    assert px.shape == (1, 3, 224, 224) and torch.equal(px, ref)


def test_fp16_close_to_fp32(state, encoder):
    half = CLIPImageEncoder.from_state_dict({k: v.half() for k, v in state.items()}, dtype=torch.float16)
    image = torch.rand(3, 64, 64) * 2 - 1
    a, b = half.encode(image), encoder.encode(image)
    assert a.dtype == torch.float16 and _rel(a.float(), b) < 5e-3


@pytest.mark.parametrize("change,fragment", [
    (lambda s: s.pop("visual.transformer.1.mlp.2.bias"), "missing key 'visual.transformer.1.mlp.2.bias'"),
    (lambda s: s.__setitem__("visual.extra.weight", torch.zeros(2)), "unexpected key 'visual.extra.weight'"),
    (lambda s: s.__setitem__("visual.transformer.0.attn.proj.weight", torch.zeros(160, 100)),
     "'visual.transformer.0.attn.proj.weight' has shape [160, 100], expected [160, 160]"),
    (lambda s: s.pop("visual.cls_embedding"), "missing key 'visual.cls_embedding'"),
])
def test_key_errors_name_the_key(state, change, fragment):
    bad = dict(state)
    change(bad)
    with pytest.raises(CheckpointError) as exc:
        check_clip_state(bad, "clip.pth")
    assert fragment in str(exc.value) and "clip.pth" in str(exc.value)
