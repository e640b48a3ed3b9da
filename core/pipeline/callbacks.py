"""The per-call view of the denoising loop: the application's ``on_step`` callback, the time
from the ``generate()`` call to the first denoising step, and any observer (``wanport dump``)."""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import torch

from .sampling import Expert, LoopObserver

#: ``on_step(step, total, latent_stats)``: step is 1-based, latent_stats holds mean, std, min, max
OnStep = Callable[[int, int, Dict[str, float]], None]


def latent_stats(latent: torch.Tensor) -> Dict[str, float]:
    """mean, std, min, max of the latent (float32 statistics; one small host transfer)."""
    x = latent.detach().float()
    s = torch.stack([x.mean(), x.std(), x.min(), x.max()]).cpu().tolist()
    return {"mean": s[0], "std": s[1], "min": s[2], "max": s[3]}


class CallObserver(LoopObserver):
    """Forwards the loop's hooks to an inner observer; calls ``on_step`` after every step and
    records when the first step started (seconds after ``called_at``, a ``time.perf_counter``)."""

    def __init__(self, inner: Optional[LoopObserver], on_step: Optional[OnStep], total: int,
                 called_at: float) -> None:
        self.inner = inner
        self.on_step = on_step
        self.total = int(total)
        self.called_at = called_at
        self.first_step_s: Optional[float] = None

    def step_start(self, index: int, t: int, expert: Expert) -> None:
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - self.called_at
        if self.inner is not None:
            self.inner.step_start(index, t, expert)

    def forward(self, index: int, branch: str) -> None:
        if self.inner is not None:
            self.inner.forward(index, branch)

    def step_end(self, index: int, latent: torch.Tensor) -> None:
        if self.inner is not None:
            self.inner.step_end(index, latent)
        if self.on_step is not None:
            self.on_step(index + 1, self.total, latent_stats(latent))

    def video_decoded(self, video: torch.Tensor) -> None:
        if self.inner is not None:
            self.inner.video_decoded(video)


__all__ = ["CallObserver", "OnStep", "latent_stats"]
