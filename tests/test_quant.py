"""Quantized DiT Linears (docs/quantization.md).

* the e4m3 emulation is the format (every value, every tie against torch's own cast) and rounds
  within 2^-4 relative (3 mantissa bits), int8 within half a step (amax/127);
* each scheme's reference emulation vs float64: inside a worst-case bound built from those
  per-element errors, and its rms error within a factor 2 of the rounding-noise prediction (so the
  error scales with the format's step, not with one machine's result);
* the resolver takes a scheme only from an implementation of the active backend that declares it;
* bad requests (keep naming no module, FP8 attention against an exact override, unmerged LoRA) fail before any weight is read;
* LoRAs are merged in float32 before the weight is quantized; a pre-quantized checkpoint loads
  the same tensors as quantizing at load;
* the tiny pipeline runs quantized on the reference backend and its report lists every layer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch

from wanport.errors import BackendError, ConfigError
from wanport.ops.impl import Constraints, OpImpl
from wanport.ops.quant import DEFAULT_KEEP, FP8_E4M3, INT8, SCHEMES, QuantizedActivation, absmax_scale, round_to_format
from wanport.reference.quant_linear import EmulatedKernels

HAS_FP8 = hasattr(torch, "float8_e4m3fn")


# ---------------------------------------------------------------- the number formats

@pytest.mark.skipif(not HAS_FP8, reason="torch without float8_e4m3fn")
def test_e4m3_emulation_is_the_format():
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = torch.unique(codes[torch.isfinite(codes)])
    assert values.max() == 448 and len(values) == 253  # 254 finite codes, +0 and -0 equal
    ties = (values[1:] + values[:-1]) / 2  # exactly halfway: ties to even
    noise = torch.randn(20000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-4, 2.5, 20000)
    x = torch.cat([values, ties, noise.clamp(-448, 448)])
    assert torch.equal(round_to_format(x, FP8_E4M3), x.to(torch.float8_e4m3fn).float())
    assert torch.equal(round_to_format(torch.tensor([500.0, -1e6]), FP8_E4M3), torch.tensor([448.0, -448.0]))


def test_rounding_errors_follow_the_arithmetic():
    g = torch.Generator().manual_seed(1)
    x = torch.exp(torch.empty(50000).uniform_(-12, 8, generator=g) * 0.69314718) * torch.sign(torch.randn(50000, generator=g))
    normal = x.abs() >= 2.0 ** -6
    rel = ((round_to_format(x, FP8_E4M3) - x).abs() / x.abs())[normal]
    # 3 mantissa bits: half a step is 2^-4 of the binade's base, so at most u/(1+u) of the value
    # (reached just above a power of two), attained here
    u = 2.0 ** -4
    assert rel.max() <= u / (1 + u) and rel.max() > 0.97 * u / (1 + u)
    sub = (round_to_format(x, FP8_E4M3) - x).abs()[~normal]
    assert sub.max() <= 2.0 ** -10 and sub.max() > 0.97 * 2.0 ** -10  # subnormal step 2^-9
    y = torch.empty(50000).uniform_(-127, 127, generator=g)
    e = (round_to_format(y, INT8) - y).abs()
    assert e.max() <= 0.5 and e.max() > 0.49


# ---------------------------------------------------------------- the reference emulation vs float64

def _ulp(t: torch.Tensor, fmt, scale: torch.Tensor) -> torch.Tensor:
    """The format's step around each element of t (in t's units)."""
    if fmt.integer:
        return scale.expand_as(t).double()
    v = (t.double() / scale.double()).abs().clamp(min=2.0 ** fmt.min_normal_exp)
    return torch.pow(2.0, torch.floor(torch.log2(v)) - fmt.mantissa_bits) * scale.double()


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_emulation_vs_float64_bound_and_noise(scheme):
    s = SCHEMES[scheme]
    g = torch.Generator().manual_seed(2)
    m, k, n = 96, 256, 64
    x = torch.randn(1, m, k, generator=g)
    x[0, 5] *= 30.0  # an outlier token: per-token scales keep the other rows fine
    w = torch.randn(n, k, generator=g) / k ** 0.5
    w[7] *= 10.0
    bias = 0.1 * torch.randn(n, generator=g)
    kit = EmulatedKernels(scheme)
    wq, ws = kit.quantize_weight(w)
    assert wq.dtype == s.weight.storage_dtype and ws.dtype == torch.float32
    assert tuple(ws.shape) == ((n, 1) if s.weight_granularity == "channel" else (1, 1))
    y = kit.linear(x, wq, ws, bias, out_dtype=torch.float32).double()
    exact = x.double() @ w.double().t() + bias.double()

    uw = _ulp(w, s.weight, absmax_scale(w, s.weight, s.weight_granularity))
    if s.activation is None:
        ux = torch.zeros_like(x, dtype=torch.float64)
    else:
        ux = _ulp(x, s.activation, absmax_scale(x, s.activation, s.activation_granularity))
    ax, aw = x.double().abs(), w.double().abs()
    # worst case: each element off by at most half a step; float32 products/sums: K ulps of 2^-24
    bound = (ux / 2) @ aw.t() + ax @ (uw / 2).t() + (ux / 2) @ (uw / 2).t() \
        + k * 2.0 ** -23 * ((ax + ux) @ (aw + uw).t()) + 2.0 ** -24 * exact.abs()
    err = (y - exact).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    # rounding noise: uniform on +-step/2, variance step^2/12 per element, independent terms
    predicted = torch.sqrt(((ux ** 2 / 12) @ (aw ** 2).t() + (ax ** 2) @ (uw ** 2 / 12).t()).mean())
    observed = torch.sqrt(((y - exact) ** 2).mean())
    assert 0.5 < float(observed / predicted) < 2.0, (float(observed), float(predicted))


def test_a_quantized_activation_is_reused_as_is():
    kit = EmulatedKernels("fp8_rowwise")
    x = torch.randn(2, 8, 32)
    wq, ws = kit.quantize_weight(torch.randn(16, 32))
    qa = kit.quantize_activation(x)
    assert isinstance(qa, QuantizedActivation) and tuple(qa.scale.shape) == (2, 8, 1)
    assert torch.equal(kit.linear(qa, wq, ws, None, out_dtype=torch.float32),
                       kit.linear(x, wq, ws, None, out_dtype=torch.float32))
    with pytest.raises(ValueError, match="int8_w8a8"):
        EmulatedKernels("int8_w8a8").linear(qa, wq, ws, None, out_dtype=torch.float32)
    a16 = EmulatedKernels("int8_w8a16").quantize_activation(x)
    assert a16.scale is None and a16.data is x  # weight-only: the activation stays as it is


def test_schema_choices_are_the_schemes():
    from wanport.config.schema import QuantConfig

    fields = {f.name: f for f in dataclasses.fields(QuantConfig)}
    assert fields["dit"].metadata["choices"] == ("none",) + tuple(SCHEMES)
    assert QuantConfig().keep == list(DEFAULT_KEEP)


# ---------------------------------------------------------------- resolver

@pytest.fixture(scope="module")
def registry():
    from wanport.registry import discover

    return discover()


def _reqs(scheme):
    from wanport.models.dit import DiTConfig
    from wanport.models.dit.requirements import dit_requirements
    from wanport.precision import PRESETS

    return dit_requirements(DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=1), PRESETS["fp32"], "cpu",
                            quant_scheme=scheme)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_reference_resolves_every_scheme(registry, scheme):
    from wanport.registry import resolve_ops

    table = resolve_ops(registry, registry.backends["reference"], _reqs(scheme))
    assert table.quant_linear.impl == "reference.emulate_" + scheme
    assert table.quant_linear.fn.scheme.name == scheme
    assert resolve_ops(registry, registry.backends["reference"], _reqs(None)).quant_linear is None


def test_a_scheme_the_backend_does_not_declare_is_refused(registry):
    from wanport.registry import resolve_ops

    ref = registry.backends["reference"]
    toy = dataclasses.replace(ref, name="toy", accelerator=True)
    mine = OpImpl("quant_linear", "w8a8", "toy", lambda: EmulatedKernels("int8_w8a8"),
                  Constraints(schemes=frozenset({"int8_w8a8"})), exact=False)
    reg = dataclasses.replace(registry, backends=dict(registry.backends, toy=toy), impls=registry.impls + (mine,))
    assert resolve_ops(reg, toy, _reqs("int8_w8a8")).quant_linear.impl == "toy.w8a8"
    with pytest.raises(BackendError) as e:
        resolve_ops(reg, toy, _reqs("fp8_rowwise"))  # the reference emulation is not a fallback
    msg = str(e.value)
    assert "'toy' does not implement the quantization scheme 'fp8_rowwise'" in msg
    assert "toy.w8a8" in msg and "implements: int8_w8a8" in msg and "reference.emulate" not in msg


def test_cuda_fp8_availability_reasons():
    from wanport_cuda.plugin import fp8_reason, wanport_op_impls

    schemes = {i.name: i.constraints.schemes for i in wanport_op_impls() if i.kind == "quant_linear"}
    assert schemes == {"fp8_rowwise_scaled_mm": {"fp8_rowwise"}, "fp8_tensor_scaled_mm": {"fp8_tensor"}}
    assert fp8_reason(True, "2.11.0+cu130", True, True, True, (9, 0)) == (True, "")
    assert "sm90" in fp8_reason(True, "2.11.0", True, True, True, (8, 9))[1]
    assert fp8_reason(False, "2.11.0", True, True, True, (8, 9)) == (True, "")
    assert "sm89" in fp8_reason(False, "2.11.0", True, True, True, (8, 0))[1]
    assert "torch >= 2.5" in fp8_reason(True, "2.4.1", True, True, True, (9, 0))[1]
    assert "triton" in fp8_reason(True, "2.11.0", True, True, False, (9, 0))[1]
    assert "no CUDA device" in fp8_reason(False, "2.11.0", True, True, True, None)[1]


# ---------------------------------------------------------------- bad requests, before loading

@pytest.fixture
def no_weight_reads(monkeypatch):
    import wanport.checkpoints.dit_checkpoint as dc

    def refuse(*a, **k):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(dc, "iter_tensors", refuse)


@pytest.mark.parametrize("overrides, error, match", [
    (["quant.dit=fp8_rowwise", "quant.keep=[blocks.7]"], ConfigError, "quant.keep: 'blocks.7' names no module"),
    (["quant.dit=int8_w8a8", "quant.keep=[blocks.*.self_atn.q]"], ConfigError, "names no module"),
    (["quant.attention=fp8", "ops={self_attention: reference.math}"], BackendError,
     "does not implement quantization scheme fp8"),
    (["quant.dit=fp8"], ConfigError, "fp8_rowwise"),
])
def test_bad_requests_fail_before_weights_load(tiny_ckpt, tmp_path, no_weight_reads, overrides, error, match):
    """The checks `prepare` runs before any weight is read: the recipe, the checkpoint inspection
    (quant.keep against the model), the op table's resolution (the scheme, FP8 attention)."""
    from wanport.config import load_recipe
    from wanport.pipeline.common import check_run, resolve_dit_ops

    with pytest.raises(error, match=match):
        cfg, _ = load_recipe(None, ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path] + overrides)
        plan, _, _, registry, spec, ckpts = check_run(cfg)
        resolve_dit_ops(registry, spec, ckpts, plan, cfg.ops)


