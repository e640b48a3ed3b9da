"""``precision: auto``: official where the device multiplies bf16 natively, fp32 where it would be
emulated; decided by the backend's runtime, recorded in the report, overridable by the recipe."""

from __future__ import annotations

import pytest
import torch

from wanport.config import load_recipe
from wanport.config.validate import plan_run
from wanport.pipeline.common import resolve_precision
from wanport.precision import PRESETS, policy_from_config, resolve_policy
from wanport.reference.cpu_features import flags_bf16, host_bf16_matmul
from wanport.reference.runtime import HostRuntime
from wanport.registry.backend import native_bf16

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2\n\nprocessor\t: 1\nflags\t\t: fpu avx avx2\n"
AVX512_BF16 = "flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
AMX = "flags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp i8mm bf16 sve\n"
ARM_OLD = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


@pytest.mark.parametrize("text, fast", [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True), (ARM_BF16, True),
                                        (ARM_OLD, False), ("", False)])
def test_cpu_flags(text, fast):
    got, why = flags_bf16(text)
    assert got is fast and why


def test_host_check_reads_the_flags_file(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text(AVX2_ONLY)
    assert host_bf16_matmul(str(p), system="Linux")[0] is False
    p.write_text(AMX)
    assert host_bf16_matmul(str(p), system="Linux") == (True, "CPU flag amx_bf16")


def test_auto_resolves_by_capability():
    fast, info = resolve_policy("auto", (True, "CPU flag amx_bf16"))
    assert fast == PRESETS["official"] and info["resolved"] == "official" and "amx_bf16" in info["why"]
    slow, info = resolve_policy("auto", (False, "no CPU flag"))
    assert slow == PRESETS["fp32"] and info == {"requested": "auto", "resolved": "fp32", "why": info["why"]}
    assert "emulated" in info["why"]
    mixed, info = resolve_policy({"preset": "auto", "vae": "bf16"}, (False, "x"))
    assert mixed.matmul == torch.float32 and mixed.vae == torch.bfloat16 and info["resolved"] == "fp32+custom"
    with pytest.raises(ValueError):
        resolve_policy("auto", None)


def test_explicit_policy_ignores_the_device():
    for name in ("official", "fp32", "bf16"):
        policy, info = resolve_policy(name, None)
        assert policy == PRESETS[name] and info["resolved"] == name and info["requested"] == name
    assert policy_from_config("auto") == PRESETS["official"]  # provisional, before the runtime starts


class _Accelerator:  # a runtime that does not say: an accelerator's
    device_type = "xpu"


class _Probe:
    def __init__(self, answer):
        self.answer = answer

    def native_bf16_matmul(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_runtime_capability():
    assert native_bf16(_Accelerator(), "acc")[0] is True
    assert native_bf16(_Probe((False, "no flag"))) == (False, "no flag")
    assert native_bf16(_Probe(RuntimeError("boom")))[0] is False
    host = HostRuntime()
    first = host.native_bf16_matmul()
    assert isinstance(first[0], bool) and first is host.native_bf16_matmul()  # probed once


@pytest.mark.parametrize("fast, expect", [(True, "official"), (False, "fp32")])
def test_plan_resolution_and_override(tiny_ckpt, fast, expect):
    cfg, _ = load_recipe(None, ["checkpoint_dir=%s" % tiny_ckpt])
    assert cfg.precision == "auto"  # the tiny default asks the device
    plan = resolve_precision(plan_run(cfg), cfg.precision, _Probe((fast, "injected")), "reference")
    assert plan.policy.name == expect
    assert plan.precision_choice["requested"] == "auto" and plan.precision_choice["resolved"] == expect
    assert plan.precision_choice["why"].startswith("injected")
    cfg, _ = load_recipe(None, ["checkpoint_dir=%s" % tiny_ckpt, "precision=official"])
    plan = resolve_precision(plan_run(cfg), cfg.precision, _Probe((fast, "injected")), "reference")
    assert plan.policy.name == "official" and plan.precision_choice["why"] == "as the recipe asks"
