"""The Ascend backend as a plugin: discovery, availability with reasons, environment, start-up on the
emulated torch_npu (and its failures), the runtime, and the whole tiny pipeline on the emulated NPU."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import wanport_ascend.plugin as plugin
import wanport_ascend.schema as schema
from npu_emulation import installed
from wanport.errors import BackendError
from wanport.pipeline.session import start_session
from wanport.registry import discover, select_backend

ENV = dict(plugin.ENV_DEFAULTS)
ASCEND_SITES = ("self_attention", "cross_attention", "rotary", "rms_norm", "layer_norm", "layer_norm_modulate",
                "add_layer_norm_modulate", "qk_norm_rope")


@pytest.fixture(scope="module")
def registry():
    return discover()


@pytest.fixture
def clean_env(monkeypatch):
    """The backend's variables unset for the test and restored after (start applies them to os.environ)."""
    for key in list(ENV) + ["LOCAL_RANK", "ASCEND_RT_VISIBLE_DEVICES"]:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


# ------------------------------------------------------------------ discovery and availability


def test_discovered_through_the_entry_point(registry):
    spec = registry.backends["ascend"]
    assert registry.plugin_of["ascend"] == "ascend" and not registry.failures
    assert (spec.device_type, spec.dist_backend, spec.accelerator) == ("npu", "hccl", True)
    assert dict(spec.env_defaults) == {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "TASK_QUEUE_ENABLE": "2",
                                       "CPU_AFFINITY_CONF": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_import_and_discovery_never_import_torch_npu():
    code = textwrap.dedent("""
        import builtins, importlib, sys
        real_import, real_import_module = builtins.__import__, importlib.import_module
        def guarded(name, *args, **kwargs):
            if name.split(".")[0] == "torch_npu":
                raise AssertionError("torch_npu imported")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = guarded
        importlib.import_module = lambda name, package=None: guarded(name) and real_import_module(name, package)
        import wanport_ascend.plugin, wanport_ascend.runtime, wanport_ascend.schema, wanport_ascend.attention
        import wanport_ascend.rotary, wanport_ascend.rms_norm, wanport_ascend.layer_norm
        import wanport_ascend.layer_norm_modulate, wanport_ascend.quant_linear
        from wanport.registry import discover
        reg = discover()
        ok, why = reg.backends["ascend"].availability()
        print(ok, [i.available()[0] for i in reg.impls if i.backend == "ascend"], "torch_npu" in sys.modules)
        print(why)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, why = out.stdout.splitlines()[:2]
    assert first == "False [%s] False" % ", ".join(["False"] * 10)  # 8 op implementations + 2 quantized Linears
    assert "torch_npu is not installed" in why


def test_unavailable_without_torch_npu_says_why(registry):
    ok, why = registry.backends["ascend"].availability()
    assert not ok and "torch_npu is not installed" in why and "set_env.sh" in why
    with pytest.raises(BackendError, match="not available here: torch_npu is not installed"):
        select_backend(registry, "ascend")


def test_installed_but_not_imported_is_judged_from_the_host(tmp_path, monkeypatch):
    """torch_npu installed but not imported yet (torch < 2.5): no import before the env defaults."""
    monkeypatch.setattr(plugin.importlib.util, "find_spec", lambda name: object() if name == "torch_npu" else None)
    monkeypatch.setattr(schema, "NPU_DEVICE_GLOB", str(tmp_path / "davinci[0-9]*"))
    monkeypatch.setattr(plugin, "host_status", lambda: schema.host_status(device_glob=schema.NPU_DEVICE_GLOB))
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH"):
        monkeypatch.delenv(var, raising=False)
    ok, why = plugin._available()
    assert not ok and "no Ascend NPU on this host" in why
    (tmp_path / "davinci0").write_text("")
    ok, why = plugin._available()
    assert not ok and "CANN environment is not loaded" in why and "ascend-toolkit/set_env.sh" in why
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", "/usr/local/Ascend/ascend-toolkit/latest")
    assert plugin._available() == (True, "")
    assert "torch_npu" not in sys.modules


def test_available_with_the_emulation_and_reasons_when_not(registry):
    spec = registry.backends["ascend"]
    with installed("v7"):
        assert spec.availability() == (True, "")
        assert select_backend(registry, "auto").name in ("ascend", "cuda")
    with installed("v7", available=False):
        ok, why = spec.availability()
        assert not ok and "found no NPU device" in why


# ------------------------------------------------------------------ start-up


def test_start_applies_env_first_then_compile_mode_format_and_device(registry, clean_env):
    spec = registry.backends["ascend"]
    clean_env.setenv("CPU_AFFINITY_CONF", "2")  # the user's shell wins over the plugin default
    with installed("v7") as npu:
        session = start_session(registry, spec, {"TASK_QUEUE_ENABLE": "1"})  # the recipe's env: wins over both
        assert npu.npu.env_at_init == {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "TASK_QUEUE_ENABLE": "1",
                                       "CPU_AFFINITY_CONF": "2", "TOKENIZERS_PARALLELISM": "false",
                                       "ASCEND_RT_VISIBLE_DEVICES": None}
        assert session.env_applied == {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
                                       "TOKENIZERS_PARALLELISM": "false", "TASK_QUEUE_ENABLE": "1"}
        names = [entry[0] for entry in npu.npu.log]
        assert npu.npu.calls("set_compile_mode") == [((), {"jit_compile": False})]
        assert npu.npu.calls("config.allow_internal_format") == [((False,), {})]
        assert names.index("set_compile_mode") < names.index("set_device")
        assert names.index("config.allow_internal_format") < names.index("set_device")
        assert npu.npu.calls("set_device") == [((0,), {})]
        rt = session.runtime
        assert rt.device_type == "npu" and session.device == torch.empty(0).npu(0).device  # the host, emulated
        assert rt.settings == {"jit_compile": "False", "allow_internal_format": "False"}


def test_start_uses_local_rank(registry, clean_env):
    clean_env.setenv("LOCAL_RANK", "1")
    with installed("v26", device_count=2) as npu:
        rt = registry.backends["ascend"].start()
        assert npu.npu.calls("set_device") == [((1,), {})] and rt.device_count() == 2


class _FailingImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import torch_npu`` that fails the way a host without CANN makes it fail."""

    def __init__(self, exc):
        self.exc = exc

    def find_spec(self, name, path=None, target=None):
        if name == "torch_npu":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.exc


@pytest.mark.parametrize("exc", [
    ImportError("libhccl.so: cannot open shared object file: No such file or directory"),
    SystemExit(None),  # torch_npu 2.1.0: prints its hint, then sys.exit()
    RuntimeError("Two accelerators cannot be used at the same time in PyTorch: npu and cuda."),
])
def test_start_without_cann_is_one_clear_error(registry, clean_env, exc):
    clean_env.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    clean_env.delenv("ASCEND_HOME_PATH", raising=False)
    clean_env.delenv("ASCEND_OPP_PATH", raising=False)
    clean_env.setattr(sys, "meta_path", [_FailingImport(exc)] + sys.meta_path)
    sys.modules.pop("torch_npu", None)
    with pytest.raises(BackendError) as info:
        start_session(registry, registry.backends["ascend"], {})
    msg = str(info.value)
    assert msg.startswith("backend 'ascend' failed to start: TorchNpuImportError: cannot import torch_npu")
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in msg
    assert "torch_npu" not in sys.modules


def test_import_failure_with_cann_loaded_points_at_versions():
    msg = schema.import_failure_message(ImportError("undefined symbol: _ZN3c10"),
                                        {"ASCEND_TOOLKIT_HOME": "/opt/Ascend/ascend-toolkit/latest"})
    assert "CANN is loaded from /opt/Ascend/ascend-toolkit/latest" in msg and "COMPATIBILITY" in msg
    missing = ModuleNotFoundError("No module named 'torch_npu'", name="torch_npu")
    assert "torch_npu is not installed" in schema.import_failure_message(missing, {})


def test_start_without_a_device_is_a_clear_error(registry, clean_env):
    with installed("v7", available=False):
        with pytest.raises(BackendError, match="sees no NPU.*npu-smi"):
            start_session(registry, registry.backends["ascend"], {})


# ------------------------------------------------------------------ the runtime


def test_runtime_utilities_and_versions(registry, clean_env):
    spec = registry.backends["ascend"]
    with installed("v6rc2") as npu:
        rt = spec.start()
        a, b = rt.event(), rt.event()
        a.record()
        torch.ones(64, 64) @ torch.ones(64, 64)
        b.record()
        assert a.elapsed_ms(b) >= 0
        rt.manual_seed(3)
        assert npu.npu.calls("manual_seed_all") == [((3,), {})]
        rt.synchronize()
        rt.empty_cache()
        rt.reset_peak_memory()
        assert {"synchronize", "empty_cache", "reset_peak_memory_stats"} <= {e[0] for e in npu.npu.log}
        assert rt.peak_memory_bytes() > 0
        free, total = rt.memory_info()
        assert 0 < free <= total
        text = rt.describe()
        assert "Ascend910B3" in text and "torch_npu 2.1.0.post6" in text and "half mode only" in text
        versions = spec.versions()
        assert versions["torch_npu"] == "2.1.0.post6" and "half mode only" in versions["npu_ops"]
        assert versions["cann"].startswith("8.1")
    assert spec.versions() == {"torch_npu": "not imported"}


# ------------------------------------------------------------------ the whole pipeline on the emulated NPU


def _run(tiny_ckpt, out_dir, backend, extra=(), capture=None):
    from wanport.config import load_recipe
    from wanport.pipeline.run import run

    cfg, raw = load_recipe(None, ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % out_dir, "sample.steps=2",
                                  "sample.size=32*32", "sample.frame_num=5", "backend=%s" % backend,
                                  "output.name=%s" % backend,
                                  "precision=official"] + list(extra))  # the same policy on both backends
    return run(cfg, raw, progress=False)


@pytest.fixture
def decoded(monkeypatch):
    """Capture the decoded video tensors the pipeline hands to the mp4 writer."""
    import wanport.io.video as video_io

    videos = []
    real = video_io.write_mp4
    monkeypatch.setattr(video_io, "write_mp4",
                        lambda video, path, fps: (videos.append(video.clone()), real(video, path, fps)))
    return videos


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_tiny_t2v_end_to_end_on_the_emulated_npu(tiny_ckpt, tmp_path, clean_env, decoded):
    """`wanport run` with `backend: ascend` on the emulated NPU, both schema eras, against the reference run.

    The yardstick is the reference backend itself: its two exact attention implementations
    (explicit softmax vs SDPA) differ by bf16 rounding order only. Measured on this tiny checkpoint
    (2 steps, 32x32x5): reference.math vs reference.sdpa rel-L2 4.9e-3 (max |diff| 0.019 on [-1, 1]
    pixels); ascend vs reference.math rel-L2 6.7e-3 (max 0.017), the same on every era."""
    _run(tiny_ckpt, tmp_path, "reference")
    _run(tiny_ckpt, tmp_path, "reference", ["ops={attention: sdpa}", "output.name=sdpa"])
    reports, eras = {}, ("v7", "v6rc2")
    for era in eras:
        for key in ENV:  # as in a fresh process: the previous run's defaults are not the user's
            clean_env.delenv(key, raising=False)
        with installed(era) as npu:
            reports[era] = _run(tiny_ckpt, tmp_path, "ascend", ["env={TASK_QUEUE_ENABLE: '1'}",
                                                                "output.name=ascend-%s" % era])
        assert npu.npu.env_at_init["TASK_QUEUE_ENABLE"] == "1"  # the recipe's env: reached torch_npu's init
        assert reports[era]["versions"]["torch_npu"] == npu.__version__
    for era, report in reports.items():
        assert report["backend"]["name"] == "ascend" and report["backend"]["dist_backend"] == "hccl"
        assert report["backend"]["device_type"] == "npu"
        assert report["backend"]["env_applied"]["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
        rotary = "ascend.rotary_mul" if era == "v7" else "ascend.rotary_mul_half"
        ops = {site: entry["impl"] for site, entry in report["ops"].items()}
        assert {site: ops[site] for site in ASCEND_SITES} == {
            "self_attention": "ascend.fusion_attention", "cross_attention": "ascend.fusion_attention",
            "rotary": rotary, "rms_norm": "ascend.rms_norm", "layer_norm": "ascend.layer_norm_eval",
            "layer_norm_modulate": "ascend.layer_norm_eval",
            "add_layer_norm_modulate": "composed(ascend.layer_norm_eval)",
            "qk_norm_rope": "composed(ascend.rms_norm, %s)" % rotary}
        # the kinds the ascend backend does not implement run the reference (device-agnostic) code,
        # the composable VAE norm its composed form
        assert ops.pop("channel_rms_norm") == "composed(pytorch)"
        assert report["vae"] == {"channel_rms_norm": "composed(pytorch)", "memory_format": "contiguous_format"}
        assert all(ops[s].startswith("reference.") for s in ops if s not in ASCEND_SITES), ops
        assert ("half mode only" in report["backend"]["device_name"]) == (era == "v6rc2")
        assert os.path.getsize(report["output"]["video"]) > 0
        assert json.load(open(report["output"]["report"]))["ops"]["rotary"]["impl"] == rotary
    ref, sdpa, npu_new, npu_old = decoded
    assert ref.shape == npu_new.shape == (3, 5, 32, 32)
    floor = _rel(sdpa, ref)
    assert 0 < floor < 1e-2
    for video in (npu_new, npu_old):
        assert _rel(video, ref) < 2 * floor and (video - ref).abs().max().item() < 0.05
    assert _rel(npu_old, npu_new) < 1e-6  # reordered half mode == interleave mode


# ------------------------------------------------------------------ the field's Atlas recipe

ATLAS = os.path.join(os.path.dirname(__file__), os.pardir, "recipes", "atlas-800i-a2-wan2.2-i2v-a14b.yaml")


def test_atlas_recipe_validates_and_ascend_resolves_every_op(registry, clean_env):
    """The Atlas 800I A2 recipe (Wan2.2-I2V-A14B, 1280x720x81, 40 steps, 8 processes, Ulysses 8, VAE
    parallel, DiT and T5 FSDP, seed 100) validates before anything loads, and on an NPU host the Ascend
    backend resolves an implementation for every call site with the requirements this layout implies
    (padded keys under Ulysses)."""
    from wanport.config import load_recipe
    from wanport.config.validate import plan_run
    from wanport.models.dit import DiTConfig
    from wanport.models.dit.requirements import dit_requirements
    from wanport.registry import resolve_ops

    cfg, _ = load_recipe(ATLAS)
    plan = plan_run(cfg, "atlas recipe")
    p = plan.parallel
    assert (plan.world, p.cfg, p.ulysses, p.ring) == (8, 1, 8, 1)
    assert p.vae and p.dit_fsdp and p.t5_fsdp and plan.seed == 100 and plan.num_steps == 40
    assert (plan.width, plan.height, plan.frame_num) == (1280, 720, 81) and cfg.backend == "auto"
    arch = dict(plan.preset.arch)
    dit = DiTConfig(model_type=plan.preset.model_type, **arch)
    with installed("v7"):
        spec = select_backend(registry, cfg.backend)
        assert spec.name == "ascend"
        table = resolve_ops(registry, spec, dit_requirements(dit, plan.policy, spec.device_type, padded_keys=True))
    impls = table.describe()
    assert impls["self_attention"].startswith("ascend.") and impls["cross_attention"].startswith("ascend.")
    for site in ("rotary", "rms_norm", "layer_norm", "layer_norm_modulate"):
        assert impls[site].startswith("ascend."), (site, impls[site])
    assert impls["qk_norm_rope"].startswith("composed(ascend.")
