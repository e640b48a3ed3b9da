"""Quantized Wan2.2 A14B (docs/quantization.md): both experts of a tiny two-expert checkpoint
are quantized as they load, each from its own weights; the report lists both experts' layers;
parking the inactive expert moves the 8-bit weights and their scales (read back after the call,
they are still the reference quantization of each expert's checkpoint); the parking decision
weighs the quantized expert."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from safetensors.torch import load_file

from wanport.models.dit.quant_linear import quantized_layers
from wanport.ops.quant import get_scheme, quantize_reference
from wanport.pipeline.moe import HIGH, LOW, expert_bytes
from wanport.plan.weights import dit_tensors

#: small: one frame of 80x48 (15 tokens), 3 steps (999, 960, 857: the switch at step 2)
BASE = ["model=wan2.2-t2v-a14b-tiny", "sample.size=80*48", "sample.frame_num=1", "sample.steps=3",
        "precision=fp32", "output.name=q"]
#: the Linears of the two tiny blocks that quant.keep's default leaves to quantize
LINEARS = ["blocks.%d.%s" % (b, m) for b in (0, 1) for m in (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
    "cross_attn.o", "ffn.0", "ffn.2")]


def _checkpoint(folder):
    state = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        state.update(load_file(path))
    return state


def _run(ckpt, scheme, park):
    from wanport import Pipeline

    over = BASE + ["checkpoint_dir=%s" % ckpt, "quant.dit=%s" % scheme, "offload.park_inactive_expert=%s" % park]
    with Pipeline.from_recipe(None, overrides=over, progress=False) as pipe:
        result = pipe.generate(video_tensor=True)
        models = dict(pipe._models.experts()[0])
        layers = {name: {n: (m.weight.detach().float().clone(), m.weight.dtype, m.weight_scale.detach().clone())
                         for n, m in quantized_layers(models[name])} for name in (HIGH, LOW)}
    return result, layers


@pytest.mark.parametrize("scheme", ["fp8_rowwise", "int8_w8a8"])
def test_both_experts_quantize_at_load_report_and_park(tiny_layout, scheme):
    ckpt = tiny_layout("wan2.2-t2v-a14b")
    parked, layers = _run(ckpt, scheme, "true")
    report = parked.report
    assert report["experts"]["per_step"] == [HIGH, HIGH, LOW]
    assert report["experts"]["park_inactive_expert"] is True
    assert [(m["parked"], m["activated"]) for m in report["experts"]["moves"]] == [(None, HIGH), (HIGH, LOW)]
    q = report["quant"]
    assert q["scheme"] == scheme and q["impl"] == "reference.emulate_" + scheme and q["count"] == 40
    assert set(q["layers"]) == {HIGH, LOW}
    assert all(sorted(row["name"] for row in q["layers"][e]) == sorted(LINEARS) for e in (HIGH, LOW))
    s = get_scheme(scheme)
    for expert in (HIGH, LOW):  # each expert's own checkpoint weights, quantized by the reference rule
        state = _checkpoint(os.path.join(ckpt, expert + "_model"))
        assert sorted(layers[expert]) == sorted(LINEARS)
        for name, (w, dtype, scale) in layers[expert].items():
            values, want_scale = quantize_reference(state[name + ".weight"].float(), s.weight, s.weight_granularity)
            assert dtype == s.weight.storage_dtype
            assert torch.equal(w, values.to(s.weight.storage_dtype).float()), (expert, name)
            assert torch.equal(scale.flatten(), want_scale.flatten().float()), (expert, name)
    assert not torch.equal(layers[HIGH]["blocks.0.ffn.0"][0], layers[LOW]["blocks.0.ffn.0"][0])
    from wanport.checkpoints.tiny import tiny_dit_config
    from wanport.precision import PRESETS

    quantized = dit_tensors(tiny_dit_config("wan2.2-t2v-a14b"), PRESETS["fp32"], scheme,
                            ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head",
                             "img_emb")).bytes
    assert report["experts"]["expert_gib"] == round(quantized / 2 ** 30, 3)  # what parking weighed
    assert bool(torch.isfinite(parked.video).all())
    # the weights were read after the call: the high-noise expert had been parked (its host
    # copies) and the low-noise one moved onto the device; 8-bit values and scales came through


def test_the_parking_decision_weighs_the_quantized_expert():
    from wanport.config import MODELS, load_recipe
    from wanport.config.validate import plan_run
    from wanport.models.dit import DiTConfig
    from wanport.precision import PRESETS

    plan = plan_run(load_recipe(None, ["model=wan2.2-t2v-a14b", "checkpoint_dir=unused", "quant.dit=fp8_rowwise"])[0])

    cfg = DiTConfig(**MODELS["wan2.2-t2v-a14b"].arch)
    policy = PRESETS["official"]
    full, fp8 = expert_bytes(cfg, policy), expert_bytes(cfg, policy, plan.quant)
    assert fp8 == dit_tensors(cfg, policy, "fp8_rowwise", tuple(plan.quant.keep)).bytes
    assert 0.5 * full < fp8 < 0.6 * full  # the blocks' Linears at 1 byte instead of 2
