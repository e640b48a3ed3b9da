"""The small-input causal conv path: conv3d computed as one conv2d over the stacked temporal taps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import wanport.models.vae.layers as layers
from wanport.models.vae.layers import CausalConv3d, VAEContext, _conv3d_as_conv2d


@pytest.mark.parametrize("c, o, t, kernel, stride", [
    (4, 6, 5, (3, 3, 3), (1, 1, 1)),   # residual-block conv
    (4, 8, 3, (1, 1, 1), (1, 1, 1)),   # shortcut / conv1 / conv2
    (4, 8, 4, (3, 1, 1), (1, 1, 1)),   # upsample3d time_conv
    (4, 4, 5, (3, 1, 1), (2, 1, 1)),   # downsample3d time_conv (stride 2 in time)
    (3, 5, 6, (3, 3, 3), (1, 2, 2)),   # spatial stride
])
def test_fold_equals_conv3d_in_float64(c, o, t, kernel, stride):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, t, 9, 11, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c, *kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64)
    ref = F.conv3d(x, w, b, stride)
    got = _conv3d_as_conv2d(x, w, b, stride)
    assert got.shape == ref.shape
    # the same products summed in another order: a few ulps of float64 times sqrt(K)
    k = c * w[0, 0].numel()
    assert (got - ref).abs().max() <= 8 * torch.finfo(torch.float64).eps * k ** 0.5 * ref.abs().max()


def test_causal_conv_takes_the_fold_only_for_small_inputs(monkeypatch):
    conv = CausalConv3d(4, 4, 3, padding=1).double()
    calls = []
    real = layers._conv3d_as_conv2d
    monkeypatch.setattr(layers, "_conv3d_as_conv2d", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(1, 4, 2, 8, 8, dtype=torch.float64)
    small = conv(x, VAEContext())
    assert calls and small.shape == (1, 4, 2, 8, 8)
    calls.clear()
    monkeypatch.setattr(layers, "_FOLD_MAX", 0)  # as for a large input: plain conv3d
    plain = conv(x, VAEContext())
    assert not calls
    assert torch.allclose(small, plain, rtol=0, atol=1e-12)
