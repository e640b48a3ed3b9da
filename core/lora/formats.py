"""The LoRA key spellings in use for Wan, mapped onto our (official) module names.

Three families, detected from the file's keys (facts from the public loaders of diffusers,
LightX2V and ComfyUI; see docs/lora.md):

* ``diffusers`` -- PEFT names of the diffusers ``WanTransformer3DModel``:
  ``transformer.blocks.0.attn1.to_q.lora_A.weight`` / ``lora_B.weight``, optional ``.alpha``,
  ``lora_B.bias`` (a bias delta). Module names are translated (``attn1.to_q`` -> ``self_attn.q``,
  ``attn2.add_k_proj`` -> ``cross_attn.k_img``, ``ffn.net.0.proj`` -> ``ffn.0``, ``proj_out`` ->
  ``head.head``, ``condition_embedder.*`` -> ``time_embedding`` / ``text_embedding`` /
  ``time_projection`` / ``img_emb`` ...).
* ``official`` -- the official module names (LightX2V, ComfyUI):
  ``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` / ``lora_up.weight`` (or the
  ``lora_A`` / ``lora_B`` spelling of the same names), ``.alpha``, and full deltas ``.diff``
  (the weight), ``.diff_b`` (the bias), ``.diff_m`` (the ``modulation`` of that module).
* ``kohya`` -- flattened official names: ``lora_unet_blocks_0_self_attn_q.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``, ``.diff``, ``.diff_b``.

A LoRA pair ``(down [r, in], up [out, r])`` with alpha adds ``(alpha / r) * up @ down`` to the
weight (scale 1 without alpha); a diff adds itself. Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

FORMATS = ("diffusers", "official", "kohya")

#: roles of a key: the two factors, their alpha, and full deltas of a weight / bias / modulation
ROLES = ("down", "up", "alpha", "diff", "diff_b", "diff_m")

_PREFIXES = (  # (prefix, format)
    ("lora_unet_", "kohya"),
    ("base_model.model.", "diffusers"),
    ("transformer.", "diffusers"),
    ("model.diffusion_model.", "official"),
    ("diffusion_model.", "official"),
)

_SUFFIXES = {
    "diffusers": ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_B.bias", "diff_b"),
                  (".alpha", "alpha")),
    "official": ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_A.weight", "down"),
                 (".lora_B.weight", "up"), (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"),
                 (".diff", "diff")),
    "kohya": ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
              (".diff_b", "diff_b"), (".diff", "diff")),
}

#: (diffusers module path, official module path); ``{n}`` stands for a block index
_NAME_PAIRS: Tuple[Tuple[str, str], ...] = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("proj_out", "head.head"),
    ("patch_embedding", "patch_embedding"),
    ("blocks.{n}.attn1.to_q", "blocks.{n}.self_attn.q"),
    ("blocks.{n}.attn1.to_k", "blocks.{n}.self_attn.k"),
    ("blocks.{n}.attn1.to_v", "blocks.{n}.self_attn.v"),
    ("blocks.{n}.attn1.to_out.0", "blocks.{n}.self_attn.o"),
    ("blocks.{n}.attn1.norm_q", "blocks.{n}.self_attn.norm_q"),
    ("blocks.{n}.attn1.norm_k", "blocks.{n}.self_attn.norm_k"),
    ("blocks.{n}.attn2.to_q", "blocks.{n}.cross_attn.q"),
    ("blocks.{n}.attn2.to_k", "blocks.{n}.cross_attn.k"),
    ("blocks.{n}.attn2.to_v", "blocks.{n}.cross_attn.v"),
    ("blocks.{n}.attn2.to_out.0", "blocks.{n}.cross_attn.o"),
    ("blocks.{n}.attn2.norm_q", "blocks.{n}.cross_attn.norm_q"),
    ("blocks.{n}.attn2.norm_k", "blocks.{n}.cross_attn.norm_k"),
    ("blocks.{n}.attn2.add_k_proj", "blocks.{n}.cross_attn.k_img"),
    ("blocks.{n}.attn2.add_v_proj", "blocks.{n}.cross_attn.v_img"),
    ("blocks.{n}.attn2.norm_added_k", "blocks.{n}.cross_attn.norm_k_img"),
    ("blocks.{n}.ffn.net.0.proj", "blocks.{n}.ffn.0"),
    ("blocks.{n}.ffn.net.2", "blocks.{n}.ffn.2"),
    ("blocks.{n}.norm2", "blocks.{n}.norm3"),
)


def _rule(src: str, dst: str):
    pattern = re.compile("^" + re.escape(src).replace(re.escape("{n}"), r"(\d+)") + "$")
    return pattern, dst.replace("{n}", r"\1")


_TO_OFFICIAL = tuple(_rule(d, o) for d, o in _NAME_PAIRS)
_TO_DIFFUSERS = tuple(_rule(o, d) for d, o in _NAME_PAIRS)

#: names only the diffusers spelling uses (to classify keys that carry no prefix)
_DIFFUSERS_MARKERS = re.compile(r"(^|\.)(attn1|attn2|condition_embedder|proj_out|ffn\.net)\.")


@dataclass(frozen=True)
class ParsedKey:
    """One key of a LoRA file: its format, the official module path it names and its role."""

    key: str
    fmt: str
    module: str
    role: str


@dataclass(frozen=True)
class Unparsed:
    key: str
    why: str


def classify(key: str) -> Tuple[str, str]:
    """(format, key without its prefix) for one key."""
    for prefix, fmt in _PREFIXES:
        if key.startswith(prefix):
            return fmt, key[len(prefix):]
    return ("diffusers" if _DIFFUSERS_MARKERS.search(key) else "official"), key


def detect_format(keys: Iterable[str]) -> Tuple[str, Dict[str, str]]:
    """(format, {format: an example key}) -- the single format of a file's keys; a file mixing
    formats gives the first two formats' examples so the caller can name them."""
    seen: Dict[str, str] = {}
    for key in keys:
        fmt, _ = classify(key)
        seen.setdefault(fmt, key)
    if not seen:
        return "", seen
    return (next(iter(seen)) if len(seen) == 1 else ""), seen


