"""The UMT5-XXL text encoder as Wan uses it (docs/wan-model.md §4.1): official checkpoint -> transformers'
``UMT5EncoderModel``; official cleaning, tokenisation and trim rule; official softmax numerics.

Usage::

    enc = WanTextEncoder.load(ckpt_dir, dtype=torch.bfloat16, device=device, text_len=512)
    embs = enc.encode([prompt, negative_prompt])   # [L_i, 4096] each, L_i = tokens incl. </s>
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ...checkpoints.pth_files import load_pth, pth_format
from ...errors import CheckpointError
from ...files import regular_file
from .attention import WANPORT_T5_ATTENTION, mask_is_hooked, select_attention_implementation
from .keymap import EMBED_KEY, expected_wan_t5_shapes, hf_keys_for, hf_umt5_config_kwargs, t5_config_from_shapes
from .text_clean import clean_text

T5_CHECKPOINT_NAME = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_SUBDIR = "google/umt5-xxl"

PathLike = Union[str, "os.PathLike[str]"]

_MAX_LISTED = 5


# ----------------------------------------------------------------------------- files


def _paths(ckpt_dir: PathLike) -> Tuple[str, str, str]:
    d = os.fspath(ckpt_dir)
    return d, os.path.join(d, T5_CHECKPOINT_NAME), os.path.join(d, *TOKENIZER_SUBDIR.split("/"))


def _listed(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    text = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    if len(keys) > _MAX_LISTED:
        text += " and %d more" % (len(keys) - _MAX_LISTED)
    return text


def check_wan_t5_state(state: Mapping[str, Any], where: str) -> Dict[str, int]:
    """Every key and shape of a Wan T5 state dict (tensors or anything with ``.shape``) against
    the official layout; the architecture numbers when it matches. CheckpointError names
    ``where`` and the offending key(s)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    cfg = t5_config_from_shapes(shapes, where)
    expected = expected_wan_t5_shapes(cfg)
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise CheckpointError("%s: missing key %s" % (where, _listed(missing)))
    unexpected = [k for k in shapes if k not in expected]
    if unexpected:
        raise CheckpointError("%s: unexpected key %s (not an official Wan UMT5 encoder key)"
                              % (where, _listed(unexpected)))
    for k, shape in expected.items():
        if tuple(shapes[k]) != shape:
            raise CheckpointError("%s: key %r has shape %s, expected %s (from the other keys)"
                                  % (where, k, list(shapes[k]), list(shape)))
    for k, v in state.items():
        dt = getattr(v, "dtype", None)
        if isinstance(dt, torch.dtype) and not dt.is_floating_point:
            raise CheckpointError("%s: key %r has dtype %s, expected a floating-point tensor" % (where, k, dt))
    return cfg


# ----------------------------------------------------------------------------- tokenizer

def _load_tokenizer(folder: str) -> Any:
    """``AutoTokenizer.from_pretrained(folder)`` (local files only)."""
    if not os.path.isdir(folder):
        raise CheckpointError("%s: tokenizer folder not found (the official checkpoint folder holds %s/)"
                              % (folder, TOKENIZER_SUBDIR))
    for entry in os.scandir(folder):  # a FIFO or device in place of a tokenizer file would hang the reader
        if not entry.is_dir():
            regular_file(entry.path, CheckpointError)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise CheckpointError("%s: tokenizer does not load (%s: %s)"
                              % (folder, type(exc).__name__, msg[0][:200] if msg else "")) from None
    for what in ("pad_token_id", "eos_token_id"):
        if getattr(tok, what, None) is None:
            raise CheckpointError("%s: tokenizer has no %s" % (folder, what.replace("_id", "")))
    return tok


# ----------------------------------------------------------------------------- model


