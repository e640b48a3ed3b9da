"""The Wan diffusion transformer."""

from .config import DiTConfig
from .model import WanDiT, param_dtype

__all__ = ["DiTConfig", "WanDiT", "param_dtype"]
