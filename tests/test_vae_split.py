"""The single-process pieces of the split VAE decode: the padded conv input it writes halo rows
into, and its per-phase account. (The split decode itself runs under gloo in test_parallel.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wanport.models.vae.layers import assemble_padded
from wanport.parallel.vae import VAEPhases
from wanport.reference.runtime import HostRuntime

CASES = [  # (shape, pads, context frames)
    ((1, 4, 3, 5, 6), (1, 1, 1, 1, 2, 0), 0),
    ((1, 4, 3, 5, 6), (1, 1, 1, 1, 0, 0), 2),  # front padding fully replaced by context
    ((1, 4, 1, 5, 6), (0, 0, 1, 1, 1, 0), 1),
    ((2, 4, 5, 6), (1, 1, 1, 1), 0),  # a per-frame 2-D conv's input
    ((2, 4, 5, 6), (0, 1, 0, 1), 0),  # the downsample's right/bottom padding
]


@pytest.mark.parametrize("shape,pads,ctx_frames", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_assemble_padded_is_cat_then_pad_in_the_input_layout(shape, pads, ctx_frames, channels_last):
    g = torch.Generator().manual_seed(len(shape) + ctx_frames)
    x = torch.randn(shape, generator=g)
    context = torch.randn(shape[:2] + (ctx_frames,) + shape[3:], generator=g) if ctx_frames else None
    fmt = (torch.channels_last_3d if x.dim() == 5 else torch.channels_last) if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    want = F.pad(x if context is None else torch.cat([context, x], dim=2), pads)
    got = assemble_padded(x, pads, None if context is None else context.contiguous(memory_format=fmt))
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=fmt)


def test_phases_count_without_timing_and_time_only_with_a_runtime():
    untimed = VAEPhases()
    with untimed.phase("halo", 10):
        pass
    with untimed.phase("halo", 6):
        pass
    report = untimed.report()
    assert report["halo"] == {"calls": 2, "bytes_sent": 16} and not report["timed"] and "compute" not in report
    with pytest.raises(ValueError, match="runtime"):
        VAEPhases(timed=True)
    timed = VAEPhases(HostRuntime(), timed=True)
    with timed.phase("decode"):
        with timed.phase("halo", 1):
            torch.ones(1000).sum()
    report = timed.report()
    assert report["halo"]["s"] >= 0 and report["decode"]["s"] >= report["halo"]["s"]
    assert report["compute"]["s"] == pytest.approx(report["decode"]["s"] - report["halo"]["s"], abs=1e-4)
