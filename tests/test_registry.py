"""Backend discovery (pluggy + entry points), selection, resolution into a frozen op table."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wanport.errors import BackendError
from wanport.models.dit import DiTConfig
from wanport.models.dit.requirements import dit_requirements
from wanport.precision import PRESETS
from wanport.registry import apply_env_defaults, discover, resolve_ops, select_backend

CFG = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1)


def reqs(device_type="cpu", **kw):
    return dit_requirements(CFG, PRESETS["official"], device_type, **kw)


@pytest.fixture(scope="module")
def registry():
    return discover()


def test_discovers_reference_and_installed_plugins(registry):
    assert {"reference", "cuda", "ascend"} <= set(registry.backends)
    assert registry.plugin_of["cuda"] == "cuda" and registry.plugin_of["reference"] == "reference"
    assert registry.failures == ()
    ref = registry.backends["reference"]
    assert (ref.device_type, ref.dist_backend) == ("cpu", "gloo")
    assert registry.backends["cuda"].dist_backend == "nccl"
    assert registry.backends["ascend"].dist_backend == "hccl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report on a host without GPU")
def test_unavailable_backends_say_why(registry):
    ok, why = registry.backends["cuda"].availability()
    assert not ok and "CUDA" in why
    ok, why = registry.backends["ascend"].availability()
    assert not ok and "torch_npu" in why
    with pytest.raises(BackendError, match="not available here.*CUDA"):
        select_backend(registry, "cuda")
    assert select_backend(registry, "auto").name == "reference"


def test_unknown_backend_lists_choices(registry):
    with pytest.raises(BackendError) as e:
        select_backend(registry, "cdua")
    msg = str(e.value)
    assert "did you mean 'cuda'" in msg.lower() and "reference" in msg and "auto" in msg


def test_resolves_reference_table_once_and_frozen(registry):
    table = resolve_ops(registry, registry.backends["reference"], reqs())
    assert table.describe() == {
        "self_attention": "reference.math",
        "cross_attention": "reference.math",
        "rotary": "reference.real_tables",
        "rms_norm": "reference.torch",
        "layer_norm": "reference.torch",
        "layer_norm_modulate": "reference.torch",
        "add_layer_norm_modulate": "composed(reference.torch)",
        "qk_norm_rope": "composed(reference.torch, reference.real_tables)",
        "gated_residual": "reference.torch",
        "linear_gelu": "reference.torch",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.rotary = table.rms_norm
    # resolved callables are plain functions: no hook call per op
    from wanport.reference.rms_norm import rms_norm

    assert table.rms_norm.fn is rms_norm


def test_overrides_by_kind_and_site(registry):
    ref = registry.backends["reference"]
    t = resolve_ops(registry, ref, reqs(), {"attention": "sdpa"})
    assert t.self_attention.impl == t.cross_attention.impl == "reference.sdpa"
    t = resolve_ops(registry, ref, reqs(), {"attention": "sdpa", "self_attention": "reference.math"})
    assert (t.self_attention.impl, t.cross_attention.impl) == ("reference.math", "reference.sdpa")
    assert t.cross_attention.why == "recipe override"


def test_override_errors_explain(registry):
    ref = registry.backends["reference"]
    with pytest.raises(BackendError, match="unknown attention implementation 'sdpx'.*reference.sdpa"):
        resolve_ops(registry, ref, reqs(), {"attention": "sdpx"})
    with pytest.raises(BackendError, match="log-sum-exp"):
        resolve_ops(registry, ref, reqs(ring_lse=True), {"self_attention": "sdpa"})
    with pytest.raises(BackendError, match="unknown op kind or call site 'atention'.*'attention'"):
        resolve_ops(registry, ref, reqs(), {"atention": "math"})
    with pytest.raises(BackendError, match="runs on cuda"):
        resolve_ops(registry, ref, reqs(), {"attention": "cuda.sdpa_cudnn"})


def test_composed_and_cast_wrapped_ops(registry):
    """A kind a backend lacks is composed from its parts; an impl without out_dtype gets a cast."""
    from wanport.models.dit.rope import rope_tables
    from wanport.ops.composites import with_out_dtype
    from wanport.reference.rms_norm import rms_norm
    from wanport.reference.rotary import rotary

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 12, 256, generator=g).bfloat16() for _ in range(2))
    wq, wk = (1 + 0.1 * torch.randn(256, generator=g) for _ in range(2))
    cos, sin = rope_tables((1, 3, 4), 128)
    table = resolve_ops(registry, registry.backends["reference"], reqs())
    qo, ko = table.qk_norm_rope.fn(q, k, wq, wk, 1e-6, cos, sin, 2, torch.bfloat16)
    rq, rk = rotary(rms_norm(q, wq, 1e-6).view(2, 12, 2, 128), rms_norm(k, wk, 1e-6).view(2, 12, 2, 128), cos, sin)
    assert qo.dtype == torch.bfloat16 and qo.shape == (2, 12, 2, 128)
    assert torch.equal(qo, rq.bfloat16()) and torch.equal(ko, rk.bfloat16())
    assert "composed" in table.qk_norm_rope.why
    forced = resolve_ops(registry, registry.backends["reference"], reqs(), {"qk_norm_rope": "composed"})
    assert forced.qk_norm_rope.impl.startswith("composed(") and forced.qk_norm_rope.why == "recipe override"
    cast = with_out_dtype(lambda x, w, eps: x * w)
    assert cast(torch.ones(2), torch.ones(2), 0.0, out_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert cast(torch.ones(2), torch.ones(2), 0.0).dtype == torch.float32


def test_requirements_drive_the_choice(registry):
    ref = registry.backends["reference"]
    t = resolve_ops(registry, ref, reqs(ring_lse=True, padded_keys=True))
    assert t.self_attention.impl == "reference.math"


def test_env_defaults_order(monkeypatch, registry):
    spec = dataclasses.replace(registry.backends["reference"],
                               env_defaults={"WANPORT_T_A": "plugin", "WANPORT_T_B": "plugin", "WANPORT_T_C": "plugin"})
    monkeypatch.setenv("WANPORT_T_B", "user")
    for k in ("WANPORT_T_A", "WANPORT_T_C"):
        monkeypatch.delenv(k, raising=False)
    applied = apply_env_defaults(spec, {"WANPORT_T_C": "recipe"})
    assert os.environ["WANPORT_T_A"] == "plugin"
    assert os.environ["WANPORT_T_B"] == "user"
    assert os.environ["WANPORT_T_C"] == "recipe"
    assert applied == {"WANPORT_T_A": "plugin", "WANPORT_T_C": "recipe"}


def _install_fake_dist(root, name, module_source, entry_name):
    """A real installed distribution: a module plus a .dist-info with METADATA and entry_points.txt,
    exactly what pip writes into site-packages."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, name + ".py"), "w") as f:
        f.write(textwrap.dedent(module_source))
    info = os.path.join(root, "%s-1.0.dist-info" % name)
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[wanport.backends]\n%s = %s\n" % (entry_name, name))
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.write("")


