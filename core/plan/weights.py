"""Bytes of every model's weights by dtype, counted on the meta device under the precision policy.

Each count applies the same per-tensor decision as the loader that materialises the weights:
the DiT's :func:`~wanport.models.dit.param_dtype` (what ``checkpoints/dit_checkpoint.load_dit``
casts each tensor to), one dtype for the whole T5 (``policy.text_encoder``), CLIP
(``policy.image_encoder``) and VAE (``policy.vae``). FSDP2 shards every parameter along its
first dim, padded to a multiple of the shard degree: :func:`sharded_bytes` is exact for that.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..models.dit import DiTConfig, WanDiT, param_dtype
from ..precision import PrecisionPolicy

Shape = Tuple[int, ...]


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


@functools.lru_cache(maxsize=None)
def itemsize(dt: torch.dtype) -> int:
    return torch.empty((), dtype=dt, device="meta").element_size()


@dataclass(frozen=True)
class TensorSet:
    """A model's tensors as (shape, dtype) pairs: enough for every byte count."""

    name: str
    tensors: Tuple[Tuple[str, Shape, torch.dtype], ...]

    def by_dtype(self) -> Dict[str, int]:
        return dict(self._by_dtype)

    @functools.cached_property
    def _by_dtype(self) -> Dict[str, int]:  # counted once per set (plans predict many layouts)
        out: Dict[str, int] = {}
        for _, shape, dt in self.tensors:
            key = dtype_name(dt)
            out[key] = out.get(key, 0) + _numel(shape) * itemsize(dt)
        return out

    @functools.cached_property
    def bytes(self) -> int:
        return sum(_numel(s) * itemsize(dt) for _, s, dt in self.tensors)

    def sharded_bytes(self, degree: int) -> int:
        """Per-rank bytes under FSDP2 with ``degree`` shards (dim 0 padded up to a multiple)."""
        return sum(sharded_numel(s, degree) * itemsize(dt) for _, s, dt in self.tensors)

    def subset(self, prefix: str) -> "TensorSet":
        return TensorSet(self.name + ":" + prefix, tuple(t for t in self.tensors if t[0].startswith(prefix)))

    def without(self, prefix: str) -> "TensorSet":
        return TensorSet(self.name + ":root", tuple(t for t in self.tensors if not t[0].startswith(prefix)))


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def sharded_numel(shape: Shape, degree: int) -> int:
    """Elements of one FSDP2 shard: ``ceil(dim0 / degree) * prod(rest)`` (0-d tensors: whole)."""
    if degree <= 1 or not shape:
        return _numel(shape)
    return -(-int(shape[0]) // degree) * _numel(shape[1:])


def dit_tensors(cfg: DiTConfig, policy: PrecisionPolicy, quant_scheme: Optional[str] = None,
                keep: Tuple[str, ...] = ()) -> TensorSet:
    """The DiT's state dict on meta, each tensor in the dtype the loader casts it to; with a
    quantization scheme (``quant.dit``), the Linears it quantizes as 8-bit weights + float32 scales."""
    return _dit_tensors(cfg, policy, quant_scheme, tuple(keep))


@functools.lru_cache(maxsize=64)
def _dit_tensors(cfg: DiTConfig, policy: PrecisionPolicy, quant_scheme: Optional[str] = None,
                 keep: Tuple[str, ...] = ()) -> TensorSet:
    model = WanDiT.on_meta(cfg, policy)
    quantized = set()
    if quant_scheme is not None:
        from ..models.dit.quant_linear import select_linears, swap_in
        from ..ops.quant import get_scheme

        names, _ = select_linears(model, keep)
        swap_in(model, names, get_scheme(quant_scheme), policy.matmul)
        quantized = {n + ".weight" for n in names} | {n + ".weight_scale" for n in names}
    return TensorSet("dit", tuple((k, tuple(v.shape), v.dtype if k in quantized else param_dtype(k, policy))
                                  for k, v in model.state_dict().items()))


def t5_tensors(cfg: Mapping[str, int], dtype: torch.dtype) -> TensorSet:
    """The official UMT5 encoder file's tensors (the token embedding once: transformers ties its
    two uses to one tensor), all in the text encoder's dtype."""
    from ..models.t5 import expected_wan_t5_shapes

    return TensorSet("t5", tuple((k, tuple(s), dtype) for k, s in sorted(expected_wan_t5_shapes(cfg).items())))


def clip_tensors(cfg: Mapping[str, int], dtype: torch.dtype) -> TensorSet:
    """The visual tower as it lands in ``CLIPVisionModelWithProjection`` (the key map's splits
    and drops applied to meta tensors), in the image encoder's dtype. The encoder drops the unused
    last block after loading; the count keeps it: the load holds it for a moment."""
    from ..models.clip.keymap import expected_visual_shapes, wan_clip_to_hf

    meta = {k: torch.empty(s, device="meta") for k, s in expected_visual_shapes(cfg).items()}
    return TensorSet("clip", tuple((k, tuple(v.shape), dtype) for k, v in sorted(wan_clip_to_hf(meta).items())))


def vae_tensors(kind: str, cfg: Mapping[str, int], dtype: torch.dtype) -> TensorSet:
    return _vae_tensors(kind, tuple(sorted(cfg.items())), dtype)


@functools.lru_cache(maxsize=16)
def _vae_tensors(kind: str, cfg_items, dtype: torch.dtype) -> TensorSet:
    from ..checkpoints.layout import _VAES

    with torch.device("meta"):
        vae = _VAES[kind][1](**dict(cfg_items))
    return TensorSet("vae", tuple((k, tuple(v.shape), dtype) for k, v in vae.state_dict().items()))


__all__ = ["TensorSet", "dit_tensors", "t5_tensors", "clip_tensors", "vae_tensors", "sharded_numel",
           "dtype_name", "itemsize"]