def test_unmerged_lora_with_quant_is_refused():
    from wanport.config import load_recipe
    from wanport.config.validate import plan_run

    cfg, _ = load_recipe(None, ["quant.dit=int8_w8a16", "lora=[{path: x.safetensors, merge: false}]"])
    with pytest.raises(ConfigError, match="merge: false cannot be combined with quant.dit"):
        plan_run(cfg)


# ---------------------------------------------------------------- loading

def _tiny_dit(path):
    from wanport.checkpoints.dit_checkpoint import inspect_dit
    from wanport.precision import PRESETS

    return inspect_dit(path, PRESETS["fp32"])


def _quantizer(ckpt, scheme):
    from wanport.precision import PRESETS
    from wanport.quant import LoadQuantizer, selected_linears

    names = selected_linears(ckpt.config, PRESETS["fp32"], DEFAULT_KEEP)
    return LoadQuantizer(names, EmulatedKernels(scheme), torch.float32), names


def test_lora_is_merged_before_quantizing(tiny_ckpt, tmp_path):
    from wanport.checkpoints.dit_checkpoint import load_dit
    from wanport.checkpoints.safetensors_files import iter_tensors
    from wanport.lora.files import read_lora_file
    from wanport.lora.match import ModelStructure, match_lora
    from wanport.lora.merge import Merger
    from wanport.lora.spec import LoraSpec
    from wanport.lora.tiny import write_lora
    from wanport.models.dit import WanDiT
    from wanport.precision import PRESETS

    ckpt = _tiny_dit(tiny_ckpt)
    structure = ModelStructure.of(WanDiT.on_meta(ckpt.config, PRESETS["fp32"]))
    path = str(tmp_path / "style.safetensors")
    deltas = write_lora(path, structure, "official", magnitude=0.5)
    lora = match_lora(LoraSpec(path, 1.0, name="style"), read_lora_file(path), structure)
    quantizer, names = _quantizer(ckpt, "int8_w8a8")
    model = load_dit(ckpt, PRESETS["fp32"], torch.device("cpu"), transform=Merger([lora]), quantize=quantizer)
    original = dict(iter_tensors(ckpt.entries))
    kit = quantizer.kernels
    assert len(names) == 20
    for name in names:
        key = name + ".weight"
        layer = model.get_submodule(name)
        want, scale = kit.quantize_weight(original[key].float() + deltas[key])
        assert torch.equal(layer.weight, want) and torch.equal(layer.weight_scale, scale), name
        assert not torch.equal(layer.weight, kit.quantize_weight(original[key].float())[0]), name
    # kept Linears: merged, unquantized
    head = model.head.head.weight
    assert head.dtype == torch.float32
    assert torch.allclose(head, original["head.head.weight"].float() + deltas["head.head.weight"])


