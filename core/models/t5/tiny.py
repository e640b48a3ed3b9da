"""A tiny random-weight UMT5 encoder in the official Wan layout, written without downloads.

``ckpt_dir/models_t5_umt5-xxl-enc-bf16.pth``: the official key names, bf16, ``torch.save`` of a
plain dict of tensors. ``ckpt_dir/google/umt5-xxl/``: a small Unigram tokenizer built with the
``tokenizers`` library (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; ASCII characters, common English
words, and every character of the official default negative prompts, so those never map to
``<unk>``), loadable with ``AutoTokenizer.from_pretrained`` as a T5 tokenizer.
Everything is written to a temporary name first and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import string
from typing import Dict, List, Tuple

import torch

from .encoder import T5_CHECKPOINT_NAME, TOKENIZER_SUBDIR
from .keymap import EMBED_KEY, expected_wan_t5_shapes

#: docs/wan-model.md §1.1, the official ``sample_neg_prompt`` (Wan2.1 I2V prefixes ``镜头晃动，``)
_NEGATIVE_PROMPTS_ZH = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走",
    "镜头晃动，",
)

_WORDS = (
    "a an the and or of in on at to from with by for as is are was be it its this that these those "
    "there here he she they we you i my your his her their our one two three four five many few "
    "some all no not very more most much cat cats dog dogs bird man woman men women child people "
    "person girl boy car city street road house room water sea ocean river lake sky sun moon light "
    "night day tree trees forest mountain field grass flower snow rain fire wind cloud clouds beach "
    "walks walking runs running sits sitting flying swims jumps plays playing looks dancing eating "
    "red green blue white black yellow orange purple brown gray golden dark bright small big large "
    "old young beautiful slow fast quiet happy sad close shot camera view scene video style cinematic "
    "realistic detailed high quality low worst blurry static motion background foreground front "
    "behind under over near through into across wearing hat shirt dress coat glasses face hand hands "
    "eyes hair head legs fingers picture image painting frame art anime cartoon photo"
).split()

_SPECIAL = ("<pad>", "</s>", "<unk>")


def _tiny_vocab() -> List[Tuple[str, float]]:
    """Unigram pieces with log-probabilities: whole words are far likelier than their letters."""
    vocab: List[Tuple[str, float]] = [(s, 0.0) for s in _SPECIAL]
    seen = set(_SPECIAL)

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))

    add("\u2581", -2.0)
    for w in _WORDS:
        add("\u2581" + w, -4.0)
    for c in string.ascii_letters + string.digits + string.punctuation:
        add(c, -8.0)
        add("\u2581" + c, -8.5)
    for text in _NEGATIVE_PROMPTS_ZH:
        for c in text:
            if not c.isspace():
                add(c, -7.0)
    return vocab


def _write_tokenizer(folder: str) -> int:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = _tiny_vocab()
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _SPECIAL])
    tok.save(os.path.join(folder, "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = dict(special, tokenizer_class="T5Tokenizer", model_max_length=512, extra_ids=0,
                  additional_special_tokens=[], padding_side="right", truncation_side="right")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    return len(vocab)


def _tiny_weights(cfg: Dict[str, int], seed: int) -> Dict[str, torch.Tensor]:
    """Random weights scaled so activations stay O(1): attention logits ~N(0, 1) plus a
    relative-position bias, norms' gains around 1, residual branches of unit scale."""
    gen = torch.Generator().manual_seed(seed)
    d, f, dkv = cfg["d_model"], cfg["d_ff"], cfg["d_kv"]
    inner = cfg["num_heads"] * dkv
    std = {
        "attn.q.weight": 1.0 / math.sqrt(d * dkv),
        "attn.k.weight": 1.0 / math.sqrt(d),
        "attn.v.weight": 1.0 / math.sqrt(d),
        "attn.o.weight": 1.0 / math.sqrt(inner),
        "pos_embedding.embedding.weight": 0.5,
        "ffn.gate.0.weight": 1.0 / math.sqrt(d),
        "ffn.fc1.weight": 1.0 / math.sqrt(d),
        "ffn.fc2.weight": 1.0 / math.sqrt(f),
    }
    out: Dict[str, torch.Tensor] = {}
    for key, shape in expected_wan_t5_shapes(cfg).items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if key == EMBED_KEY:
            w = noise
        elif key.endswith("norm.weight") or key.endswith("norm1.weight") or key.endswith("norm2.weight"):
            w = 1.0 + 0.1 * noise
        else:
            w = noise * std[key.split(".", 2)[2]]
        out[key] = w.to(torch.bfloat16).contiguous()
    return out


def _temp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, ".%s.tmp-%d-%s" % (tail, os.getpid(), secrets.token_hex(4)))


def write_tiny_t5(ckpt_dir: str, seed: int = 0, d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
                  d_kv: int = 16, d_ff: int = 128) -> Dict[str, int]:
    """Write the tiny encoder weights and tokenizer into ``ckpt_dir``; returns the architecture
    numbers (as :func:`~wanport.models.t5.t5_config_from_shapes` reads them back)."""
    ckpt_dir = os.fspath(ckpt_dir)
    os.makedirs(ckpt_dir, exist_ok=True)
    tok_dir = os.path.join(ckpt_dir, *TOKENIZER_SUBDIR.split("/"))
    parent = os.path.dirname(tok_dir)
    os.makedirs(parent, exist_ok=True)

    # tokenizer: complete folder under a temporary name, then renamed into place
    tmp_dir = _temp_name(tok_dir)
    os.mkdir(tmp_dir)  # mode from the umask, like any new folder
    try:
        n_tokens = _write_tokenizer(tmp_dir)
        if os.path.lexists(tok_dir):
            old = _temp_name(tok_dir)
            os.replace(tok_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp_dir, tok_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise

    cfg = {
        "vocab_size": ((n_tokens + 63) // 64) * 64,  # like umt5-xxl: a few embedding rows past the tokenizer
        "d_model": int(d_model),
        "d_kv": int(d_kv),
        "num_heads": int(num_heads),
        "d_ff": int(d_ff),
        "num_layers": int(num_layers),
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
    }
    state = _tiny_weights(cfg, seed)
    path = os.path.join(ckpt_dir, T5_CHECKPOINT_NAME)
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return cfg


__all__ = ["write_tiny_t5"]
