"""VAEs: the Wan2.1 video VAE (``wan21``)."""

from .wan21 import VAE21_MEAN, VAE21_STD, WanVAE21

__all__ = ["WanVAE21", "VAE21_MEAN", "VAE21_STD"]
