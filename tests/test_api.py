"""``wanport.Pipeline``: load once, generate many.

* ``generate`` gives bit-for-bit the video of ``wanport run`` for the same recipe and seed, for
  every family;
* several calls in one process give the videos of separate runs, and host memory does not grow;
* a bad call raises the documented error before any compute and the next good call works;
* ``close`` / the context manager end the pipeline; ``import wanport`` stays light.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from wanport import cli
from wanport.errors import ConfigError, InputError, ReloadRequired

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SMALL = {"frames": 5, "steps": 2}


@pytest.fixture
def cli_videos(monkeypatch):
    """The decoded video tensors that `wanport run` hands to the mp4 writer, in order."""
    import wanport.io.video as video_io

    got = []
    real = video_io.write_mp4
    monkeypatch.setattr(video_io, "write_mp4", lambda v, p, fps: (got.append(v.clone()), real(v, p, fps)))
    return got


def _cli_run(recipe, tmp_path, name, *overrides):
    argv = ["run"] + ([os.path.join(REPO, "recipes", recipe)] if recipe else []) + [
        "--no-progress", "output.dir=%s" % tmp_path, "output.name=%s" % name] + list(overrides)
    assert cli.main(argv) == 0
    return json.loads((tmp_path / (name + ".json")).read_text())


FAMILIES = [
    ("tiny-t2v.yaml", "wan2.1-t2v", {"size": "32*32"}),
    ("tiny-wan2.1-i2v.yaml", "wan2.1-i2v", {"size": "32*32", "image": True}),
    ("tiny-wan2.2-t2v-a14b.yaml", "wan2.2-t2v-a14b", {"size": "32*32", "steps": 4}),
    ("tiny-wan2.2-i2v-a14b.yaml", "wan2.2-i2v-a14b", {"size": "32*32", "image": True}),
    ("tiny-wan2.2-ti2v-5b.yaml", "wan2.2-ti2v-5b", {"size": "64*64", "image": True}),
]


@pytest.mark.parametrize("recipe,layout,values", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_generate_equals_wanport_run_bit_for_bit(recipe, layout, values, tiny_layout, input_image, tmp_path,
                                                 cli_videos):
    from wanport import Pipeline

    ckpt = tiny_layout(layout)
    values = dict(SMALL, **values)
    if values.get("image") is True:
        values["image"] = input_image
    overrides = ["checkpoint_dir=%s" % ckpt, "sample.size=%s" % values["size"], "sample.frame_num=%d" % values["frames"],
                 "sample.steps=%d" % values["steps"], "sample.seed=7"]
    if "image" in values:
        overrides.append("image=%s" % values["image"])
    report = _cli_run(recipe, tmp_path, "cli", *overrides)

    with Pipeline.from_recipe(os.path.join(REPO, "recipes", recipe), checkpoint_dir=ckpt, progress=False,
                              image=values.get("image"), overrides=["output.dir=%s" % tmp_path]) as pipe:
        result = pipe.generate(seed=7, video_tensor=True, **values)
        if layout == "wan2.2-ti2v-5b":  # the same pipeline in text mode: the op table without per-token modulation
            text = pipe.generate(seed=7, image="", size="64*32", frames=5, steps=1)
            assert text.report["mode"] == "text-to-video" and text.frames.shape == (5, 32, 64, 3)
    assert torch.equal(result.video, cli_videos[0])
    from wanport.io.video import to_uint8_frames

    assert np.array_equal(result.frames, to_uint8_frames(cli_videos[0]))
    f, h, w = values["frames"], report["size"]["height"], report["size"]["width"]
    assert result.frames.shape == (f, h, w, 3) and result.frames.dtype == np.uint8
    # the same report, less what differs between two runs (times, memory, where it was written)
    for key in ("model", "task", "prompt", "negative_prompt", "seed", "size", "sampling", "ops", "precision",
                "image", "conditioning", "mode"):
        assert result.report.get(key) == report.get(key), key
    if "experts" in report:
        assert result.report["experts"]["per_step"] == report["experts"]["per_step"]
    assert result.report["pipeline"]["resident"] is True and report["pipeline"]["resident"] is False


def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux) for the resident set size")
def test_three_calls_equal_three_runs_and_memory_stays_flat(tiny_ckpt, tmp_path, cli_videos):
    from wanport import Pipeline

    calls = [dict(prompt="a red panda on a skateboard", seed=1),
             dict(prompt="rain over a neon city at night", seed=2, guide_scale=3.0),
             dict(prompt="a lighthouse in a storm", seed=3, negative_prompt="blurry")]
    common = dict(size=(32, 32), frames=5, steps=2)
    rss = []
    results = []
    with Pipeline.from_recipe(None, checkpoint_dir=tiny_ckpt, progress=False,
                              overrides=["output.dir=%s" % tmp_path]) as pipe:
        for values in calls:
            results.append(pipe.generate(video_tensor=True, **common, **values))
            rss.append(_rss())
        assert pipe.calls == 3
    for i, values in enumerate(calls):
        over = ["checkpoint_dir=%s" % tiny_ckpt, "sample.size=32*32", "sample.frame_num=5", "sample.steps=2",
                "prompt=%s" % values["prompt"], "sample.seed=%d" % values["seed"]]
        if "guide_scale" in values:
            over.append("sample.guide_scale=%s" % values["guide_scale"])
        if "negative_prompt" in values:
            over.append("negative_prompt=%s" % values["negative_prompt"])
        _cli_run(None, tmp_path, "run%d" % i, *over)
        assert torch.equal(results[i].video, cli_videos[i]), i
    assert not torch.equal(results[0].video, results[1].video)
    # host memory after the third call within 5 % of after the first (the models are loaded once)
    assert abs(rss[2] - rss[0]) <= 0.05 * rss[0], rss


def test_bad_calls_raise_before_compute_and_the_pipeline_stays_usable(tiny_layout, input_image, tmp_path,
                                                                      monkeypatch):
    import wanport.pipeline.sampling as sampling
    from wanport import Pipeline

    loops = []
    real = sampling.denoise_loop
    monkeypatch.setattr(sampling, "denoise_loop", lambda *a, **k: (loops.append(1), real(*a, **k))[1])
    pipe = Pipeline.from_recipe(os.path.join(REPO, "recipes", "tiny-wan2.1-i2v.yaml"),
                                checkpoint_dir=tiny_layout("wan2.1-i2v"), image=input_image, size="32*32",
                                progress=False, overrides=["output.dir=%s" % tmp_path], **SMALL)
    with pipe:
        first = pipe.generate(seed=5, video_tensor=True)
        with pytest.raises(ConfigError, match="sample.guide_scale: must be a finite number") as exc:
            pipe.generate(guide_scale=float("nan"))
        assert exc.value.exit_code == 2
        with pytest.raises(ConfigError, match="needs an input image"):
            pipe.generate(image="")
        with pytest.raises(InputError, match="file not found") as exc:
            pipe.generate(image=str(tmp_path / "missing.png"))
        assert exc.value.exit_code == 5
        with pytest.raises(ReloadRequired, match=r"precision cannot change between calls \(the weights") as exc:
            pipe.generate(precision="bf16")
        assert isinstance(exc.value, ConfigError) and exc.value.exit_code == 2
        with pytest.raises(ReloadRequired, match="parallel"):
            pipe.generate(parallel={"cfg": 2})
        with pytest.raises(ConfigError, match=r"unknown argument 'sed' \(did you mean 'seed'\?\)"):
            pipe.generate(sed=3)
        with pytest.raises(ConfigError, match="2 problems"):  # every problem of a call at once
            pipe.generate(steps=0, frames=6)
        assert len(loops) == 1  # none of the bad calls reached the sampling loop
        again = pipe.generate(seed=5, video_tensor=True)
        assert torch.equal(again.video, first.video)
    with pytest.raises(ConfigError, match="closed"):
        pipe.generate()
    pipe.close()  # idempotent


def test_from_recipe_reports_every_problem_before_loading(tiny_ckpt, tmp_path, monkeypatch):
    from wanport import Pipeline
    from wanport.pipeline import weights

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(weights.CheckpointWeights, "load_dit", staticmethod(no_load))
    with pytest.raises(ConfigError, match="3 problems") as exc:
        Pipeline.from_recipe(None, checkpoint_dir=tiny_ckpt, frames=6, guide_scale=-1.0,
                             sample={"shift": -2.0}, overrides=["output.dir=%s" % tmp_path])
    assert exc.value.exit_code == 2
    for fragment in ("sample.frame_num", "sample.guide_scale", "sample.shift"):
        assert fragment in str(exc.value)
    # a value that is not a finite number is refused as the recipe is read, before the plan's checks
    with pytest.raises(ConfigError, match="sample.shift: must be a finite number") as exc:
        Pipeline.from_recipe(None, checkpoint_dir=tiny_ckpt, sample={"shift": float("nan")},
                             overrides=["output.dir=%s" % tmp_path])
    assert exc.value.exit_code == 2


def test_on_step_output_and_save(tiny_ckpt, tmp_path):
    from wanport import Pipeline
    from wanport.io.video import read_mp4

    seen = []
    with Pipeline.from_recipe(None, checkpoint_dir=tiny_ckpt, progress=False, overrides=["output.dir=%s" % tmp_path],
                              size="32*32", frames=5, steps=3) as pipe:
        assert pipe.model == "wan2.1-t2v-tiny" and pipe.is_main and pipe.load_s > 0
        written = pipe.generate(on_step=lambda step, total, stats: seen.append((step, total, sorted(stats))),
                                output=str(tmp_path / "direct.mp4"))
        result = pipe.generate(seed=9)
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[0][2] == ["max", "mean", "min", "std"]
    rep = written.report
    assert 0 < rep["pipeline"]["time_to_first_step_s"] < rep["stages"]["total_s"]
    assert json.loads((tmp_path / "direct.json").read_text())["seed"] == 42
    assert read_mp4(str(tmp_path / "direct.mp4")).shape == (5, 32, 32, 3)
    assert result.video is None and result.report["output"] == {"nonfinite_values": 0}  # nothing written yet
    video_path, report_path = result.save(str(tmp_path / "later"))
    assert video_path.endswith("later.mp4") and read_mp4(video_path).shape == (5, 32, 32, 3)
    saved = json.loads(open(report_path).read())
    assert saved["seed"] == 9 and saved["output"]["video"] == os.path.abspath(video_path)
    assert saved["recipe"]["sample"]["seed"] == 9  # the report's recipe reruns this very call
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left


def test_frames_round_trip_through_the_writer_conversion():
    from wanport.io.video import to_uint8_frames
    from wanport.pipeline.result import frames_to_video

    frames = np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1).repeat(3, axis=3).repeat(2, axis=0)
    assert np.array_equal(to_uint8_frames(frames_to_video(frames)), frames)


def test_import_wanport_stays_light():
    code = ("import sys, wanport; assert 'torch' not in sys.modules, 'torch imported'; "
            "from wanport import Pipeline; print(Pipeline.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Pipeline"
