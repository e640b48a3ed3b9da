"""The initial latent noise: one seed, one video, on every backend."""

from __future__ import annotations

from typing import Sequence

import torch


def initial_noise(shape: Sequence[int], seed: int, mode: str, device: torch.device) -> torch.Tensor:
    """float32 noise of ``shape``.

    ``cpu`` (default): drawn on the host with torch's CPU generator, then moved — identical on
    every backend and machine. ``device``: drawn on the compute device with its own generator,
    as the official code does (``torch.Generator(device).manual_seed(seed)``; bit-matches the
    official noise on CUDA, differs between device types).
    """
    if mode == "cpu":
        gen = torch.Generator()
        gen.manual_seed(seed)
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(device)
    if mode == "device":
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float32, device=device)
    raise ValueError("noise mode must be 'cpu' or 'device', got %r" % (mode,))
