"""``compile: true``: torch.compile on each DiT block, in place (state-dict keys unchanged).

The backend's op table stays inside the compiled graph (user-defined Triton kernels are traced by
torch >= 2.3); whether the compiled block beats the hand-written kernels is a measurement
(``wanport bench dit --compile``), so the switch is off by default.
"""

from __future__ import annotations

import torch


def compile_blocks(model):
    """Compile every block of a WanDiT (torch >= 2.2: ``Module.compile``; older: the forward)."""
    for block in model.blocks:
        if hasattr(block, "compile"):
            block.compile()
        else:  # torch 2.1
            block.forward = torch.compile(block.forward)
    return model


class CompiledWeights:
    """A weight source (``wanport.pipeline.weights``) whose DiTs come out with compiled blocks."""

    def __init__(self, base) -> None:
        self.base = base

    def __getattr__(self, name):
        return getattr(self.base, name)

    def describe(self):
        return dict(self.base.describe(), compile=True)

    def load_dit(self, *args, **kwargs):
        return compile_blocks(self.base.load_dit(*args, **kwargs))
