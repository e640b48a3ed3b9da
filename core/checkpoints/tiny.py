"""``wanport make-tiny``: tiny random-weight checkpoints in exactly the official layouts.

The official file names, key names and formats; tiny widths (the DiT keeps head_dim 128 so
the rotary tables are the real ones: 2 heads, or ``--heads N`` for a DiT of N heads, 128 x N wide,
e.g. 4 for Ulysses at degree 4; the CLIP tower keeps 224 px, 14 px patches, head dim 80,
so its 257 tokens are real). The real loading code then runs without downloads.

Layouts (``--model``):

* ``wan2.1-t2v``: one DiT (t2v), Wan2.1 VAE, T5 + tokenizer;
* ``wan2.1-i2v``: one DiT (i2v, in_dim 36, with ``img_emb``), Wan2.1 VAE, T5, the CLIP file;
* ``wan2.2-t2v-a14b`` / ``wan2.2-i2v-a14b``: ``high_noise_model/`` and ``low_noise_model/`` (two
  different random DiTs), Wan2.1 VAE, T5;
* ``wan2.2-ti2v-5b``: one DiT (ti2v, 48 channels), the Wan2.2 VAE (z_dim 48), T5.

What the official Wan code (``wan/modules/*.py`` of Wan2.1 and Wan2.2) can load from a tiny folder:

* the DiT: ``WanModel.from_pretrained(folder)`` (diffusers reads ``config.json``). ``text_dim`` is
  in its ``ignore_for_config``, so it is always the default 4096, and Wan2.1's i2v ``img_emb`` is
  always ``MLPProj(1280, dim)``. The tiny DiT therefore has ``text_dim`` 4096 (so the tiny T5 is
  4096 wide: ``d_model`` 4096 with a small vocabulary, 2 layers, 4 heads of 16, FFN 128) and the
  tiny CLIP tower is 1280 wide (2 layers, MLP 128); everything else comes from ``config.json``.
* the T5 file: the official ``T5Encoder(vocab, dim=4096, dim_attn=64, dim_ffn=128, num_heads=4,
  num_layers=2, num_buckets=32)`` loads it strictly. The ``T5EncoderModel`` wrapper cannot: it
  always builds ``umt5_xxl`` (vocabulary 256384, 24 layers, 5.7 B parameters).
* the VAEs: Wan2.1 ``_video_vae(path, z_dim=16, dim=8)`` and Wan2.2 ``_video_vae(path, z_dim=48,
  dim=8, dec_dim=8)`` load them (their ``**kwargs`` reach the constructor). The ``WanVAE`` and
  ``Wan2_2_VAE`` wrappers cannot: ``WanVAE`` passes no width (``dim`` 96) and ``Wan2_2_VAE`` no
  ``dec_dim`` (256). A real-width VAE would make the tiny decode the full-size one (hundreds of
  GFLOP per frame at 256x256), so the tiny VAEs stay narrow.
* the CLIP file: the official ``VisionTransformer`` with ``dim=1280, mlp_ratio=0.1, num_heads=16,
  num_layers=2`` loads ``visual.*``; the ``CLIPModel`` wrapper builds the real ViT-H/14 and
  XLM-RoBERTa and cannot.

``tests/test_tiny_official.py`` builds each model from those official constructor arguments
(the DiT's through diffusers' own config loading) and loads the tiny files strictly.

The folder is written under a temporary sibling name and renamed at the end
(:mod:`.tiny_target`), so an interrupted make-tiny leaves no partial checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional

import torch

from ..config.models import EXPERTS
from ..errors import ConfigError
from ..io.atomic import write_json_atomic
from ..models.clip import CLIP_CHECKPOINT_NAME, write_tiny_clip
from ..models.dit import DiTConfig, WanDiT
from ..models.t5 import write_tiny_t5
from ..models.vae.wan21 import WanVAE21
from ..models.vae.wan22 import WanVAE22
from ..precision import PRESETS
from .dit_checkpoint import CONFIG_NAME, WEIGHTS_STEM
from .layout import VAE21_NAME, VAE22_NAME
from .pth_files import save_pth_atomic
from .safetensors_files import save_file_atomic
from .tiny_target import check_target, commit, new_staging, remove_stale_staging, write_failure

MARKER = ".wanport-tiny.json"
#: the marker's ``tiny_format``: 2 = loadable by the official WanModel (4096-wide T5, 1280-wide CLIP);
#: a folder of an older format is rewritten by ``--if-missing`` (run.sh looks for this line too)
TINY_FORMAT = 2

#: the official DiT loader always builds a 4096-wide text embedding (see above): d_model 4096,
#: everything else small
TINY_T5 = dict(d_model=4096, num_layers=2, num_heads=4, d_kv=16, d_ff=128)
TINY_DIT = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=16, out_dim=16)
TINY_VAE = dict(dim=8, z_dim=16)
TINY_VAE22 = dict(dim=8, dec_dim=8, z_dim=48)
#: 1280 wide like ViT-H (the official Wan2.1 img_emb is built for it), 2 layers, a narrow MLP
TINY_CLIP = dict(width=1280, layers=2, projection_dim=32, mlp=128)

#: layout -> DiT architecture changes from TINY_DIT, VAE, whether it has experts / CLIP
_LAYOUTS = {
    "wan2.1-t2v": dict(dit=dict(model_type="t2v"), vae="wan2.1", experts=False, clip=False),
    "wan2.1-i2v": dict(dit=dict(model_type="i2v", in_dim=36, image_dim=TINY_CLIP["width"]), vae="wan2.1",
                       experts=False, clip=True),
    "wan2.2-t2v-a14b": dict(dit=dict(model_type="t2v"), vae="wan2.1", experts=True, clip=False),
    "wan2.2-i2v-a14b": dict(dit=dict(model_type="i2v", in_dim=36), vae="wan2.1", experts=True, clip=False),
    "wan2.2-ti2v-5b": dict(dit=dict(model_type="ti2v", in_dim=48, out_dim=48), vae="wan2.2", experts=False,
                           clip=False),
}
LAYOUTS = tuple(_LAYOUTS)


def is_tiny_checkpoint(directory: str) -> Optional[str]:
    """The layout name if ``directory`` holds a complete tiny checkpoint (its marker is written last)."""
    try:
        with open(os.path.join(directory, MARKER)) as f:
            return json.load(f).get("layout")
    except (OSError, ValueError, AttributeError):
        return None


def tiny_format(directory: str) -> int:
    """The marker's ``tiny_format`` (1 for folders of older wanport versions, 0 without a marker)."""
    try:
        with open(os.path.join(directory, MARKER)) as f:
            return int(json.load(f).get("tiny_format", 1))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def tiny_dit_config(layout: str, heads: int = TINY_DIT["num_heads"]) -> DiTConfig:
    """The tiny DiT of a layout (what make-tiny writes; random-weight benchmarks build it too).

    ``heads``: attention heads, each 128 wide (dim = 128 x heads, FFN twice that): 2 by default;
    4 lets Ulysses run at degree 4 (it splits the heads) on the tiny pipeline."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ConfigError("make-tiny: --heads must be a positive integer (e.g. 2 or 4), got %r" % (heads,))
    width = dict(dim=128 * heads, ffn_dim=256 * heads, num_heads=heads)
    return DiTConfig(text_dim=TINY_T5["d_model"], **dict(TINY_DIT, **width, **_LAYOUTS[layout]["dit"]))


def tiny_heads(directory: str) -> Optional[int]:
    """The DiT heads a tiny checkpoint's marker records (None without a readable marker)."""
    try:
        with open(os.path.join(directory, MARKER)) as f:
            return int(json.load(f)["dit"]["num_heads"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def tiny_layout(layout: str) -> Dict[str, object]:
    """The parts of a layout: ``vae`` ("wan2.1" / "wan2.2"), ``experts`` and ``clip`` (bools)."""
    return {k: v for k, v in _LAYOUTS[layout].items() if k != "dit"}


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


def _write_dit(directory: str, cfg: DiTConfig, seed: int) -> None:
    os.makedirs(directory, exist_ok=True)
    dit = WanDiT.random(cfg, PRESETS["fp32"], torch.device("cpu"), seed=seed)
    _write_dit_shards(directory, dit.state_dict())
    write_json_atomic(os.path.join(directory, CONFIG_NAME), cfg.to_json())


def _randomise_vae(vae: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def make_tiny(directory: str, layout: str = "wan2.1-t2v", seed: int = 0, if_missing: bool = False,
              heads: int = TINY_DIT["num_heads"]) -> bool:
    """Write the tiny checkpoint; returns False when ``if_missing`` and it already exists (with
    the same number of ``heads``: a folder with other heads is rewritten).

    Written into a temporary sibling folder and renamed onto ``directory`` when complete; any
    problem with the target is a ConfigError (exit 2) before anything is written."""
    if layout not in LAYOUTS:
        raise ConfigError("make-tiny: unknown layout %r; known: %s" % (layout, ", ".join(LAYOUTS)))
    tiny_dit_config(layout, heads)  # a bad --heads: one error before anything is written
    directory = os.path.normpath(os.fspath(directory))
    existing = is_tiny_checkpoint(directory) if os.path.isdir(directory) else None
    current = existing is None or (tiny_format(directory) >= TINY_FORMAT  # older format: rewritten
                                   and tiny_heads(directory) == heads)  # other heads: rewritten
    if not check_target(directory, layout, existing, if_missing, current):
        return False
    remove_stale_staging(directory)
    try:
        staging = new_staging(directory)
    except OSError as exc:
        raise write_failure(directory, exc) from None
    try:
        _write_layout(staging, layout, seed, heads)
        commit(staging, directory)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_failure(directory, exc) from None
    except BaseException:  # Ctrl-C included: nothing partial stays behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def _write_layout(directory: str, layout: str, seed: int, heads: int) -> None:
    spec = _LAYOUTS[layout]
    write_tiny_t5(directory, seed=seed, **TINY_T5)

    cfg = tiny_dit_config(layout, heads)
    cfg.check("tiny DiT")
    if spec["experts"]:  # two different random experts in their official subfolders
        for i, (_, sub) in enumerate(EXPERTS):
            _write_dit(os.path.join(directory, sub), cfg, seed=seed + 1 + 10 * i)
    else:
        _write_dit(directory, cfg, seed=seed + 1)

    if spec["vae"] == "wan2.2":
        vae, vae_name, vae_cfg = WanVAE22(**TINY_VAE22), VAE22_NAME, TINY_VAE22
    else:
        vae, vae_name, vae_cfg = WanVAE21(**TINY_VAE), VAE21_NAME, TINY_VAE
    _randomise_vae(vae, seed + 2)
    save_pth_atomic(vae.state_dict(), os.path.join(directory, vae_name))

    info = {"layout": layout, "tiny_format": TINY_FORMAT, "seed": seed, "dit": dict(cfg.to_json(), image_dim=cfg.image_dim),
            "t5": TINY_T5,
            "vae": dict(vae_cfg, kind=spec["vae"])}
    if spec["experts"]:
        info["experts"] = [sub for _, sub in EXPERTS]
    if spec["clip"]:
        write_tiny_clip(os.path.join(directory, CLIP_CHECKPOINT_NAME), seed=seed + 3, **TINY_CLIP)
        info["clip"] = TINY_CLIP
    write_json_atomic(os.path.join(directory, MARKER), info)  # last: present means complete
