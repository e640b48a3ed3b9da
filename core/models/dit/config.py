"""DiT architecture numbers, read from an official ``config.json`` (docs/wan-model.md §1.1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ...errors import CheckpointError

#: model_type values of official DiT folders that wanport runs (flf2v, s2v, vace: not yet).
SUPPORTED_MODEL_TYPES = ("t2v", "i2v", "ti2v")
KNOWN_MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v", "s2v", "vace")

#: keys an official config.json carries (diffusers-style); others are ignored, not fatal
_JSON_KEYS = ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type", "num_heads",
              "num_layers", "out_dim", "text_len")
_REQUIRED = ("dim", "ffn_dim", "in_dim", "num_heads", "num_layers", "out_dim")


@dataclass(frozen=True)
class DiTConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096  # not stored in config.json; read from text_embedding.0.weight
    text_len: int = 512
    eps: float = 1e-6
    patch_size: Tuple[int, int, int] = (1, 2, 2)
    model_type: str = "t2v"
    #: CLIP width of the image-context embedding ``img_emb`` (Wan2.1 i2v: 1280); None: no image
    #: context (t2v, ti2v, Wan2.2 i2v). Not stored in config.json; read from ``img_emb.proj.0.weight``.
    image_dim: Optional[int] = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def cond_channels(self) -> int:
        """Channels of the conditioning ``y`` concatenated to the noisy latent (i2v: 4 mask +
        ``out_dim`` first-frame latent channels); 0 when the model takes none."""
        return self.in_dim - self.out_dim if self.model_type == "i2v" else 0

    def check(self, where: str = "config.json") -> None:
        problems = []
        for key in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim",
                    "text_dim", "text_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append("%s must be a positive integer, got %r" % (key, value))
        if not problems:
            if self.dim % self.num_heads:
                problems.append("dim %d is not divisible by num_heads %d" % (self.dim, self.num_heads))
            elif self.head_dim % 2:
                problems.append("head dim %d must be even (rotary pairs)" % self.head_dim)
            if self.freq_dim % 2:
                problems.append("freq_dim %d must be even" % self.freq_dim)
            if self.model_type == "i2v" and self.in_dim != 2 * self.out_dim + 4:
                problems.append("model_type 'i2v' needs in_dim = 2*out_dim + 4 (noisy latent, 4 mask channels, "
                                "first-frame latent) = %d, got in_dim %d" % (2 * self.out_dim + 4, self.in_dim))
            if self.model_type == "ti2v" and self.in_dim != self.out_dim:
                problems.append("model_type 'ti2v' needs in_dim = out_dim, got %d and %d" % (self.in_dim, self.out_dim))
        if self.image_dim is not None:
            if not isinstance(self.image_dim, int) or isinstance(self.image_dim, bool) or self.image_dim <= 0:
                problems.append("image_dim must be a positive integer or None, got %r" % (self.image_dim,))
            elif self.model_type != "i2v":
                problems.append("an image-context embedding (img_emb) belongs to model_type 'i2v', not %r"
                                % self.model_type)
        if not isinstance(self.eps, (int, float)) or not (0 < self.eps < 1):
            problems.append("eps must be in (0, 1), got %r" % (self.eps,))
        if self.model_type not in KNOWN_MODEL_TYPES:
            problems.append("model_type %r is not a Wan model type (%s)"
                            % (self.model_type, ", ".join(KNOWN_MODEL_TYPES)))
        elif self.model_type not in SUPPORTED_MODEL_TYPES:
            problems.append("model_type %r is not supported yet (supported: %s)"
                            % (self.model_type, ", ".join(SUPPORTED_MODEL_TYPES)))
        if problems:
            raise CheckpointError("%s: %s" % (where, "; ".join(problems)))

    def to_json(self) -> Dict[str, Any]:
        """The official config.json content (text_dim/patch_size are constructor defaults there)."""
        d = asdict(self)
        out = {"_class_name": "WanModel", "_diffusers_version": "0.30.0"}
        out.update({k: d[k] for k in _JSON_KEYS})
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str, text_dim: Optional[int] = None,
                  image_dim: Optional[int] = None) -> "DiTConfig":
        if not isinstance(data, Mapping):
            raise CheckpointError("%s: expected a JSON object" % where)
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise CheckpointError("%s: missing key(s) %s" % (where, ", ".join(missing)))
        kwargs = {k: data[k] for k in _JSON_KEYS if k in data}
        if text_dim is not None:
            kwargs["text_dim"] = text_dim
        if image_dim is not None:
            kwargs["image_dim"] = image_dim
        cfg = cls(**kwargs)
        cfg.check(where)
        return cfg
