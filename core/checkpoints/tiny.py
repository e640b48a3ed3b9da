"""``wanport make-tiny``: tiny random-weight checkpoints in exactly the official layout.

The official file names, key names and formats; tiny widths (the DiT keeps head_dim 128 so
the rotary tables are the real ones). The real loading code then runs without downloads.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch

from ..errors import ConfigError
from ..io.atomic import write_json_atomic
from ..models.dit import DiTConfig, WanDiT
from ..models.t5 import write_tiny_t5
from ..models.vae.wan21 import WanVAE21
from ..precision import PRESETS
from .dit_checkpoint import CONFIG_NAME, WEIGHTS_STEM
from .layout import VAE21_NAME
from .pth_files import save_pth_atomic
from .safetensors_files import save_file_atomic

MARKER = ".wanport-tiny.json"

TINY_T5 = dict(d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=128)
TINY_DIT = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=16, out_dim=16)
TINY_VAE = dict(dim=8, z_dim=16)

LAYOUTS = ("wan2.1-t2v",)


def is_tiny_checkpoint(directory: str) -> Optional[str]:
    """The layout name if ``directory`` holds a complete tiny checkpoint (its marker is written last)."""
    try:
        with open(os.path.join(directory, MARKER)) as f:
            return json.load(f).get("layout")
    except (OSError, ValueError, AttributeError):
        return None


def _write_dit_shards(directory: str, state: Dict[str, torch.Tensor], shards: int = 2) -> None:
    """Sharded like the official 14B folders: shard files + ``.safetensors.index.json``."""
    keys = sorted(state)
    names = ["%s-%05d-of-%05d.safetensors" % (WEIGHTS_STEM, i + 1, shards) for i in range(shards)]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: state[k] for j, k in enumerate(keys) if j % shards == i}
        save_file_atomic(part, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    write_json_atomic(os.path.join(directory, WEIGHTS_STEM + ".safetensors.index.json"),
                      {"metadata": {"total_size": total}, "weight_map": weight_map})


def make_tiny(directory: str, layout: str = "wan2.1-t2v", seed: int = 0, if_missing: bool = False) -> bool:
    """Write the tiny checkpoint; returns False when ``if_missing`` and it already exists."""
    if layout not in LAYOUTS:
        raise ConfigError("make-tiny: unknown layout %r; known: %s" % (layout, ", ".join(LAYOUTS)))
    existing = is_tiny_checkpoint(directory)
    if if_missing and existing == layout:
        return False
    if os.path.isdir(directory) and os.listdir(directory) and existing is None:
        raise ConfigError("make-tiny: %s is not empty and holds no tiny checkpoint; refusing to write into it "
                          "(choose an empty or new folder)" % directory)
    os.makedirs(directory, exist_ok=True)
    marker = os.path.join(directory, MARKER)
    if os.path.exists(marker):
        os.unlink(marker)  # incomplete until rewritten at the end

    write_tiny_t5(directory, seed=seed, **TINY_T5)

    cfg = DiTConfig(text_dim=TINY_T5["d_model"], **TINY_DIT)
    dit = WanDiT.random(cfg, PRESETS["fp32"], torch.device("cpu"), seed=seed + 1)
    _write_dit_shards(directory, dit.state_dict())
    write_json_atomic(os.path.join(directory, CONFIG_NAME), cfg.to_json())

    torch.manual_seed(seed + 2)
    vae = WanVAE21(**TINY_VAE)
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    save_pth_atomic(vae.state_dict(), os.path.join(directory, VAE21_NAME))

    write_json_atomic(marker, {"layout": layout, "seed": seed, "dit": cfg.to_json(), "t5": TINY_T5, "vae": TINY_VAE})
    return True
