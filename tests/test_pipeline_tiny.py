"""make-tiny -> load -> run, end to end on the CPU, through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from wanport.checkpoints.tiny import is_tiny_checkpoint, make_tiny
from wanport.config import TINY_RECIPE, load_recipe, read_yaml
from wanport.errors import ConfigError
from wanport.io.video import read_mp4
from wanport.pipeline.noise import initial_noise

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def test_tiny_recipe_file_equals_embedded_default():
    assert read_yaml(os.path.join(REPO, "recipes", "tiny-t2v.yaml")) == TINY_RECIPE


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "recipes"))))
def test_every_recipe_validates(name):
    from wanport.config.validate import plan_run

    cfg, _ = load_recipe(os.path.join(REPO, "recipes", name))
    plan = plan_run(cfg, name)
    assert plan.frame_num % 4 == 1 and plan.num_steps > 0


def test_run_writes_video_and_complete_report(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wanport", "run", "--no-progress",
           "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % out, "sample.steps=3",
           "sample.size=64*48", "sample.frame_num=9", "output.name=clip"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    frames = read_mp4(str(out / "clip.mp4"))
    assert frames.shape == (9, 48, 64, 3)
    assert frames.std() > 1  # not a blank video
    report = json.loads((out / "clip.json").read_text())
    stages = report["stages"]
    for key in ("load_s", "text_encode_s", "denoise_s", "vae_decode_s", "write_s", "total_s"):
        assert stages[key] >= 0, key
    assert len(stages["steps_s"]) == 3 and all(s > 0 for s in stages["steps_s"])
    assert report["backend"]["name"] == "reference"
    assert set(report["ops"]) == {"self_attention", "cross_attention", "rotary", "rms_norm", "layer_norm",
                                  "layer_norm_modulate", "add_layer_norm_modulate", "qk_norm_rope", "gated_residual",
                                  "linear_gelu", "channel_rms_norm"}
    assert report["ops"]["qk_norm_rope"]["impl"] == "composed(reference.torch, reference.real_tables)"
    # the VAE: the reference norm, in the host's layout (NCDHW)
    assert report["vae"] == {"channel_rms_norm": "reference.torch", "memory_format": "contiguous_format"}
    assert report["ops"]["self_attention"]["impl"] == "reference.math"
    from wanport.schedulers import make_scheduler

    assert report["sampling"]["timesteps"] == [int(t) for t in make_scheduler("unipc", steps=3, shift=5.0).timesteps]
    assert report["seed"] == 42 and report["noise"] == "cpu"
    assert report["peak_memory"]["bytes"] > 0
    assert report["versions"]["torch"] == torch.__version__
    assert len(report["recipe_hash"]) == 64
    from wanport.reference.runtime import HostRuntime

    native, why = HostRuntime().native_bf16_matmul()  # precision: auto asks the host CPU
    assert report["precision"]["requested"] == "auto" and report["precision"]["why"].startswith(why)
    assert report["precision"]["name"] == report["precision"]["resolved"] == ("official" if native else "fp32")
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp files left behind


def test_same_seed_same_latents_and_guidance_one_skips_uncond(tiny_ckpt, tmp_path, monkeypatch):
    """One seed gives one video: two runs agree exactly; guide_scale 1 runs one forward per step."""
    import wanport.pipeline.sampling as sampling
    from wanport.config import load_recipe
    from wanport.pipeline.run import run

    decoded = []
    calls = {"n": 0}
    real_loop = sampling.denoise_loop

    class Counting:  # every model call of the loop counted
        def __init__(self, experts):
            self.experts = experts

        def select(self, t):
            e = self.experts.select(t)

            def counted(*args, **kwargs):
                calls["n"] += 1
                return e.model(*args, **kwargs)
            return sampling.Expert(e.name, counted, e.guide_scale)

    monkeypatch.setattr(sampling, "denoise_loop", lambda experts, *a, **k: real_loop(Counting(experts), *a, **k))
    import wanport.io.video as video_io

    real_write = video_io.write_mp4
    monkeypatch.setattr(video_io, "write_mp4", lambda video, path, fps: (decoded.append(video.clone()),
                                                                      real_write(video, path, fps)))
    base = ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path, "sample.steps=2",
            "sample.size=32*32", "sample.frame_num=5"]
    for extra in ([], [], ["sample.guide_scale=1.0"]):
        cfg, raw = load_recipe(None, base + extra)
        run(cfg, raw, progress=False)
    assert torch.equal(decoded[0], decoded[1])
    assert not torch.equal(decoded[0], decoded[2])
    assert calls["n"] == 2 * 2 + 2 * 2 + 2  # CFG: two forwards per step; guide 1: one


def test_noise_is_host_drawn_and_seeded():
    a = initial_noise((16, 2, 4, 4), 7, "cpu", torch.device("cpu"))
    b = initial_noise((16, 2, 4, 4), 7, "cpu", torch.device("cpu"))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(a, b) and torch.equal(a, torch.randn(16, 2, 4, 4, generator=g))
    assert a.dtype == torch.float32
    c = initial_noise((16, 2, 4, 4), 7, "device", torch.device("cpu"))
    assert torch.equal(a, c)  # on the CPU the two modes coincide
    with pytest.raises(ValueError):
        initial_noise((1,), 0, "gpu", torch.device("cpu"))


def test_make_tiny_layout_and_guards(tmp_path):
    d = str(tmp_path / "t")
    assert make_tiny(d, "wan2.1-t2v")
    names = set(os.listdir(d))
    assert {"config.json", "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors", "Wan2.1_VAE.pth",
            "models_t5_umt5-xxl-enc-bf16.pth", "google"} <= names
    assert os.path.isdir(os.path.join(d, "google", "umt5-xxl"))
    assert is_tiny_checkpoint(d) == "wan2.1-t2v"
    assert make_tiny(d, "wan2.1-t2v", if_missing=True) is False
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["dim"] // cfg["num_heads"] == 128  # head dim kept: real rotary tables
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "weights.bin").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        make_tiny(str(busy), "wan2.1-t2v")
    with pytest.raises(ConfigError, match="unknown layout"):
        make_tiny(str(tmp_path / "u"), "wan9-t2v")


def test_cli_lists_backends_and_models():
    proc = subprocess.run([sys.executable, "-m", "wanport", "backends"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "reference  [available]" in proc.stdout and "cuda" in proc.stdout and "ascend" in proc.stdout
    assert "attention" in proc.stdout and "math" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "wanport", "models"], capture_output=True, text=True, timeout=120)
    assert "wan2.1-t2v-14b" in proc.stdout


def test_compile_switch_runs_compiled_blocks_and_agrees(tiny_ckpt, tmp_path, monkeypatch):
    """`compile: true` compiles each DiT block in place (torch.compile) and the video agrees with the
    eager run to float32 rounding (fp32 policy)."""
    import wanport.io.video as video_io
    import wanport.pipeline.compile as comp
    from wanport.config import load_recipe
    from wanport.pipeline.run import run

    videos, compiled = [], []
    real_write, real_compile = video_io.write_mp4, comp.compile_blocks
    monkeypatch.setattr(video_io, "write_mp4", lambda v, p, fps: (videos.append(v.clone()), real_write(v, p, fps)))
    monkeypatch.setattr(comp, "compile_blocks", lambda m: (compiled.append(len(m.blocks)), real_compile(m))[1])
    base = ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path, "sample.steps=2", "sample.size=32*32",
            "sample.frame_num=5", "precision=fp32"]
    for extra in ([], ["compile=true"]):
        cfg, raw = load_recipe(None, base + extra)
        run(cfg, raw, progress=False)
    assert compiled == [2]
    rel = ((videos[1] - videos[0]).norm() / videos[0].norm()).item()
    assert rel < 1e-4
