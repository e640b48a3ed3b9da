"""The whole tiny pipeline with the distilled sampler and LoRAs (one merged, one unmerged): the report,
one forward per step without CFG, and the same run on the emulated torch_npu (backend ascend) against
the reference backend."""

from __future__ import annotations

import os

import pytest

import wanport_ascend.plugin as plugin
from npu_emulation import installed
from wanport.checkpoints.tiny import tiny_dit_config
from wanport.lora.tiny import write_tiny_loras
from wanport.pipeline.sampling import LoopObserver

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
RECIPE = os.path.join(REPO, "recipes", "tiny-t2v-distill-lora.yaml")


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    return write_tiny_loras(str(tmp_path_factory.mktemp("loras")), tiny_dit_config("wan2.1-t2v"), seed=3)


class Forwards(LoopObserver):
    def __init__(self):
        self.calls = []

    def forward(self, index, branch):
        self.calls.append((index, branch))


def _run(ckpt, out, loras, backend, extra=(), observer=None):
    from wanport.config import load_recipe
    from wanport.pipeline.run import run

    entries = "[{path: %s, strength: 0.8}, {path: %s, strength: 0.5, merge: false}]" % (
        loras["lora-official"], loras["lora-diffusers"])
    cfg, raw = load_recipe(RECIPE, ["checkpoint_dir=%s" % ckpt, "output.dir=%s" % out, "sample.size=32*32",
                                    "sample.frame_num=5", "backend=%s" % backend, "output.name=%s" % backend,
                                    "lora=%s" % entries] + list(extra))
    return run(cfg, raw, progress=False, observer=observer)


@pytest.fixture
def decoded(monkeypatch):
    import wanport.io.video as video_io

    videos = []
    real = video_io.write_mp4
    monkeypatch.setattr(video_io, "write_mp4",
                        lambda video, path, fps: (videos.append(video.clone()), real(video, path, fps)))
    return videos


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(plugin.ENV_DEFAULTS) + ["LOCAL_RANK", "ASCEND_RT_VISIBLE_DEVICES"]:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _check_report(report, obs):
    s = report["sampling"]
    assert s["solver"] == "distill" and s["steps"] == 4
    assert s["timesteps"] == pytest.approx([1000, 937.5, 833.3333, 625.0], abs=1e-3)
    assert report["negative_prompt"] is None  # guide 1.0: no unconditional prompt encoded ...
    assert obs.calls == [(i, "cond") for i in range(4)]  # ... and no unconditional forward
    rows = {r["name"]: r for r in report["lora"]}
    assert set(rows) == {"lora-official", "lora-diffusers"}
    assert rows["lora-official"]["format"] == "official" and rows["lora-official"]["merged"] is True
    assert rows["lora-diffusers"]["format"] == "diffusers" and rows["lora-diffusers"]["merged"] is False
    assert rows["lora-official"]["strength"] == 0.8 and rows["lora-diffusers"]["strength"] == 0.5
    for r in rows.values():
        assert r["keys_applied"] == r["keys_in_file"] > 0 and r["unmatched_keys"] == [] and r["rank"] == 4
    assert os.path.getsize(report["output"]["video"]) > 0


def test_distilled_lora_run_on_the_emulated_npu(tiny_ckpt, tmp_path, loras, clean_env, decoded):
    """backend ascend (emulated torch_npu) vs reference, both LoRA modes and the distilled sampler;
    the bound is the reference backend's own spread (math vs SDPA attention), as for the plain run."""
    obs = Forwards()
    _check_report(_run(tiny_ckpt, tmp_path, loras, "reference", observer=obs), obs)
    _run(tiny_ckpt, tmp_path, loras, "reference", ["ops={attention: sdpa}", "output.name=sdpa"])
    with installed("v7"):
        report = _run(tiny_ckpt, tmp_path, loras, "ascend")
    assert report["backend"]["name"] == "ascend" and report["ops"]["self_attention"]["impl"].startswith("ascend.")
    assert [r["merged"] for r in report["lora"]] == [True, False]
    ref, sdpa, npu = decoded
    floor = _rel(sdpa, ref)
    assert 0 < floor < 1e-2
    assert _rel(npu, ref) < 2 * floor and (npu - ref).abs().max().item() < 0.05


def test_pipeline_changes_unmerged_lora_strength_per_call(tiny_ckpt, tmp_path, loras):
    """A resident pipeline runs a call at another strength of its unmerged LoRA: that call equals a
    pipeline built with that strength, the next call is back at the recipe's strength, and a
    merged or unknown LoRA is refused before any compute."""
    import torch

    from wanport import Pipeline
    from wanport.errors import ConfigError

    def build(strength):
        entries = "[{path: %s, strength: 0.8}, {path: %s, strength: %s, merge: false}]" % (
            loras["lora-official"], loras["lora-diffusers"], strength)
        return Pipeline.from_recipe(RECIPE, overrides=["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path,
                                                       "sample.size=32*32", "sample.frame_num=5", "lora=%s" % entries,
                                                       "sample.denoising_step_list=[1000, 500]"], progress=False)

    with build(0.5) as pipe:
        base = pipe.generate(video_tensor=True)
        strong = pipe.generate(video_tensor=True, lora_strength={"lora-diffusers": 1.5})
        again = pipe.generate(video_tensor=True)
        for bad in ({"lora-official": 0.3}, {"nope": 1.0}, {"lora-diffusers": float("nan")}):
            with pytest.raises(ConfigError, match="lora_strength"):
                pipe.generate(lora_strength=bad)
    with build(1.5) as other:
        expected = other.generate(video_tensor=True)
    assert torch.equal(again.video, base.video)  # the recipe's strength came back
    assert not torch.equal(strong.video, base.video)
    assert torch.equal(strong.video, expected.video)
    rows = {r["name"]: r for r in strong.report["lora"]}
    assert rows["lora-diffusers"]["strength_this_call"] == 1.5 and rows["lora-diffusers"]["strength"] == 0.5
