"""Every family end to end on its tiny checkpoint, through the real command line (in process):
Wan2.1 I2V (CLIP), Wan2.2 T2V-A14B and I2V-A14B (two experts), Wan2.2 TI2V-5B (text and image
mode). Each writes a video with the right frame count, size and fps, and a report."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from wanport import cli
from wanport.config import MODELS, load_recipe
from wanport.config.validate import plan_run
from wanport.io.video import read_mp4
from wanport.pipeline.images import load_image, max_area_size

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
FRAMES, STEPS = 9, 3


def _run(capsys, recipe, ckpt, out, name, *extra):
    argv = ["run", os.path.join(REPO, "recipes", recipe), "--no-progress", "checkpoint_dir=%s" % ckpt,
            "output.dir=%s" % out, "output.name=%s" % name, "sample.frame_num=%d" % FRAMES,
            "sample.steps=%d" % STEPS] + list(extra)
    start = time.perf_counter()
    code = cli.main(argv)
    wall = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads(open(os.path.join(out, name + ".json")).read())
    frames = read_mp4(os.path.join(out, name + ".mp4"))
    print("%s: %.1f s wall (%s)" % (name, wall, ", ".join("%s %.2f" % (k, v) for k, v in report["stages"].items()
                                                         if k.endswith("_s") and k != "steps_s")))
    return report, frames


def _fps(path):
    import imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return reader.get_meta_data()["fps"]
    finally:
        reader.close()


def test_wan21_i2v(tiny_layout, input_image, tmp_path, capsys):
    out = str(tmp_path)
    report, frames = _run(capsys, "tiny-wan2.1-i2v.yaml", tiny_layout("wan2.1-i2v"), out, "i2v21",
                          "image=%s" % input_image, "sample.size=64*64")
    w, h = max_area_size(120, 80, 64 * 64)
    assert frames.shape == (FRAMES, h, w, 3) and frames.std() > 1
    assert report["size"] == {"width": w, "height": h, "frames": FRAMES, "fps": 16}
    assert _fps(report["output"]["video"]) == 16
    assert report["image"]["mode"] == "RGBA" and report["image"]["output"] == {"width": w, "height": h}
    assert report["conditioning"]["clip_tokens"] == [257, 1280] and report["conditioning"]["y_channels"] == 20
    assert report["negative_prompt"].startswith("镜头晃动，")  # the Wan2.1 I2V default
    assert {"image_encode_s", "vae_encode_s", "denoise_s", "vae_decode_s"} <= set(report["stages"])
    assert "experts" not in report


def test_wan22_t2v_a14b_switches_and_parks(tiny_layout, tmp_path, capsys):
    out = str(tmp_path)
    report, frames = _run(capsys, "tiny-wan2.2-t2v-a14b.yaml", tiny_layout("wan2.2-t2v-a14b"), out, "t2v22",
                          "sample.size=64*48", "sample.steps=6", "offload.park_inactive_expert=true")
    assert frames.shape == (FRAMES, 48, 64, 3)
    ex = report["experts"]
    ts = report["sampling"]["timesteps"]
    assert len(ts) == 6 and ex["per_step"] == ["high_noise" if t >= 875 else "low_noise" for t in ts]
    assert ex["steps"]["high_noise"] >= 1 and ex["steps"]["low_noise"] >= 1  # both experts ran
    assert ex["guide_scale_per_step"] == [4.0 if n == "high_noise" else 3.0 for n in ex["per_step"]]
    assert ex["park_inactive_expert"] is True
    switch_at = ex["per_step"].index("low_noise")
    assert [(m["parked"], m["activated"], m["step"]) for m in ex["moves"]] == [
        (None, "high_noise", 0), ("high_noise", "low_noise", switch_at)]
    assert report["size"]["fps"] == 16


def test_wan22_i2v_a14b(tiny_layout, input_image, tmp_path, capsys):
    out = str(tmp_path)
    report, frames = _run(capsys, "tiny-wan2.2-i2v-a14b.yaml", tiny_layout("wan2.2-i2v-a14b"), out, "i2v22",
                          "image=%s" % input_image, "sample.size=64*64")
    w, h = max_area_size(120, 80, 64 * 64)
    assert frames.shape == (FRAMES, h, w, 3)
    assert report["conditioning"]["clip_tokens"] is None  # Wan2.2 I2V: no CLIP
    assert report["experts"]["guide_scale"] == {"low_noise": 3.5, "high_noise": 3.5}
    assert report["experts"]["park_inactive_expert"] is False  # auto on the host: nothing to park
    assert not report["negative_prompt"].startswith("镜头晃动")


def test_wan22_ti2v_image_mode(tiny_layout, input_image, tmp_path, capsys, monkeypatch):
    import wanport.pipeline.sampling as sampling

    seen = {}
    real = sampling.denoise_loop

    def spy(*args, **kwargs):
        seen["result"] = real(*args, **kwargs)
        seen["kwargs"] = kwargs
        return seen["result"]

    monkeypatch.setattr(sampling, "denoise_loop", spy)
    out = str(tmp_path)
    report, frames = _run(capsys, "tiny-wan2.2-ti2v-5b.yaml", tiny_layout("wan2.2-ti2v-5b"), out, "ti2v-img",
                          "image=%s" % input_image, "sample.size=64*64")
    assert frames.shape == (FRAMES, 64, 64, 3)  # best_output_size of 120x80 in 64*64 on multiples of 32
    assert report["size"]["fps"] == 24 and _fps(report["output"]["video"]) == 24
    assert report["mode"] == "image-to-video"
    latent = seen["result"][0]
    fix = seen["kwargs"]["after_step"]
    assert latent.shape == (1, 48, 3, 4, 4)
    # the first latent frame is the image's latent after the last step (replaced after every step)
    assert torch.equal(latent[:, :, 0], fix(torch.randn_like(latent))[:, :, 0])
    tt = seen["kwargs"]["timestep_fn"](torch.tensor(700))
    assert tt.shape == (1, 3 * 2 * 2) and tt[0, :4].eq(0).all() and tt[0, 4:].eq(700).all()  # per token
    assert report["ops"]["layer_norm_modulate"]["impl"].startswith("reference")


def test_wan22_ti2v_text_mode(tiny_layout, tmp_path, capsys):
    out = str(tmp_path)
    report, frames = _run(capsys, "tiny-wan2.2-ti2v-5b.yaml", tiny_layout("wan2.2-ti2v-5b"), out, "ti2v-txt",
                          "image=", "sample.size=96*64")
    assert frames.shape == (FRAMES, 64, 96, 3)
    assert report["mode"] == "text-to-video" and report["image"] is None
    assert report["size"] == {"width": 96, "height": 64, "frames": FRAMES, "fps": 24}


def test_check_command_on_new_layouts(tiny_layout, input_image, capsys):
    for recipe, layout, extra in (("tiny-wan2.1-i2v.yaml", "wan2.1-i2v", ["image=%s" % input_image]),
                                  ("tiny-wan2.2-t2v-a14b.yaml", "wan2.2-t2v-a14b", [])):
        code = cli.main(["check", os.path.join(REPO, "recipes", recipe), "checkpoint_dir=%s" % tiny_layout(layout)]
                        + extra)
        got = capsys.readouterr()
        assert code == 0, got.err
        assert got.out.startswith("ok: ")
    assert "experts high_noise+low_noise (boundary 0.875)" in got.out


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(REPO, "recipes")) if n.endswith(".yaml")))
def test_recipe_images_exist_and_defaults(name):
    cfg, _ = load_recipe(os.path.join(REPO, "recipes", name))
    plan = plan_run(cfg, name)
    if plan.image_path:
        assert load_image(os.path.join(REPO, plan.image_path)).width > 0
    preset = MODELS[cfg.model]
    # the field recipes state the official defaults (the step-distilled ones their own: test_lora_cli.py)
    if preset.arch is not None and plan.solver != "distill":
        assert (plan.steps, plan.frame_num, plan.fps) == (preset.steps, preset.frame_num, preset.fps)
        assert plan.shift == preset.default_shift(plan.width, plan.height)
        assert plan.guide_scale == preset.guide_scale
    if name == "wan2.2-i2v-a14b.yaml":  # the field's run
        assert (plan.width, plan.height, plan.frame_num, plan.num_steps) == (1280, 720, 81, 40)


def test_make_tiny_layouts(tiny_layout):
    from wanport.checkpoints.tiny import is_tiny_checkpoint

    a14b = tiny_layout("wan2.2-i2v-a14b")
    assert is_tiny_checkpoint(a14b) == "wan2.2-i2v-a14b"
    for sub in ("high_noise_model", "low_noise_model"):
        names = set(os.listdir(os.path.join(a14b, sub)))
        assert {"config.json", "diffusion_pytorch_model.safetensors.index.json"} <= names
        assert json.load(open(os.path.join(a14b, sub, "config.json")))["model_type"] == "i2v"
    assert not os.path.exists(os.path.join(a14b, "config.json"))
    i2v = tiny_layout("wan2.1-i2v")
    assert os.path.isfile(os.path.join(i2v, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"))
    ti2v = tiny_layout("wan2.2-ti2v-5b")
    assert os.path.isfile(os.path.join(ti2v, "Wan2.2_VAE.pth")) and not os.path.exists(os.path.join(ti2v, "Wan2.1_VAE.pth"))
    cfg = json.load(open(os.path.join(ti2v, "config.json")))
    assert (cfg["model_type"], cfg["in_dim"], cfg["out_dim"], cfg["dim"] // cfg["num_heads"]) == ("ti2v", 48, 48, 128)