def build_umt5_encoder(state: Mapping[str, torch.Tensor], cfg: Mapping[str, int], dtype: torch.dtype,
                       device: torch.device, where: str = "UMT5 encoder weights") -> torch.nn.Module:
    """``UMT5EncoderModel`` built on the meta device and filled from the (validated) Wan state
    dict with ``load_state_dict(strict=True, assign=True)``: each weight is materialised once,
    directly in ``dtype`` on ``device``."""
    from transformers import UMT5Config, UMT5EncoderModel

    attn = select_attention_implementation()
    config = UMT5Config(attn_implementation=attn, **hf_umt5_config_kwargs(cfg))
    with torch.device("meta"):
        model = UMT5EncoderModel(config)

    hf_state: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        t = v.to(device=device, dtype=dtype)
        for hf_key in hf_keys_for(k):
            hf_state[hf_key] = t
    try:
        model.load_state_dict(hf_state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError("%s: does not load into UMT5EncoderModel (%s)"
                              % (where, str(exc).strip().splitlines()[0][:300])) from None
    del hf_state
    # one embedding shared by the model and its encoder stack (it is the same tensor already)
    model.encoder.embed_tokens.weight = model.shared.weight
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise CheckpointError("%s: nothing loaded into %r" % (where, name))
    return model.eval().requires_grad_(False)


class WanTextEncoder:
    """Official Wan text encoding: clean -> tokenize (pad to ``text_len``) -> UMT5 encoder ->
    keep the rows of the real tokens (incl. ``</s>``)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: Mapping[str, int],
                 dtype: torch.dtype, device: torch.device, text_len: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = dict(config)
        self.dtype = dtype
        self.device = torch.device(device)
        self.text_len = int(text_len)
        self.attn_implementation = getattr(model.config, "_attn_implementation", None)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def check_files(ckpt_dir: PathLike) -> Optional[Dict[str, int]]:
        """Cheap checks before any heavy load: the weights file exists and its header is a
        PyTorch checkpoint (for the zip format the key names and shapes are validated too,
        memory-mapped: no tensor data is read, and the architecture numbers are returned);
        the tokenizer folder loads."""
        d, pth, tok_dir = _paths(ckpt_dir)
        if not os.path.isdir(d):
            raise CheckpointError("%s: checkpoint folder not found" % d)
        cfg = None
        if pth_format(pth) == "zip":
            state = load_pth(pth)
            cfg = check_wan_t5_state(state, pth)
            del state
        _load_tokenizer(tok_dir)
        return cfg

    @classmethod
    def load(cls, ckpt_dir: PathLike, dtype: torch.dtype = torch.bfloat16,
             device: Optional[torch.device] = None, text_len: int = 512) -> "WanTextEncoder":
        d, pth, tok_dir = _paths(ckpt_dir)
        device = torch.device("cpu") if device is None else torch.device(device)
        if not os.path.isdir(d):
            raise CheckpointError("%s: checkpoint folder not found" % d)
        pth_format(pth)  # missing / corrupt header before anything heavy
        tokenizer = _load_tokenizer(tok_dir)
        state = load_pth(pth)
        cfg = check_wan_t5_state(state, pth)  # every key and shape before the model is built
        if len(tokenizer) > cfg["vocab_size"]:
            raise CheckpointError("%s: the tokenizer has %d tokens but %s key %r has only %d rows"
                                  % (tok_dir, len(tokenizer), pth, EMBED_KEY, cfg["vocab_size"]))
        model = build_umt5_encoder(state, cfg, dtype, device, where=pth)
        del state
        return cls(model, tokenizer, cfg, dtype, device, text_len)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], tokenizer: Any,
                        dtype: torch.dtype = torch.bfloat16, device: Optional[torch.device] = None,
                        text_len: int = 512, where: str = "UMT5 encoder weights") -> "WanTextEncoder":
        """From an in-memory Wan-named state dict and a loaded tokenizer (tests, tools)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        cfg = check_wan_t5_state(state, where)
        model = build_umt5_encoder(state, cfg, dtype, device, where=where)
        return cls(model, tokenizer, cfg, dtype, device, text_len)

    # ------------------------------------------------------------------ use

    @property
    def dim(self) -> int:
        return int(self.config["d_model"])

    def tokenize(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Official: cleaned, padded to ``text_len`` with ``</s>`` appended (truncated before it
        when longer). Returns ``input_ids`` and ``attention_mask`` [B, text_len] on the CPU."""
        cleaned = [clean_text(t) for t in texts]
        enc = self.tokenizer(cleaned, padding="max_length", truncation=True, max_length=self.text_len,
                             add_special_tokens=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask: torch.Tensor = mask
        if self.attn_implementation == WANPORT_T5_ATTENTION and not mask_is_hooked():
            # transformers without our mask hook: hand over a ready additive mask (kept as is)
            attn_mask = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device)
            attn_mask = attn_mask.masked_fill(mask == 0, torch.finfo(self.dtype).min)[:, None, None, :]
        out = self.model(input_ids=ids, attention_mask=attn_mask)
        return out[0]

    def encode(self, texts: Union[str, Sequence[str]], batched: bool = False) -> List[torch.Tensor]:
        """One tensor [L_i, dim] per prompt (``dtype``, on ``device``), L_i = real tokens incl.
        ``</s>``. Like the official pipeline, each prompt runs as its own batch-1 forward;
        ``batched=True`` runs them together (same math; on some kernels not bit-identical)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return []
        ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        seq_lens = [int(n) for n in mask.gt(0).sum(dim=1).tolist()]
        with torch.no_grad():
            if batched:
                outs = list(self._forward(ids, mask))
            else:
                outs = [self._forward(ids[i:i + 1], mask[i:i + 1])[0] for i in range(len(texts))]
        return [u[:n] for u, n in zip(outs, seq_lens)]

    __call__ = encode


__all__ = ["WanTextEncoder", "T5_CHECKPOINT_NAME", "TOKENIZER_SUBDIR", "check_wan_t5_state",
           "build_umt5_encoder"]
