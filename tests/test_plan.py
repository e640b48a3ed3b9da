"""``wanport plan``: weight bytes counted exactly, tokens per rank, the stage timeline, layouts
that fit, and the run's refusal (unless --force)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from _plans import plan_for as _plan

from wanport.config import MODELS, build_config
from wanport.config.loader import apply_overrides
from wanport.config.validate import plan_run
from wanport.models.dit import DiTConfig, WanDiT
from wanport.plan import PlanError, predict
from wanport.plan.activations import tokens
from wanport.plan.arch import for_plan
from wanport.plan.memory import Layout
from wanport.plan.suggest import candidates, suggest
from wanport.plan.weights import TensorSet, clip_tensors, dit_tensors, sharded_numel, t5_tensors, vae_tensors
from wanport.precision import PRESETS, policy_from_config

GIB = 2 ** 30
POLICIES = [PRESETS["official"], PRESETS["bf16"], PRESETS["fp32"],
            policy_from_config({"preset": "official", "modulation": "bf16", "norm_params": "fp16", "matmul": "fp16"})]


def _by_dtype(tensors):
    out = Counter()
    for t in tensors:
        out[str(t.dtype).replace("torch.", "")] += t.numel() * t.element_size()
    return dict(out)


def _dit_configs():
    from wanport.checkpoints.tiny import tiny_dit_config

    cfgs = [tiny_dit_config(k) for k in ("wan2.1-t2v", "wan2.1-i2v", "wan2.2-ti2v-5b")]
    for name in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.2-ti2v-5b"):
        p = MODELS[name]
        cfgs.append(DiTConfig(**dict(p.arch, model_type=p.model_type, image_dim=1280 if p.clip else None)))
    return cfgs


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_dit_weight_bytes_equal_meta_model_under_policy(policy):
    for cfg in _dit_configs():
        model = WanDiT.on_meta(cfg, policy)
        model.apply_policy_dtypes()
        assert dit_tensors(cfg, policy).by_dtype() == _by_dtype(model.parameters()), cfg


def test_dit_weight_bytes_equal_the_loaded_checkpoint(tiny_layout):
    from wanport.checkpoints.dit_checkpoint import inspect_dit, load_dit

    for layout, image in (("wan2.1-t2v", False), ("wan2.1-i2v", True)):
        for policy in POLICIES[:2]:
            ckpt = inspect_dit(tiny_layout(layout), policy, with_image=image)
            model = load_dit(ckpt, policy, torch.device("cpu"))
            assert dit_tensors(ckpt.config, policy).by_dtype() == _by_dtype(model.state_dict().values())
    # official: float32 islands exist, and are a small share
    big = dit_tensors(_dit_configs()[4], PRESETS["official"]).by_dtype()
    assert set(big) == {"bfloat16", "float32"} and big["float32"] < 0.05 * big["bfloat16"]


def test_t5_clip_vae_weight_bytes_equal_meta_models_and_loaders(tiny_layout):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, UMT5Config, UMT5EncoderModel

    from wanport.bench.random_weights import UMT5_XXL, VIT_H14
    from wanport.checkpoints.layout import inspect_checkpoint, load_clip, load_vae
    from wanport.models.clip.keymap import hf_clip_config_kwargs
    from wanport.models.t5 import WanTextEncoder, expected_wan_t5_shapes, hf_umt5_config_kwargs, t5_config_from_shapes

    def meta_bytes(build, dtype):
        with torch.device("meta"):
            model = build()
        return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()

    xxl = t5_config_from_shapes(expected_wan_t5_shapes(UMT5_XXL))
    for dt in (torch.bfloat16, torch.float32):
        assert t5_tensors(xxl, dt).bytes == meta_bytes(
            lambda: UMT5EncoderModel(UMT5Config(**hf_umt5_config_kwargs(xxl))), dt)  # tied embedding once
        assert clip_tensors(VIT_H14, dt).bytes == meta_bytes(
            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**hf_clip_config_kwargs(VIT_H14))), dt)
    assert 10.5 * GIB < t5_tensors(xxl, torch.bfloat16).bytes < 10.7 * GIB  # umt5-xxl encoder: 5.7 B params

    policy = POLICIES[3]
    ckpts = inspect_checkpoint(tiny_layout("wan2.1-i2v"), MODELS["wan2.1-i2v-tiny"], policy)
    enc = WanTextEncoder.load(ckpts.directory, dtype=policy.text_encoder)
    assert t5_tensors(ckpts.t5_config, policy.text_encoder).bytes == sum(
        p.numel() * p.element_size() for p in enc.model.parameters())
    # what the loader materialises (CLIPImageEncoder then drops the unused last block)
    from wanport.checkpoints.pth_files import load_pth
    from wanport.models.clip.encoder import build_clip_vision
    from wanport.models.clip.keymap import is_ignored

    state = {k: v for k, v in load_pth(ckpts.clip_path).items() if not is_ignored(k)}
    clip = build_clip_vision(state, ckpts.clip_config, policy.image_encoder, torch.device("cpu"))
    assert clip_tensors(ckpts.clip_config, policy.image_encoder).bytes == sum(
        p.numel() * p.element_size() for p in clip.parameters())
    assert load_clip(ckpts, policy, torch.device("cpu")) is not None
    for kind, layout, name in (("wan2.1", "wan2.1-i2v", "wan2.1-i2v-tiny"),
                               ("wan2.2", "wan2.2-ti2v-5b", "wan2.2-ti2v-5b-tiny")):
        c = inspect_checkpoint(tiny_layout(layout), MODELS[name], policy)
        vae = load_vae(c, policy, torch.device("cpu"))
        assert vae_tensors(kind, c.vae_config, policy.vae).bytes == sum(
            t.numel() * t.element_size() for t in vae.state_dict().values())


def test_fsdp_shard_bytes_exact():
    assert sharded_numel((10, 3), 4) == 3 * 3  # dim 0 padded to 12, 3 rows per rank
    assert sharded_numel((1, 6, 8), 8) == 48  # a one-row tensor: every rank holds a padded row
    assert sharded_numel((), 4) == 1
    ts = TensorSet("t", (("a", (16, 4), torch.bfloat16), ("b", (8,), torch.float32)))
    assert ts.sharded_bytes(4) * 4 == ts.bytes  # divisible: exactly 1/4
    assert ts.sharded_bytes(1) == ts.bytes
    dit = dit_tensors(_dit_configs()[4], PRESETS["official"])
    for world in (2, 4, 8):
        per_rank = dit.sharded_bytes(world)
        expect = sum(-(-s[0] // world) * (torch.Size(s[1:]).numel()) * torch.empty((), dtype=d).element_size()
                     if s else torch.empty((), dtype=d).element_size() for _, s, d in dit.tensors)
        assert per_rank == expect and dit.bytes / world <= per_rank < dit.bytes / world * 1.01


def test_tokens_and_per_rank_split():
    t = tokens((16, 21, 60, 104), (1, 2, 2))  # 14B 480p: 832x480, 81 frames
    assert t.grid == (21, 30, 52) and t.total == t.local == 32760
    t = tokens((16, 21, 60, 104), (1, 2, 2), 8)
    assert t.padded == 32760 and t.local == 4095
    t = tokens((16, 21, 60, 104), (1, 2, 2), 16)  # 32760 / 16 is not whole: padded to 32768
    assert t.padded == 32768 and t.local == 2048
    plan = _plan("wan2.1-t2v-14b", "1280*720")
    arch = for_plan(plan)
    one = predict(plan, arch)
    assert one.tokens.total == 21 * 45 * 80
    sp = predict(plan, arch, Layout(ulysses=4, ring=2))
    assert sp.tokens.local == one.tokens.total // 8
    cfg2 = predict(plan, arch, Layout(cfg=2))  # CFG parallel: one branch per rank, all tokens
    assert cfg2.tokens.local == one.tokens.total
    act = lambda m: m.ranks[0].stages[1].device["forward_activations"]  # noqa: E731
    assert act(cfg2) == act(one) and act(sp) < act(one) / 2


def test_copy_engine_exchange_buffers_are_counted():
    """parallel.ulysses_exchange: copy_engine keeps its send buffers (symmetric memory, which the
    caching allocator does not count): q and k, v and one more set for the outputs, 4 x [S_local,
    dim] in the attention dtype, on the device from the denoise stage on; not with the collective,
    not without overlap, not without Ulysses."""
    plan = _plan("wan2.1-t2v-14b", "832*480")
    arch = for_plan(plan)
    stage = lambda m, name: {s.name: s for s in m.ranks[0].stages}[name].device  # noqa: E731
    ce = predict(plan, arch, Layout(ulysses=2, ulysses_exchange="copy_engine"))
    want = 4 * ce.tokens.local * arch.dit.dim * 2  # bf16 attention (official policy)
    assert stage(ce, "denoise")["ulysses_exchange_buffers"] == want == 4 * 16380 * 5120 * 2
    assert stage(ce, "vae_decode")["ulysses_exchange_buffers"] == want
    for layout in (Layout(ulysses=2), Layout(ulysses=2, ulysses_exchange="copy_engine", ulysses_overlap=False),
                   Layout(cfg=2, ulysses_exchange="copy_engine")):
        assert "ulysses_exchange_buffers" not in stage(predict(plan, arch, layout), "denoise")


def test_stage_timeline_and_what_is_resident():
    plan = _plan("wan2.1-t2v-14b", "832*480")
    arch = for_plan(plan)
    assert arch.source == "preset"
    mem = predict(plan, arch)
    stages = {s.name: s for s in mem.ranks[0].stages}
    assert list(stages) == ["text_encode", "denoise", "vae_decode"]
    assert "t5_weights" in stages["text_encode"].device and "dit_weights" not in stages["text_encode"].device
    assert "t5_weights" not in stages["denoise"].device and "released" in stages["text_encode"].note
    assert "dit_weights" not in stages["vae_decode"].device
    assert stages["denoise"].device["dit_weights"] == dit_tensors(arch.dit, plan.policy).bytes
    assert mem.peak == max(s.peak for s in stages.values()) and mem.ranks[0].peak_stage == "denoise"
    assert mem.required > mem.peak and mem.fits is None  # no device memory given

    host = predict(plan, arch, Layout(t5_cpu=True))
    assert not host.ranks[0].stages[0].device and host.host_peak - mem.host_peak == sum(
        host.ranks[0].host[k] for k in ("t5",))

    fs = predict(plan, arch, Layout(ulysses=4, dit_fsdp=True))
    den = fs.ranks[0].stages[1].device
    assert den["dit_weights"] == dit_tensors(arch.dit, plan.policy).sharded_bytes(4) and den["fsdp_gathered"] > 0
    assert len(fs.ranks) == 2 and fs.ranks[1].stages[-1].device == {"vae_weights": den["vae_weights"]}

    i2v = predict(_plan("wan2.1-i2v-14b-480p"), for_plan(_plan("wan2.1-i2v-14b-480p")))
    assert [s.name for s in i2v.ranks[0].stages] == ["text_encode", "image_encode", "vae_encode", "denoise",
                                                      "vae_decode"]
    ti2v = predict(_plan("wan2.2-ti2v-5b"), for_plan(_plan("wan2.2-ti2v-5b")))
    assert "vae_weights" in ti2v.ranks[0].stages[0].device  # loaded beside the T5

    moe = _plan("wan2.2-t2v-a14b", "832*480")
    a = for_plan(moe)
    assert a.experts == 2
    both = predict(moe, a, Layout(park_inactive_expert=False))
    parked = predict(moe, a, Layout(park_inactive_expert=True))
    one = dit_tensors(a.dit, moe.policy).bytes
    assert both.ranks[0].stages[1].device["dit_weights"] == 2 * one
    assert parked.ranks[0].stages[1].device["dit_weights"] == one and parked.ranks[0].host["parked_experts"] == 2 * one
    auto80 = predict(moe, a, Layout(park_inactive_expert="auto"), device_memory=48 * GIB)
    auto141 = predict(moe, a, Layout(park_inactive_expert="auto"), device_memory=141 * GIB)
    assert auto80.layout.park_inactive_expert is True and auto141.layout.park_inactive_expert is False


def test_vae_work_factor_follows_the_backends_norm():
    import dataclasses

    from wanport.plan import constants as K
    from wanport.plan.check import vae_norm_fused
    from wanport.registry.discovery import discover

    reg = discover()
    assert vae_norm_fused(reg, "cuda", {}) is True  # its own channel_rms_norm (listed even where unavailable)
    assert vae_norm_fused(reg, "cuda", {"channel_rms_norm": "composed"}) is False
    assert vae_norm_fused(reg, "cuda", {"channel_rms_norm": "reference.torch"}) is False
    assert vae_norm_fused(reg, "reference", {}) is False and vae_norm_fused(reg, "ascend", {}) is False
    plan = _plan("wan2.1-t2v-14b", "832*480")
    arch = for_plan(plan)
    plain = {s.name: s for s in predict(plan, arch).ranks[0].stages}["vae_decode"].device
    fused = {s.name: s for s in predict(dataclasses.replace(plan, vae_norm_fused=True), arch).ranks[0].stages}
    fused = fused["vae_decode"].device
    assert fused["vae_cache"] == plain["vae_cache"] and fused["video_out"] == plain["video_out"]
    assert abs(fused["vae_work"] / plain["vae_work"] - K.VAE_WORK_FACTOR_FUSED / K.VAE_WORK_FACTOR) < 1e-6


@pytest.mark.parametrize("devices", [1, 8])
def test_suggestions_for_14b_480p_structure_and_monotonic(devices):
    plan = _plan("wan2.1-t2v-14b", "832*480")
    arch = for_plan(plan)
    fitting = {}
    for mem in (24, 48, 80):
        found = suggest(plan, arch, devices, mem * GIB)
        times = [s.step_s for s in found]
        assert times == sorted(times)
        for s in found:
            assert s.plan.required <= mem * GIB and s.layout.world == devices
            # the override strings give that layout back, and the same prediction
            raw = apply_overrides({"model": plan.preset.name, "checkpoint_dir": "/nonexistent-ckpt", "prompt": "p",
                                   "sample": {"size": "832*480"}}, s.overrides)
            again = plan_run(build_config(raw))
            assert Layout.from_plan(again) == s.layout
            assert predict(again, arch, device_memory=mem * GIB).peak == s.plan.peak
        fitting[mem] = {c for c in candidates(plan, arch, devices)
                        if predict(plan, arch, c, device_memory=mem * GIB).fits}
    assert fitting[24] <= fitting[48] <= fitting[80]
    if devices == 1:
        # 27 GiB of DiT weights: at 24 GiB only the layouts that stream the blocks from host memory
        assert fitting[24] and all(c.offload_dit == "block" for c in fitting[24])
        assert any(c.offload_dit == "none" for c in fitting[48])
    else:
        assert fitting[24]
        def denoise(layout):
            return predict(plan, arch, layout).ranks[0].stages[1].peak

        # 8 sequence ranks hold fewer tokens than 4 sequence ranks x 2 CFG branches
        assert denoise(Layout(ulysses=8, dit_fsdp=True)) < denoise(Layout(cfg=2, ulysses=4, dit_fsdp=True))
        assert denoise(Layout(ulysses=8, dit_fsdp=True)) < denoise(Layout(ulysses=8))


def test_cli_plan_json_and_suggestions(tmp_path):
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "wanport", "plan", "model=wan2.1-t2v-14b", "checkpoint_dir=/nonexistent-ckpt",
           "sample.size=832*480", "sample.frame_num=81", "sample.steps=50", "--device-memory", "24GiB",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # does not fit
    assert "DOES NOT FIT" in proc.stdout and "layouts that fit on 1 device" in proc.stdout  # streaming blocks
    data = json.loads(out.read_text())
    assert data["plan"]["fits"] is False and data["plan"]["device_memory_bytes"] == 24 * GIB
    assert data["suggestions"]["devices"] == 1 and data["suggestions"]["layouts"]
    assert all(s["required_bytes"] <= 24 * GIB and "offload.dit=block" in s["overrides"]
               for s in data["suggestions"]["layouts"])


def test_tiny_recipes_never_refused_on_the_reference_host(tiny_layout):
    from wanport.checkpoints.layout import inspect_checkpoint
    from wanport.config.models import TINY_LAYOUTS
    from wanport.plan.check import refuse_if_unfit
    from wanport.reference.runtime import HostRuntime

    rt = HostRuntime()
    for layout, name in TINY_LAYOUTS.items():
        plan = _plan(name, checkpoint_dir=tiny_layout(layout))
        mem = refuse_if_unfit(plan, inspect_checkpoint(plan.checkpoint_dir, plan.preset, plan.policy), rt)
        assert mem.fits is True and mem.device_is_host and mem.device_memory == rt.total_memory_bytes()
    # four processes on one host (the parallel tests' largest layout): all of them share the RAM
    from wanport.config.schema import ParallelConfig

    plan = _plan("wan2.1-t2v-tiny", checkpoint_dir=tiny_layout("wan2.1-t2v"),
                 parallel={"cfg": 2, "ulysses": 2, "vae": True})
    mem = refuse_if_unfit(plan, inspect_checkpoint(plan.checkpoint_dir, plan.preset, plan.policy), rt)
    assert mem.layout.world == 4 and mem.fits is True
    assert mem.required >= 4 * mem.peak and ParallelConfig().cfg == 1


def test_run_refuses_on_a_tiny_device_unless_forced(tiny_ckpt, tmp_path, monkeypatch, capsys):
    from wanport import cli
    from wanport.reference.runtime import HostRuntime

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(HostRuntime, "total_memory_bytes", lambda self: 64 * 2 ** 20)  # a 64 MiB "device"
    args = ["run", "--no-progress", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % (tmp_path / "out"),
            "sample.steps=2", "sample.size=64*48", "sample.frame_num=5", "output.name=clip"]
    assert cli.main(args) == PlanError.exit_code
    err = capsys.readouterr().err
    assert err.count("wanport: error:") == 1 and "predicted not to fit" in err and "--force" in err
    assert "no layout" in err or "layouts that fit" in err
    assert not (tmp_path / "out" / "clip.mp4").exists()

    assert cli.main(args + ["--force"]) == 0
    report = json.loads((tmp_path / "out" / "clip.json").read_text())
    assert report["peak_memory"]["predicted"] is None  # the check was skipped
    assert os.path.exists(tmp_path / "out" / "clip.mp4")


def test_run_report_carries_the_prediction(tiny_ckpt, tmp_path, monkeypatch):
    from wanport import cli

    monkeypatch.chdir(tmp_path)
    args = ["run", "--no-progress", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % (tmp_path / "out"),
            "sample.steps=2", "sample.size=64*48", "sample.frame_num=5", "output.name=clip"]
    assert cli.main(args) == 0
    pred = json.loads((tmp_path / "out" / "clip.json").read_text())["peak_memory"]["predicted"]
    assert pred["fits"] is True and pred["peak_bytes"] > 0
    assert set(pred["stages"]) == {"text_encode", "denoise", "vae_decode"}


def test_plan_of_an_image_recipe_uses_the_image_size(input_image, tmp_path):
    from wanport.pipeline.images import load_image, output_size
    from wanport.plan.cli import parse_bytes, run_plan

    assert parse_bytes("24GiB") == 24 * GIB and parse_bytes("80GB") == 80 * 10 ** 9 and parse_bytes("48G") == 48 * GIB
    with pytest.raises(Exception, match="24GiB"):
        parse_bytes("lots")
    raw = {"model": "wan2.1-i2v-14b-480p", "checkpoint_dir": "/nonexistent-ckpt", "prompt": "p", "task": "i2v",
           "image": input_image}
    lines = []
    out = tmp_path / "plan.json"
    assert run_plan(build_config(raw), "test", "80GiB", None, str(out), out=lines.append) == 0
    preset = MODELS["wan2.1-i2v-14b-480p"]
    want = output_size(preset, load_image(input_image, min_side=preset.spatial_multiple), 832 * 480)
    data = json.loads(out.read_text())
    assert tuple(data["plan"]["size"]) == tuple(want) and data["plan"]["fits"] is True
    assert [s["name"] for s in data["plan"]["ranks"][0]["stages"]][:3] == ["text_encode", "image_encode", "vae_encode"]
    assert "fits" in "\n".join(lines)