def test_prequantized_checkpoint_loads_the_same_tensors(tiny_ckpt, tmp_path):
    from safetensors.torch import save_file

    from wanport.checkpoints.dit_checkpoint import load_dit
    from wanport.checkpoints.safetensors_files import iter_tensors
    from wanport.errors import CheckpointError
    from wanport.precision import PRESETS

    ckpt = _tiny_dit(tiny_ckpt)
    quantizer, names = _quantizer(ckpt, "int8_w8a8")
    tensors = dict(iter_tensors(ckpt.entries))
    for name in names:
        q, s = quantizer.kernels.quantize_weight(tensors[name + ".weight"].float())
        tensors[name + ".weight"], tensors[name + ".weight_scale"] = q, s
    folder = tmp_path / "pre"
    shutil.copytree(tiny_ckpt, folder, ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    pre = _tiny_dit(str(folder))
    assert pre.prequantized == {n: "I8:channel" for n in names}
    a = load_dit(ckpt, PRESETS["fp32"], torch.device("cpu"), quantize=quantizer).state_dict()
    b = load_dit(pre, PRESETS["fp32"], torch.device("cpu"), quantize=_quantizer(pre, "int8_w8a8")[0]).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    from wanport.quant.plan import check_quant

    class Plan:
        policy = PRESETS["fp32"]
        quant = type("Q", (), {"dit": "fp8_rowwise", "keep": list(DEFAULT_KEEP), "attention": "none"})()
        loras = ()

    ckpts = type("C", (), {"experts": None, "dit": pre})()
    with pytest.raises(ConfigError, match="is I8; quant.dit fp8_rowwise stores F8_E4M3"):
        check_quant(Plan, ckpts)
    Plan.quant.dit = "none"
    with pytest.raises(ConfigError, match="holds quantized Linears"):
        check_quant(Plan, ckpts)
    del tensors[names[0] + ".weight_scale"]  # an 8-bit weight without its scale
    tensors[names[0] + ".weight"] = tensors[names[0] + ".weight"].float()
    tensors[names[1] + ".weight_scale"] = torch.ones(3, 1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="weight_scale has dtype F32 shape \\[3, 1\\]"):
        _tiny_dit(str(folder))


# ---------------------------------------------------------------- end to end

def test_tiny_pipeline_runs_quantized_and_reports_every_layer(tiny_ckpt, tmp_path):
    from wanport import cli

    argv = ["run", "--no-progress", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path,
            "output.name=q", "sample.steps=1", "sample.size=32*32", "sample.frame_num=5",
            "quant.dit=int8_w8a8", "quant.keep=[time_projection, head, blocks.1.ffn]"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "q.json").read_text())
    q = report["quant"]
    assert q["scheme"] == "int8_w8a8" and q["impl"] == "reference.emulate_int8_w8a8"
    assert report["ops"]["quant_linear"]["impl"] == "reference.emulate_int8_w8a8"
    layers = [row["name"] for row in q["layers"]["dit"]]
    want = ["blocks.%d.%s" % (b, m) for b in (0, 1) for m in ("self_attn.q", "self_attn.k", "self_attn.v",
                                                            "self_attn.o", "cross_attn.q", "cross_attn.k",
                                                            "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")]
    want = [n for n in want if not n.startswith("blocks.1.ffn")]
    assert layers == want and q["count"] == 18
    assert all(row["scheme"] == "int8_w8a8" and row["impl"] == q["impl"] for row in q["layers"]["dit"])
    assert os.path.getsize(tmp_path / "q.mp4") > 0
