"""A make-tiny folder is a true official-layout checkpoint: the official Wan code's loaders
(``wan/modules/model.py``, ``t5.py``, ``vae.py``, ``clip.py`` of Wan2.1/Wan2.2) would build
modules of exactly these shapes from it.

The DiT goes through diffusers' own config loading (what ``WanModel.from_pretrained`` does) with
the official constructor's signature, defaults and ``ignore_for_config``: ``text_dim`` is never
read from config.json, so it is 4096 whatever the folder says, and the tiny DiT (and so the tiny
T5's width) must match that.
"""

from __future__ import annotations

import glob
import os

import pytest
from safetensors.torch import load_file

diffusers_config = pytest.importorskip("diffusers.configuration_utils")

from wanport.checkpoints.pth_files import load_pth  # noqa: E402
from wanport.checkpoints.tiny import TINY_CLIP, TINY_T5, TINY_VAE, TINY_VAE22  # noqa: E402
from wanport.models.dit import DiTConfig, WanDiT  # noqa: E402
from wanport.precision import PRESETS  # noqa: E402


class OfficialWanModelArgs(diffusers_config.ConfigMixin):
    """The official ``WanModel.__init__`` signature and defaults (identical in Wan2.1 and Wan2.2)
    and its ``ignore_for_config``; records the arguments diffusers hands it from config.json."""

    config_name = "config.json"
    ignore_for_config = ["patch_size", "cross_attn_norm", "qk_norm", "text_dim", "window_size"]

    @diffusers_config.register_to_config
    def __init__(self, model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=2048, ffn_dim=8192,
                 freq_dim=256, text_dim=4096, out_dim=16, num_heads=16, num_layers=32, window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6):
        self.args = dict(model_type=model_type, patch_size=tuple(patch_size), text_len=text_len, in_dim=in_dim,
                         dim=dim, ffn_dim=ffn_dim, freq_dim=freq_dim, text_dim=text_dim, out_dim=out_dim,
                         num_heads=num_heads, num_layers=num_layers, eps=eps)


def _official_dit(folder: str, wan21: bool) -> WanDiT:
    args = OfficialWanModelArgs.from_config(OfficialWanModelArgs.load_config(folder)).args
    assert args["text_dim"] == 4096 and args["patch_size"] == (1, 2, 2)
    # Wan2.1's WanModel builds img_emb = MLPProj(1280, dim) for i2v; Wan2.2's has no img_emb
    image_dim = 1280 if (wan21 and args["model_type"] == "i2v") else None
    cfg = DiTConfig(model_type=args["model_type"], in_dim=args["in_dim"], dim=args["dim"], ffn_dim=args["ffn_dim"],
                    freq_dim=args["freq_dim"], text_dim=args["text_dim"], out_dim=args["out_dim"],
                    num_heads=args["num_heads"], num_layers=args["num_layers"], eps=args["eps"],
                    text_len=args["text_len"], patch_size=args["patch_size"], image_dim=image_dim)
    return WanDiT.on_meta(cfg, PRESETS["fp32"])


def _dit_state(folder: str):
    state = {}
    for path in sorted(glob.glob(os.path.join(folder, "diffusion_pytorch_model*.safetensors"))):
        state.update(load_file(path))
    return state


def _official_t5_shapes(vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets=32):
    """Parameters of the official ``T5Encoder(vocab, dim, dim_attn, dim_ffn, num_heads, num_layers,
    num_buckets, shared_pos=False)`` (umt5: one relative-position table per block)."""
    out = {"token_embedding.weight": (vocab, dim), "norm.weight": (dim,)}
    for i in range(num_layers):
        p = "blocks.%d." % i
        out.update({p + "norm1.weight": (dim,), p + "norm2.weight": (dim,),
                    p + "attn.q.weight": (dim_attn, dim), p + "attn.k.weight": (dim_attn, dim),
                    p + "attn.v.weight": (dim_attn, dim), p + "attn.o.weight": (dim, dim_attn),
                    p + "ffn.gate.0.weight": (dim_ffn, dim), p + "ffn.fc1.weight": (dim_ffn, dim),
                    p + "ffn.fc2.weight": (dim, dim_ffn),
                    p + "pos_embedding.embedding.weight": (num_buckets, num_heads)})
    return out


@pytest.mark.parametrize("layout", ["wan2.1-t2v", "wan2.1-i2v", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b",
                                    "wan2.2-ti2v-5b"])
def test_tiny_folder_loads_with_the_official_constructors(layout, tiny_layout, tiny_ckpt):
    folder = tiny_ckpt if layout == "wan2.1-t2v" else tiny_layout(layout)
    wan21 = layout.startswith("wan2.1")
    dits = [os.path.join(folder, sub) for sub in ("high_noise_model", "low_noise_model")] \
        if layout.endswith("a14b") else [folder]
    for d in dits:
        model = _official_dit(d, wan21)
        missing, unexpected = model.load_state_dict(_dit_state(d), strict=True, assign=True)
        assert not missing and not unexpected
        assert model.text_embedding[0].weight.shape[1] == 4096

    t5 = load_pth(os.path.join(folder, "models_t5_umt5-xxl-enc-bf16.pth"))
    vocab = t5["token_embedding.weight"].shape[0]
    expected = _official_t5_shapes(vocab, 4096, TINY_T5["num_heads"] * TINY_T5["d_kv"], TINY_T5["d_ff"],
                                   TINY_T5["num_heads"], TINY_T5["num_layers"])
    assert {k: tuple(v.shape) for k, v in t5.items()} == expected  # what the DiT's text_embedding takes

    if layout == "wan2.2-ti2v-5b":  # official _video_vae(path, z_dim=48, dim=8, dec_dim=8) of vae2_2.py
        from wanport.models.vae.wan22 import WanVAE22

        vae = WanVAE22(**TINY_VAE22)
        name = "Wan2.2_VAE.pth"
    else:  # official _video_vae(path, z_dim=16, dim=8) of vae.py
        from wanport.models.vae.wan21 import WanVAE21

        vae = WanVAE21(**TINY_VAE)
        name = "Wan2.1_VAE.pth"
    vae.load_state_dict(load_pth(os.path.join(folder, name)), strict=True)

    if layout == "wan2.1-i2v":  # the visual tower is 1280 wide: the tokens img_emb = MLPProj(1280, dim) takes
        clip = load_pth(os.path.join(folder, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"))
        assert clip["visual.cls_embedding"].shape[-1] == 1280 == TINY_CLIP["width"]
        assert clip["visual.transformer.0.mlp.0.weight"].shape == (TINY_CLIP["mlp"], 1280)