def diffusers_to_official(module: str) -> Optional[str]:
    for pattern, repl in _TO_OFFICIAL:
        if pattern.match(module):
            return pattern.sub(repl, module)
    return None


def official_to_diffusers(module: str) -> Optional[str]:
    for pattern, repl in _TO_DIFFUSERS:
        if pattern.match(module):
            return pattern.sub(repl, module)
    return None


def kohya_names(module_names: Iterable[str]) -> Dict[str, str]:
    """flattened name -> official module path, for every module (and parameter owner) of the model."""
    return {name.replace(".", "_"): name for name in module_names}


def parse_key(key: str, fmt: str, kohya: Mapping[str, str]) -> Tuple[Optional[ParsedKey], Optional[Unparsed]]:
    """A key of a file in format ``fmt`` -> its module and role, or why it cannot be read."""
    kfmt, rest = classify(key)
    if kfmt != fmt:
        return None, Unparsed(key, "is spelled in the %s format, the file's other keys in %s" % (kfmt, fmt))
    for suffix, role in _SUFFIXES[fmt]:  # noqa: B007 (the matched role is read after the loop)
        if rest.endswith(suffix):
            base = rest[: -len(suffix)]
            break
    else:
        return None, Unparsed(key, "has no LoRA suffix this loader knows (%s)"
                              % ", ".join(s for s, _ in _SUFFIXES[fmt]))
    if fmt == "diffusers":
        module = diffusers_to_official(base)
        if module is None:
            return None, Unparsed(key, "names diffusers module %r, which has no counterpart in the Wan DiT" % base)
    elif fmt == "kohya":
        module = kohya.get(base)
        if module is None:
            return None, Unparsed(key, "names %r, which is no module of this model" % base)
    else:
        module = base
    return ParsedKey(key, fmt, module, role), None


def parse_keys(keys: Sequence[str], fmt: str, module_names: Iterable[str]) -> Tuple[List[ParsedKey], List[Unparsed]]:
    kohya = kohya_names(module_names) if fmt == "kohya" else {}
    parsed, bad = [], []
    for key in keys:
        p, u = parse_key(key, fmt, kohya)
        if p is not None:
            parsed.append(p)
        else:
            bad.append(u)
    return parsed, bad


def key_names(module: str, fmt: str, spelling: str = "lora_down") -> Dict[str, str]:
    """The keys a file in ``fmt`` uses for ``module`` (an official path): role -> key. The
    writer of tiny files and the tests use it; ``spelling``: ``lora_down`` or ``lora_A`` for the
    official format."""
    if fmt == "diffusers":
        d = official_to_diffusers(module)
        if d is None:
            raise ValueError("module %r has no diffusers name" % module)
        base = "transformer." + d
        return {"down": base + ".lora_A.weight", "up": base + ".lora_B.weight", "alpha": base + ".alpha",
                "diff_b": base + ".lora_B.bias"}
    if fmt == "kohya":
        base = "lora_unet_" + module.replace(".", "_")
        return {"down": base + ".lora_down.weight", "up": base + ".lora_up.weight", "alpha": base + ".alpha",
                "diff": base + ".diff", "diff_b": base + ".diff_b"}
    base = "diffusion_model." + module
    down, up = ("lora_A", "lora_B") if spelling == "lora_A" else ("lora_down", "lora_up")
    return {"down": "%s.%s.weight" % (base, down), "up": "%s.%s.weight" % (base, up), "alpha": base + ".alpha",
            "diff": base + ".diff", "diff_b": base + ".diff_b", "diff_m": base + ".diff_m"}


__all__ = ["FORMATS", "ROLES", "ParsedKey", "Unparsed", "classify", "detect_format", "diffusers_to_official",
           "official_to_diffusers", "kohya_names", "parse_key", "parse_keys", "key_names"]
