"""The bench commands run on the reference backend with tiny shapes and write their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wanport.io.plots import plots_available

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _assert_outputs(stem, pngs=("",)):
    """JSON and markdown always; the PNGs when matplotlib is installed."""
    assert os.path.isfile(str(stem) + ".json") and os.path.getsize(str(stem) + ".md") > 0
    for suffix in pngs:
        png = "%s%s.png" % (stem, suffix)
        assert os.path.isfile(png) == plots_available(), png
        if plots_available():
            with open(png, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bench_ops_quick_on_reference(tmp_path):
    out = tmp_path / "ops.json"
    proc = subprocess.run([sys.executable, "-m", "wanport", "bench", "ops", "--backend", "reference", "--quick",
                           "--repeats", "1", "--warmup", "0", "--models", "wan2.1-t2v-1.3b", "--sizes", "480p",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| op | case | impl |" in proc.stdout
    result = json.loads(out.read_text())
    kinds = {r["kind"] for r in result["rows"]}
    assert kinds == {"attention", "qk_norm_rope", "rotary", "rms_norm", "layer_norm", "layer_norm_modulate",
                     "add_layer_norm_modulate",
                     "gated_residual", "linear_gelu"}
    assert not [r for r in result["rows"] if "error" in r]
    for r in result["rows"]:
        assert r["median_ms"] > 0
        limit = 1e-6 if r["kind"] in ("rotary", "gated_residual") else 1e-2
        assert r["rel_err_vs_f64"] < limit, r
    assert result["ceilings"]["copy_gbps"] > 0
    _assert_outputs(tmp_path / "ops")


def test_bench_dit_tiny_on_reference(tmp_path):
    out = tmp_path / "dit.json"
    proc = subprocess.run([sys.executable, "-m", "wanport", "bench", "dit", "--model", "wan2.1-t2v-tiny",
                           "--size", "64*64", "--frames", "5", "--backend", "reference", "--repeats", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["size"]["video_tokens"] == 32  # 2 latent frames x 4 x 4 patches
    assert len(result["wanport"]["times_s"]) == 2 and result["wanport"]["median_s"] > 0
    assert result["flops"]["total"] > 0 and result["ops"]["self_attention"] == "reference.math"
    _assert_outputs(tmp_path / "dit")


def test_bench_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "wanport", "bench", "dit", "--model", "wan9", "--backend",
                           "reference"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown model" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "wanport", "bench", "ops", "--sizes", "999p", "--backend",
                           "reference"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown size" in proc.stderr


def test_bench_ops_error_column_survives_in_place_implementations(monkeypatch):
    """An implementation that writes into its input (the fused gated residual does) must be
    measured on a fresh copy, and its output captured before the timing loop reuses it."""
    import wanport.bench.ops as ops

    def in_place(x, y, gate):
        return x.add_(y * gate)

    monkeypatch.setattr(ops, "_implementations", lambda *a: [("test.in_place", in_place)])
    result = ops.bench_ops(backend="reference", models=["wan2.1-t2v-1.3b"], sizes=["480p"],
                           kinds=["gated_residual"], warmup=1, repeats=3, quick=True)
    (row,) = result["rows"]
    assert row["impl"] == "test.in_place" and row["rel_err_vs_f64"] < 1e-6


def test_bench_ops_shapes_cover_the_5b():
    """480p / 720p for the Wan2.1 models, TI2V-5B at 704p x 121 frames = 27280 tokens (dim 3072, 24 heads)."""
    import wanport.bench.ops as ops

    pairs = ops.model_sizes(ops.DEFAULT_MODELS, None)
    assert ("wan2.2-ti2v-5b", "704p") in pairs and ("wan2.1-t2v-14b", "720p") in pairs
    assert ops.token_grid("wan2.1-t2v-14b", "480p") == (21, 30, 52)
    assert ops.token_grid("wan2.1-t2v-14b", "720p") == (21, 45, 80)
    assert ops.token_grid("wan2.2-ti2v-5b", "704p") == (31, 22, 40)
    assert ops.token_grid("wan2.2-ti2v-5b", "720p") is None  # not a multiple of 32
    with pytest.raises(Exception, match="takes none of the sizes"):
        ops.model_sizes(["wan2.2-ti2v-5b"], ["720p"])
    cases = ops.build_cases(__import__("torch").device("cpu"), [("wan2.2-ti2v-5b", "704p")], quick=True)
    assert any(c.label == "self 5b 704p S=256 N=24" for c in cases)
    assert any("3072x14336" in c.label for c in cases)


def test_bench_pipeline_random_weights_tiny(tmp_path, capsys):
    """The real pipeline stages on random weights (no checkpoint), after a warm-up run."""
    from wanport.cli import main

    out = tmp_path / "pipe"
    recipe = os.path.join(REPO, "recipes", "tiny-t2v.yaml")
    rc = main(["bench", "pipeline", recipe, "checkpoint_dir=%s" % (tmp_path / "none"), "sample.size=64*48",
               "sample.frame_num=5", "--steps", "2", "--warmup-steps", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    assert "| denoise |" in capsys.readouterr().out
    result = json.loads((tmp_path / "pipe.json").read_text())
    assert result["kind"] == "wanport.bench.pipeline" and result["weights"]["source"] == "random"
    assert result["steps"] == 2 and len(result["steps_s"]) == 2 and result["warmup_steps"] == 1
    assert result["forwards_per_step"] == [2, 2]  # CFG: two forwards a step
    for stage in ("load", "text_encode", "denoise", "vae_decode", "total"):
        assert result["stages_s"][stage] > 0, stage
    assert result["compute_s"] < result["stages_s"]["total"]
    assert result["peak_memory_gib"] > 0 and result["run_report"]["size"]["frames"] == 5
    _assert_outputs(out, ("-stages", "-steps"))


def test_bench_pipeline_weights_choice(tiny_ckpt, tmp_path):
    from wanport.bench.pipeline import choose_weights
    from wanport.errors import ConfigError

    assert choose_weights("auto", tiny_ckpt, 0)[1]["source"] == "checkpoint"
    assert choose_weights("auto", str(tmp_path / "absent"), 0)[1]["source"] == "random"
    assert choose_weights("random", tiny_ckpt, 3)[1]["seed"] == 3
    with pytest.raises(ConfigError, match="--weights"):
        choose_weights("fake", tiny_ckpt, 0)


def _ops_result(backend, device, ms, err=1e-3):
    rows = [{"kind": "attention", "case": "self 1.3b 480p S=32760 N=12", "impl": "%s.fast" % backend,
             "median_ms": ms, "rel_err_vs_f64": err},
            {"kind": "attention", "case": "self 1.3b 480p S=32760 N=12", "impl": "%s.slow" % backend,
             "median_ms": 10 * ms, "rel_err_vs_f64": err / 2},
            {"kind": "attention", "case": "self 1.3b 480p S=32760 N=12", "impl": "%s.sage (lossy)" % backend,
             "median_ms": ms / 10, "rel_err_vs_f64": 0.02},
            {"kind": "rms_norm", "case": "bf16->bf16 1.3b 480p S=32760", "impl": "reference.torch",
             "median_ms": ms / 4, "rel_err_vs_f64": 2e-3}]
    return {"kind": "wanport.bench.ops", "backend": backend, "device": device, "quick": False,
            "cases": [{"model": "wan2.1-t2v-1.3b", "size": "480p", "grid": [21, 30, 52]}],
            "ceilings": {"bf16_matmul_tflops": 700.0, "copy_gbps": 2000.0}, "rows": rows, "versions": {}}


def test_bench_merge_two_machines_into_a_combined_table(tmp_path, capsys):
    from wanport.cli import main

    a, b = tmp_path / "h100.json", tmp_path / "atlas.json"
    a.write_text(json.dumps(_ops_result("cuda", "NVIDIA H100 80GB HBM3 (81079 MiB, sm_90)", 10.0)))
    b.write_text(json.dumps(_ops_result("ascend", "Ascend910B (64 GiB)", 15.0, 2e-3)))
    legacy = os.path.join(REPO, "benchmarks", "results", "2026-11-23-h100.json")  # an older merged file
    assert main(["bench", "merge", str(a), str(b), legacy, "--labels", "H100", "Atlas", "H100-old",
                 "--note", "test", "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["sources"] == ["H100", "Atlas", "H100-old"]
    rows = {(r["kind"], r["case"]): r for r in merged["combined"]["ops"]}
    row = rows[("attention", "self 1.3b 480p S=32760 N=12")]
    assert row["by_source"]["H100"] == {"impl": "cuda.fast", "median_ms": 10.0, "rel_err_vs_f64": 1e-3}  # lossy skipped
    assert row["by_source"]["Atlas"]["impl"] == "ascend.fast" and row["ratio"] == 1.5
    assert row["by_source"]["H100-old"]["impl"] == "cuda.sdpa_cudnn"
    md = (tmp_path / "merged.md").read_text()
    row = "| attention | self 1.3b 480p S=32760 N=12 | 10.000 (cuda.fast) | 0.001 | 15.000 (ascend.fast) | 0.002 |"
    assert row in md
    assert "## Ops: Atlas" in md and "## DiT forward: H100-old" in md and "- test" in md
    assert "(published)" in md and "LightX2V" in md
    _assert_outputs(tmp_path / "merged", ("-ops",))
    assert main(["bench", "merge", str(a), "--labels", "x", "y"]) == 2
    (tmp_path / "other.json").write_text(json.dumps({"kind": "wanport.run"}))
    assert main(["bench", "merge", str(tmp_path / "other.json")]) == 2
    assert "not a wanport bench result" in capsys.readouterr().err


def test_published_numbers_carry_sources_and_labels():
    from wanport.bench import published

    rows = published.published_rows()
    assert rows and all(r["source"] and r["label"] == "published" for r in rows)
    models = {r["model"] for r in rows}
    assert {"wan2.1-t2v-14b", "wan2.2-i2v-a14b", "wan2.1-i2v-14b-480p"} <= models
    atlas = [r for r in rows if "Atlas" in r["hardware"]]
    assert {(r["size"], r["value"]) for r in atlas} >= {("832*480", 125.95), ("1280*720", 430.17)}
    text = published.markdown(published.published_rows(["wan2.1-t2v-14b"]))
    assert "not measured here" in text and "278.9 s (published)" in text


def test_results_without_matplotlib_say_how_to_get_plots(tmp_path, monkeypatch):
    import wanport.io.results as results

    said = []
    monkeypatch.setattr(results, "plots_available", lambda: False)
    written = results.write_results(str(tmp_path / "r.json"), {"x": 1}, "| a |", [("", lambda path: 1 / 0)],
                                    say=said.append)
    assert written == [str(tmp_path / "r.json"), str(tmp_path / "r.md")]
    assert any("matplotlib is not installed" in s and "wanport[plot]" in s for s in said)
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 1}


def test_bench_scaling_single_device_on_reference(tmp_path, capsys):
    stem = tmp_path / "scaling"
    proc = subprocess.run([sys.executable, "-m", "wanport", "bench", "scaling", "--model", "wan2.1-t2v-tiny",
                           "--size", "64*64", "--frames", "5", "--backend", "reference", "--repeats", "1",
                           "--layouts", "r2", "cfg2xu2", "--out", str(stem)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["layout"] for r in result["rows"]] == ["1", "r2", "cfg2xu2"]
    assert result["rows"][0]["speedup"] == 1.0 and all(r["step_s"] > 0 for r in result["rows"])
    assert (tmp_path / "scaling.md").exists()
    from wanport import cli

    code = cli.main(["bench", "scaling", "--model", "wan2.1-t2v-1.3b", "--layouts", "u8", "--backend", "reference"])
    assert code == 2 and "does not divide the 12 heads" in capsys.readouterr().err  # refused before any model


# two launches cover the process-group handling of `bench pipeline` (sequence and CFG groups, FSDP,
# VAE parallel, the T5 on the host); every layout's video is checked in tests/test_parallel.py
@pytest.mark.parametrize("layout", [
    ["parallel.ring=2", "parallel.dit_fsdp=true", "parallel.t5_fsdp=true"],
    ["parallel.cfg=2", "parallel.vae=true", "parallel.t5_cpu=true"],
], ids=["ring2+fsdp", "cfg2+vae+t5_cpu"])
def test_bench_pipeline_under_torchrun_two_gloo_ranks(layout, tiny_ckpt, tmp_path):
    """`torchrun --nproc_per_node 2 -m wanport bench pipeline ... --warmup-steps 1`: one process
    group for the warm-up and the measured call (it used to be shut down after the warm-up, and
    the measured call's first collective died or waited out the timeout), ended once at exit;
    rank 0 alone prints and writes, with both ranks' memory and communication figures."""
    import subprocess
    import sys
    import time

    stem = tmp_path / "res" / "bench"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "wanport",
           "bench", "pipeline", os.path.join(REPO, "recipes", "tiny-t2v.yaml"), "checkpoint_dir=%s" % tiny_ckpt,
           "sample.size=32*32", "sample.frame_num=5", "precision=fp32", "parallel.timeout_s=60"] + layout + [
           "--steps", "2", "--warmup-steps", "1", "--no-progress", "--out", str(stem)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=str(tmp_path), env=env)
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 400  # no collective waited out its timeout
    assert proc.stdout.count("| denoise |") == 1  # printed once, by rank 0
    result = json.loads((tmp_path / "res" / "bench.json").read_text())
    names = sorted(os.listdir(tmp_path / "res"))
    assert [n for n in names if not n.endswith(".png")] == ["bench.json", "bench.md"]  # one set of files
    par = result["parallel"]
    assert par["world"] == 2 and [r["rank"] for r in par["ranks"]] == [0, 1]
    assert all(r["comm_calls"] > 0 for r in par["ranks"])
    # the measured call's denoising loop alone: its collectives, bytes sent, exposed time per step
    assert all(0 < r["denoise_comm_calls"] <= r["comm_calls"] and r["denoise_comm_bytes"] > 0 for r in par["ranks"])
    assert "denoise: exposed comm s/step" in proc.stdout
    assert result["steps"] == 2 and result["warmup_steps"] == 1 and result["time_to_first_step_s"] > 0
    assert "| rank | device | peak memory GiB | comm s | comm calls |" in proc.stdout