TOY_PLUGIN = """
import torch
from wanport.ops.impl import Constraints, OpImpl
from wanport.registry import BackendSpec, hookimpl

def _start():
    from wanport.reference.runtime import HostRuntime
    return HostRuntime()

def _load():
    from wanport.reference.attention import attention_math
    def toy_attention(q, k, v, *, scale, kv_lens=None, return_lse=False):
        return attention_math(q, k, v, scale=scale, kv_lens=kv_lens, return_lse=return_lse)
    return toy_attention

@hookimpl
def wanport_backends():
    return [BackendSpec(name="toy", device_type="cpu", dist_backend="gloo", start=_start,
                        priority=5, description="a third-party test plugin")]

@hookimpl
def wanport_op_impls():
    return [OpImpl("attention", "toy_attn", "toy", _load, Constraints(lse=True), priority=1)]
"""

BROKEN_PLUGIN = """
raise ImportError("vendor runtime missing on this host")
"""


def test_third_party_plugin_distribution_is_discovered_listed_selectable(tmp_path):
    site = str(tmp_path / "site")
    _install_fake_dist(site, "wanport_toy", TOY_PLUGIN, "toy")
    _install_fake_dist(site, "wanport_broken", BROKEN_PLUGIN, "broken")
    env = dict(os.environ, PYTHONPATH=site + os.pathsep + os.environ.get("PYTHONPATH", ""))
    listing = subprocess.run([sys.executable, "-m", "wanport", "backends"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "toy  [available]" in listing.stdout
    assert "toy_attn" in listing.stdout
    assert "plugin broken" in listing.stdout and "vendor runtime missing" in listing.stdout
    code = textwrap.dedent("""
        from wanport.registry import discover, select_backend, resolve_ops
        from wanport.models.dit import DiTConfig
        from wanport.models.dit.requirements import dit_requirements
        from wanport.precision import PRESETS
        reg = discover()
        spec = select_backend(reg, "toy")
        cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1)
        t = resolve_ops(reg, spec, dit_requirements(cfg, PRESETS["official"], spec.device_type))
        print(t.self_attention.impl, t.rotary.impl, t.rotary.why.split(" (")[0])
    """)
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.split() == ["toy.toy_attn", "reference.real_tables", "fallback"]
