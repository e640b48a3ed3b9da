"""Random LoRA files in every supported key format, for tests, CI and benchmarks.

:func:`write_lora` draws a LoRA for a model structure (every Linear layer -- the blocks'
attention projections including the I2V ``k_img``/``v_img``, the FFN, the embeddings, ``img_emb``
and the head -- plus full deltas of biases, norm gains and the blocks' modulation where the
format has a spelling for them) and writes it in one format. It returns the float32 delta each
parameter should receive at strength 1, so a test can apply it directly and compare.
``wanport make-tiny DIR --lora`` writes one file per format next to a tiny checkpoint;
``wanport bench pipeline --random-lora RANK`` writes a real-size one.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterable, Optional, Tuple

import torch

from ..checkpoints.safetensors_files import save_file_atomic
from .formats import key_names
from .match import ModelStructure

#: (file stem, format, spelling of the factors): one tiny file each
TINY_FORMATS: Tuple[Tuple[str, str, str], ...] = (
    ("lora-diffusers", "diffusers", "lora_A"),
    ("lora-official", "official", "lora_down"),
    ("lora-official-ab", "official", "lora_A"),
    ("lora-kohya", "kohya", "lora_down"),
)


def write_lora(path: str, model: ModelStructure, fmt: str, rank: int = 4, seed: int = 0,
               spelling: str = "lora_down", alpha: Optional[float] = None, diffs: bool = True,
               dtype: torch.dtype = torch.float32, modules: Optional[Iterable[str]] = None,
               magnitude: float = 0.05, expected: bool = True) -> Dict[str, torch.Tensor]:
    """Write a random LoRA for ``model`` in format ``fmt``; return {parameter: float32 delta at strength 1}
    (empty with ``expected=False``: real-size files, whose full deltas would not fit in memory).

    ``alpha`` None: rank / 2 (so the alpha/rank scale is exercised); ``magnitude``: the relative
    size of each delta against a unit-scale weight."""
    gen = torch.Generator().manual_seed(seed)
    alpha = float(rank) / 2 if alpha is None else float(alpha)
    tensors: Dict[str, torch.Tensor] = {}
    deltas: Dict[str, torch.Tensor] = {}
    targets = sorted(model.linears) if modules is None else list(modules)
    for module in targets:
        out_f, in_f = model.shapes[module + ".weight"]
        names = key_names(module, fmt, spelling)
        down = (torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)).to(dtype)
        up = (torch.randn(out_f, rank, generator=gen) * (magnitude / math.sqrt(rank))).to(dtype)
        tensors[names["down"]] = down
        tensors[names["up"]] = up
        tensors[names["alpha"]] = torch.tensor(alpha, dtype=dtype)
        if expected:
            deltas[module + ".weight"] = (alpha / rank) * (up.float() @ down.float())
        if diffs and "diff_b" in names and module + ".bias" in model.shapes:
            db = (torch.randn(out_f, generator=gen) * 0.01).to(dtype)
            tensors[names["diff_b"]] = db
            deltas[module + ".bias"] = db.float()
    if diffs and fmt != "diffusers":
        for param, shape in sorted(model.shapes.items()):
            if param.endswith((".norm3.weight", ".norm_q.weight")) or (fmt == "official" and param.endswith(".modulation")
                                                                      and param.startswith("blocks.")):
                module = param.rsplit(".", 1)[0]
                names = key_names(module, fmt, spelling)
                key = names["diff_m"] if param.endswith(".modulation") else names["diff"]
                d = (torch.randn(shape, generator=gen) * 0.01).to(dtype)
                tensors[key] = d
                deltas[param] = d.float()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file_atomic(tensors, path, metadata={"format": "wanport random LoRA (%s)" % fmt})
    return deltas


def structure_for(cfg, policy=None) -> ModelStructure:
    from ..models.dit import WanDiT
    from ..precision import policy_from_config

    return ModelStructure.of(WanDiT.on_meta(cfg, policy or policy_from_config("fp32")))


def write_tiny_loras(directory: str, cfg, seed: int = 0, rank: int = 4) -> Dict[str, str]:
    """One tiny LoRA file per supported format in ``directory``/lora/ for a DiT config; {stem: path}."""
    model = structure_for(cfg)
    out = {}
    for i, (stem, fmt, spelling) in enumerate(TINY_FORMATS):
        path = os.path.join(directory, "lora", stem + ".safetensors")
        write_lora(path, model, fmt, rank=rank, seed=seed * 101 + i, spelling=spelling)
        out[stem] = path
    return out





def make_tiny_loras(directory: str, layout: str, seed: int = 0, if_missing: bool = False,
                    heads: int = 2) -> Dict[str, str]:
    """``wanport make-tiny DIR --model LAYOUT --lora``: the tiny LoRAs of a tiny checkpoint."""
    from ..checkpoints.tiny import tiny_dit_config

    cfg = tiny_dit_config(layout, heads)
    paths = {stem: os.path.join(directory, "lora", stem + ".safetensors") for stem, _, _ in TINY_FORMATS}
    if if_missing and all(os.path.isfile(p) for p in paths.values()):
        return paths
    return write_tiny_loras(directory, cfg, seed=seed)

__all__ = ["write_lora", "write_tiny_loras", "make_tiny_loras", "structure_for", "TINY_FORMATS"]
