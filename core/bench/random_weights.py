"""Models of a recipe's preset at their real architecture with random weights, no checkpoint.

A weight source for the pipeline (see :mod:`wanport.pipeline.weights`): ``wanport bench
pipeline`` runs the real pipeline stages on these when the recipe's checkpoint folder is absent.
Timings do not depend on weight values, so a 14B DiT, the UMT5-XXL encoder (the real
architecture; its tokenizer replaced by UTF-8 bytes, padded to the same 512 tokens, so the same
cost), the Wan2.1/2.2 VAE and the ViT-H/14 CLIP tower are timed as in a real run. Tiny presets
get the tiny architectures of ``wanport make-tiny``. Weights are drawn on the compute device
(fast at 14B) from a seed: the same on one machine, not across device types.
"""

from __future__ import annotations

import math
import os
import zlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..checkpoints.dit_checkpoint import DEFAULT_IMAGE_DIM, DiTCheckpoint
from ..checkpoints.layout import CheckpointSet
from ..checkpoints.tiny import TINY_CLIP, TINY_T5, TINY_VAE, TINY_VAE22, tiny_dit_config, tiny_layout
from ..config.models import EXPERTS, TINY_LAYOUTS
from ..config.validate import RunPlan
from ..models.clip import CLIPImageEncoder, expected_visual_shapes
from ..models.dit import DiTConfig, WanDiT
from ..models.t5 import WanTextEncoder, expected_wan_t5_shapes, t5_config_from_shapes
from ..models.t5.encoder import build_umt5_encoder
from ..models.vae.wan21 import WanVAE21
from ..models.vae.wan22 import WanVAE22
from ..precision import PrecisionPolicy

#: umt5-xxl encoder (``models_t5_umt5-xxl-enc-bf16.pth``)
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64}
#: the ViT-H/14 visual tower of the Wan2.1 I2V CLIP file
VIT_H14 = {"hidden_size": DEFAULT_IMAGE_DIM, "intermediate_size": 5120, "num_hidden_layers": 32,
           "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 1024}
#: the official VAE architectures (the constructors' defaults)
VAE_REAL = {"wan2.1": {"dim": 96, "z_dim": 16}, "wan2.2": {"dim": 160, "dec_dim": 256, "z_dim": 48}}
VAE_TINY = {"wan2.1": TINY_VAE, "wan2.2": TINY_VAE22}
VAE_CLASSES = {"wan2.1": WanVAE21, "wan2.2": WanVAE22}
TINY_VOCAB = 384  # the byte tokenizer needs 3 + 256 ids
RANDOM_DIR = "(random weights)"


class ByteTokenizer:
    """Stands in for the umt5 tokenizer: UTF-8 bytes as ids (+3), ``</s>`` (1) appended, padded
    with ``<pad>`` (0) to ``max_length``. The encoder always runs on the padded length, so its
    cost is that of the real tokenizer's output."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = int(vocab_size)

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, texts: Sequence[str], max_length: int = 512, **_: Any) -> Dict[str, torch.Tensor]:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [3 + (b % (self.vocab_size - 3)) for b in text.encode("utf-8")][: max_length - 1] + [1]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def random_state(shapes: Mapping[str, Tuple[int, ...]], dtype: torch.dtype, device: torch.device,
                 seed: int) -> Dict[str, torch.Tensor]:
    """One random tensor per key, drawn on ``device``: matrices/kernels ``N(0, 1/fan_in)``, norm
    gains ``1 + 0.1 N``, other vectors ``0.02 N`` (activations stay finite through deep stacks)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32)
        if len(shape) >= 2:
            noise /= math.sqrt(max(1, math.prod(shape[1:])))
        elif "norm" in key and key.endswith("weight"):
            noise = noise.mul_(0.1).add_(1.0)
        else:
            noise *= 0.02
        out[key] = noise.to(dtype)
    return out


def _seed(seed: int, name: str) -> int:
    return (seed * 1000003 + zlib.crc32(name.encode("utf-8"))) % (2 ** 31)


