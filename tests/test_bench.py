"""The bench commands run on the reference backend with tiny shapes and write their JSON."""

from __future__ import annotations

import json
import subprocess
import sys


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
                     "gated_residual", "linear_gelu"}
    assert not [r for r in result["rows"] if "error" in r]
    for r in result["rows"]:
        assert r["median_ms"] > 0
        limit = 1e-6 if r["kind"] in ("rotary", "gated_residual") else 1e-2
        assert r["rel_err_vs_f64"] < limit, r
    assert result["ceilings"]["copy_gbps"] > 0


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
