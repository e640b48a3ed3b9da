"""``wanport run``: a :class:`~wanport.pipeline.api.Pipeline` with one call.

The family's generator is chosen by the model's task: ``t2v`` -- :class:`~.t2v.T2VGenerator`
(Wan2.1 T2V, Wan2.2 T2V-A14B); ``i2v`` -- :class:`~.i2v.I2VGenerator` (Wan2.1 I2V-14B, Wan2.2
I2V-A14B); ``ti2v`` -- :class:`~.ti2v.TI2VGenerator` (Wan2.2 TI2V-5B, with or without an image).
"""

from __future__ import annotations

from .api import run

__all__ = ["run"]