class RandomWeights:
    """The weight source of random-weight runs (``inspect`` builds the configs, nothing is read)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._t5: Dict[str, int] = dict(UMT5_XXL)  # the preset's, once inspect() has run

    def describe(self) -> Dict[str, Any]:
        return {"source": "random", "seed": self.seed,
                "note": "real architectures, random weights drawn on the device; the text encoder's "
                        "tokenizer is replaced by UTF-8 bytes (same padded length)"}

    # ------------------------------------------------------------------ configs
    def inspect(self, plan: RunPlan) -> CheckpointSet:
        preset = plan.preset
        layout = next((k for k, v in TINY_LAYOUTS.items() if v == preset.name), None)
        if preset.arch is None and layout is None:
            from ..errors import ConfigError

            raise ConfigError("random weights: model %s has no architecture to build" % preset.name)
        if preset.arch is None:
            parts = tiny_layout(layout)
            dit_cfg = tiny_dit_config(layout)
            t5 = dict(TINY_T5, vocab_size=TINY_VOCAB)
            clip = self._tiny_clip_config() if parts["clip"] else None
            vae_cfg = dict(VAE_TINY[preset.vae])
        else:
            t5 = dict(UMT5_XXL)
            clip = dict(VIT_H14) if preset.clip else None
            dit_cfg = DiTConfig(**dict(preset.arch, model_type=preset.model_type, text_dim=t5["d_model"],
                                       image_dim=clip["hidden_size"] if clip else None))
            vae_cfg = dict(VAE_REAL[preset.vae])
        t5_cfg = self._t5 = t5_config_from_shapes(expected_wan_t5_shapes(t5))
        dit = DiTCheckpoint(RANDOM_DIR, dit_cfg, {})
        experts = None
        if preset.experts:
            experts = {name: DiTCheckpoint(os.path.join(RANDOM_DIR, sub), dit_cfg, {}) for name, sub in EXPERTS}
            dit = experts[EXPERTS[0][0]]
        return CheckpointSet(RANDOM_DIR, dit, RANDOM_DIR, vae_cfg, RANDOM_DIR, t5_cfg, vae_kind=preset.vae,
                             experts=experts, clip_path=RANDOM_DIR if clip else None, clip_config=clip)

    @staticmethod
    def _tiny_clip_config() -> Dict[str, int]:
        from ..models.clip import clip_config_from_shapes
        from ..models.clip.tiny import tiny_clip_state

        state = tiny_clip_state(0, TINY_CLIP["width"], TINY_CLIP["layers"], TINY_CLIP["projection_dim"],
                                    mlp=TINY_CLIP["mlp"])
        return clip_config_from_shapes({k: tuple(v.shape) for k, v in state.items()})

    # ------------------------------------------------------------------ models
    def load_text_encoder(self, ckpt_dir: Any = None, dtype: torch.dtype = torch.bfloat16,
                          device: Optional[torch.device] = None, text_len: int = 512) -> WanTextEncoder:
        """The encoder of the inspected preset (umt5-xxl, or the tiny one); ``ckpt_dir`` unused."""
        device = torch.device("cpu") if device is None else torch.device(device)
        cfg = t5_config_from_shapes(expected_wan_t5_shapes(self._t5))
        state = random_state(expected_wan_t5_shapes(cfg), dtype, device, _seed(self.seed, "t5"))
        model = build_umt5_encoder(state, cfg, dtype, device, where="random UMT5 encoder")
        return WanTextEncoder(model, ByteTokenizer(cfg["vocab_size"]), cfg, dtype, device, text_len)

    def load_dit(self, ckpt: DiTCheckpoint, policy: PrecisionPolicy, device: torch.device) -> WanDiT:
        return WanDiT.random(ckpt.config, policy, device, seed=_seed(self.seed, ckpt.directory)).eval()

    def load_vae(self, ckpts: CheckpointSet, policy: PrecisionPolicy, device: torch.device) -> torch.nn.Module:
        with torch.device("meta"):
            vae = VAE_CLASSES[ckpts.vae_kind](**ckpts.vae_config)
        shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
        vae.load_state_dict(random_state(shapes, policy.vae, device, _seed(self.seed, "vae")), strict=True, assign=True)
        return vae.eval().requires_grad_(False)

    def load_clip(self, ckpts: CheckpointSet, policy: PrecisionPolicy, device: torch.device) -> CLIPImageEncoder:
        state = random_state(expected_visual_shapes(ckpts.clip_config), policy.image_encoder, device,
                             _seed(self.seed, "clip"))
        return CLIPImageEncoder.from_state_dict(state, dtype=policy.image_encoder, device=device,
                                                where="random CLIP tower")


__all__ = ["RandomWeights", "ByteTokenizer", "random_state", "UMT5_XXL", "VIT_H14", "RANDOM_DIR"]
