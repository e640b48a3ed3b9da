"""LoRA adapters: every key format round-trips, merged == unmerged, strength 0 is the base model bit
for bit, strengths change on a loaded model, and every bad LoRA file fails before weights load."""

from __future__ import annotations

import copy
import os
import struct

import pytest
import torch

from _diffusers_keys import dit_official_to_diffusers
from wanport.checkpoints.tiny import tiny_dit_config
from wanport.errors import CheckpointError, ConfigError
from wanport.lora.formats import detect_format, official_to_diffusers
from wanport.lora.match import ModelStructure, inspect_lora, match_lora
from wanport.lora.merge import Merger
from wanport.lora.side_path import attach, lora_strengths, set_lora_strengths
from wanport.lora.spec import LoraSpec
from wanport.lora.tiny import TINY_FORMATS, write_lora
from wanport.models.dit import WanDiT
from wanport.models.dit.requirements import dit_requirements
from wanport.precision import PRESETS
from wanport.registry import discover, resolve_ops

CPU = torch.device("cpu")
FP32 = PRESETS["fp32"]


@pytest.fixture(scope="module")
def registry():
    return discover()


_MODELS = {}


def model_for(registry, layout, policy=FP32, seed=3):
    """A random tiny DiT bound to the reference ops (built once per module; a fresh copy each call)."""
    key = (layout, policy.name, seed)
    if key not in _MODELS:
        cfg = tiny_dit_config(layout)
        model = WanDiT.random(cfg, policy, CPU, seed=seed)
        _MODELS[key] = model.bind_ops(resolve_ops(registry, registry.backends["reference"],
                                                  dit_requirements(cfg, policy, "cpu")))
    return copy.deepcopy(_MODELS[key])


def structure_of(layout, policy=FP32):
    return ModelStructure.of(WanDiT.on_meta(tiny_dit_config(layout), policy))


def inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.out_dim, 2, 4, 4, generator=g)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    kw = {}
    if cfg.in_dim != cfg.out_dim:
        kw["y"] = torch.randn(1, cfg.in_dim - cfg.out_dim, 2, 4, 4, generator=g)
    if cfg.image_dim is not None:
        kw["clip_fea"] = torch.randn(1, 257, cfg.image_dim, generator=g)
    return x, torch.tensor([700.0]), ctx, kw


def forward(model, seed=0):
    x, t, ctx, kw = inputs(model.cfg, seed)
    with torch.no_grad():
        return model(x, t, ctx, **kw)


# ------------------------------------------------------------------ key formats


def test_diffusers_names_agree_with_the_independent_key_map(registry):
    s = structure_of("wan2.1-i2v")
    assert {"blocks.0.cross_attn.k_img", "blocks.1.cross_attn.v_img", "img_emb.proj.1", "head.head"} <= s.linears
    for module in s.linears:
        assert official_to_diffusers(module) + ".weight" == dit_official_to_diffusers(module + ".weight"), module


@pytest.mark.parametrize("layout", ["wan2.1-t2v", "wan2.1-i2v"])
@pytest.mark.parametrize("stem,fmt,spelling", TINY_FORMATS)
def test_every_format_round_trips(registry, tmp_path, layout, stem, fmt, spelling):
    """A LoRA written in each format and merged == the deltas applied directly (fp32, max abs <= 1e-6)."""
    model = model_for(registry, layout)
    structure = ModelStructure.of(model)
    path = str(tmp_path / (stem + ".safetensors"))
    expected = write_lora(path, structure, fmt, rank=4, seed=11, spelling=spelling)
    lora = inspect_lora(LoraSpec(path, 1.0, name=stem), structure)
    assert lora.fmt == fmt and lora.keys_applied == lora.keys_total and not lora.unmatched
    assert lora.params() == set(expected)
    if layout == "wan2.1-i2v":  # the image cross-attention and img_emb, which peers are known to miss
        assert {"blocks.0.cross_attn.k_img.weight", "blocks.0.cross_attn.v_img.weight",
                "img_emb.proj.1.weight", "img_emb.proj.3.weight"} <= lora.params()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    merged = Merger([lora]).merge_into(copy.deepcopy(model))
    for key, value in merged.state_dict().items():
        want = base[key] + expected[key] if key in expected else base[key]
        assert (value - want).abs().max().item() <= 1e-6, key
        if key not in expected:
            assert torch.equal(value, base[key]), key


def test_official_spellings_detected_and_alpha_scales(registry, tmp_path):
    structure = structure_of("wan2.1-t2v")
    assert detect_format(["diffusion_model.blocks.0.self_attn.q.lora_A.weight"])[0] == "official"
    assert detect_format(["blocks.0.self_attn.q.lora_down.weight"])[0] == "official"
    assert detect_format(["transformer.blocks.0.attn1.to_q.lora_A.weight"])[0] == "diffusers"
    assert detect_format(["lora_unet_blocks_0_self_attn_q.lora_down.weight"])[0] == "kohya"
    down, up = torch.randn(2, 256), torch.randn(256, 2)
    base = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up}
    no_alpha = match_lora(LoraSpec("x"), base, structure)
    with_alpha = match_lora(LoraSpec("x"), dict(base, **{"diffusion_model.blocks.0.self_attn.q.alpha":
                                                         torch.tensor(1.0)}), structure)
    assert no_alpha.lowrank[0].scale == 1.0 and with_alpha.lowrank[0].scale == 0.5


# ------------------------------------------------------------------ merged vs unmerged, strengths


def _lora(registry, tmp_path, layout, name, strength, merge, policy=FP32, magnitude=0.3, seed=5):
    structure = structure_of(layout, policy)
    path = str(tmp_path / (name + ".safetensors"))
    write_lora(path, structure, "official", rank=4, seed=seed, magnitude=magnitude)
    return inspect_lora(LoraSpec(path, strength, merge=merge, name=name), structure)


@pytest.mark.parametrize("layout", ["wan2.1-t2v", "wan2.1-i2v"])
def test_merged_equals_unmerged_fp32(registry, tmp_path, layout):
    base = model_for(registry, layout)
    ref = forward(base)
    a = _lora(registry, tmp_path, layout, "a", 0.7, True)
    b = _lora(registry, tmp_path, layout, "b", 0.7, False)
    merged = Merger([a]).merge_into(copy.deepcopy(base))
    unmerged = copy.deepcopy(base)
    attach(unmerged, [b])
    m, u = forward(merged), forward(unmerged)
    change = (m - ref).abs().max().item()
    diff = (m - u).abs().max().item()
    # float32 sums of the same terms in another order: a few ulps of the activations
    assert diff <= 1e-4 * max(1.0, ref.abs().max().item()), (diff, change)
    assert change > 1000 * diff  # the LoRA does change the output


def test_merged_equals_unmerged_within_bf16_rounding(registry, tmp_path):
    bf16 = PRESETS["bf16"]
    base = model_for(registry, "wan2.1-t2v", bf16)
    exact = model_for(registry, "wan2.1-t2v", FP32)  # same seed: the same weights before rounding
    a = _lora(registry, tmp_path, "wan2.1-t2v", "a", 1.0, True, bf16)
    b = _lora(registry, tmp_path, "wan2.1-t2v", "b", 1.0, False, bf16)
    e = _lora(registry, tmp_path, "wan2.1-t2v", "e", 1.0, True, FP32)
    m = forward(Merger([a]).merge_into(copy.deepcopy(base)))
    unmerged = copy.deepcopy(base)
    attach(unmerged, [b])
    u = forward(unmerged)
    ref = forward(Merger([e]).merge_into(exact))
    # both bf16 paths sit within bf16 rounding of the float32 merged model, and of each other
    err_m = ((m - ref).norm() / ref.norm()).item()
    err_u = ((u - ref).norm() / ref.norm()).item()
    eps = 2.0 ** -8
    assert err_m < 8 * eps and err_u < 8 * eps, (err_m, err_u)
    assert ((m - u).norm() / ref.norm()).item() < 8 * eps


def test_strength_zero_is_the_base_model_bit_for_bit(registry, tmp_path):
    base = model_for(registry, "wan2.1-i2v")
    ref = forward(base)
    zero_m = _lora(registry, tmp_path, "wan2.1-i2v", "zm", 0.0, True)
    zero_u = _lora(registry, tmp_path, "wan2.1-i2v", "zu", 0.0, False)
    merged = Merger([zero_m]).merge_into(copy.deepcopy(base))
    assert torch.equal(forward(merged), ref)
    unmerged = copy.deepcopy(base)
    attach(unmerged, [zero_u])
    assert torch.equal(forward(unmerged), ref)


def test_strengths_change_on_a_loaded_model(registry, tmp_path):
    base = model_for(registry, "wan2.1-t2v")
    ref = forward(base)
    lora = _lora(registry, tmp_path, "wan2.1-t2v", "style", 1.0, False)
    model = copy.deepcopy(base)
    attach(model, [lora])
    at_one = forward(model)
    set_lora_strengths(model, {"style": 0.0})
    assert lora_strengths(model) == {"style": 0.0}
    assert torch.equal(forward(model), ref)  # diffs re-merged from the kept base values: exact
    set_lora_strengths(model, {"style": 0.5})
    half = Merger([_lora(registry, tmp_path, "wan2.1-t2v", "style", 0.5, True)]).merge_into(copy.deepcopy(base))
    assert (forward(model) - forward(half)).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    set_lora_strengths(model, {"style": 1.0})
    assert torch.equal(forward(model), at_one)
    with pytest.raises(KeyError, match="not attached unmerged"):
        set_lora_strengths(model, {"other": 1.0})


# ------------------------------------------------------------------ bad LoRA files fail before load


def _recipe(ckpt, out, extra):
    from wanport.config import load_recipe

    return load_recipe(None, ["checkpoint_dir=%s" % ckpt, "output.dir=%s" % out, "sample.size=32*32",
                              "sample.frame_num=5", "sample.steps=2"] + list(extra))


def _check(ckpt, out, lora_entry, extra=()):
    from wanport.pipeline.common import check_run

    cfg, _ = _recipe(ckpt, out, ["lora=[%s]" % lora_entry] + list(extra))
    return check_run(cfg)


def _write(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, path)
    return path


@pytest.fixture(scope="module")
def good(tiny_ckpt, tmp_path_factory):
    from wanport.checkpoints.dit_checkpoint import inspect_dit

    structure = ModelStructure.of(WanDiT.on_meta(inspect_dit(tiny_ckpt, FP32).config, FP32))
    path = str(tmp_path_factory.mktemp("lora") / "good.safetensors")
    write_lora(path, structure, "official", rank=4, seed=1)
    from safetensors.torch import load_file

    return load_file(path)


def test_no_weight_is_read_while_checking(tiny_ckpt, tmp_path, good, monkeypatch):
    import wanport.checkpoints.dit_checkpoint as dc

    monkeypatch.setattr(dc, "load_dit", lambda *a, **k: pytest.fail("weights loaded"))
    path = _write(str(tmp_path / "ok.safetensors"), good)
    _check(tiny_ckpt, tmp_path, "{path: %s}" % path)


def _bad_cases(good, tmp_path):
    q = "diffusion_model.blocks.0.self_attn.q"
    cases = {}
    cases["unmatched"] = (dict(good, **{"diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight":
                                        torch.zeros(4, 256),
                                        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight":
                                        torch.zeros(256, 4)}), "cross_attn.k_img")
    cases["rank"] = (dict(good, **{q + ".lora_up.weight": torch.zeros(256, 5)}), q + ".lora_up.weight")
    cases["shape"] = (dict(good, **{q + ".lora_down.weight": torch.zeros(4, 255)}), q + ".lora_down.weight")
    cases["diff_shape"] = (dict(good, **{q + ".diff_b": torch.zeros(255)}), q + ".diff_b")
    nan = good[q + ".lora_up.weight"].clone()
    nan[3, 1] = float("nan")
    cases["nan"] = (dict(good, **{q + ".lora_up.weight": nan}), q + ".lora_up.weight")
    inf = good[q + ".lora_down.weight"].clone()
    inf[0, 0] = float("inf")
    cases["inf"] = (dict(good, **{q + ".lora_down.weight": inf}), q + ".lora_down.weight")
    half = {k: v for k, v in good.items() if k != q + ".lora_down.weight"}
    cases["no_partner"] = (half, q + ".lora_up.weight")
    mixed = dict(good, **{"lora_unet_blocks_0_self_attn_k.lora_down.weight": torch.zeros(4, 256)})
    cases["mixed"] = (mixed, "lora_unet_blocks_0_self_attn_k")
    cases["int"] = (dict(good, **{q + ".alpha": torch.tensor(2, dtype=torch.int64)}), q + ".alpha")
    return cases


@pytest.mark.parametrize("case", ["unmatched", "rank", "shape", "diff_shape", "nan", "inf", "no_partner", "mixed",
                                  "int"])
def test_bad_lora_tensors_fail_naming_file_and_key(tiny_ckpt, tmp_path, good, case):
    tensors, key = _bad_cases(good, tmp_path)[case]
    path = _write(str(tmp_path / ("bad-%s.safetensors" % case)), tensors)
    with pytest.raises(CheckpointError) as info:
        _check(tiny_ckpt, tmp_path, "{path: %s}" % path)
    assert path in str(info.value) and key in str(info.value), str(info.value)
    assert info.value.exit_code == 3


def test_unmatched_keys_are_a_warning_when_not_strict(tiny_ckpt, tmp_path, good):
    from wanport.config.validate import plan_run
    from wanport.lora.weights import LoraWeights
    from wanport.pipeline.weights import CHECKPOINT

    tensors, key = _bad_cases(good, tmp_path)["unmatched"]
    path = _write(str(tmp_path / "extra.safetensors"), tensors)
    cfg, _ = _recipe(tiny_ckpt, tmp_path, ["lora=[{path: %s}]" % path, "lora_strict=false"])
    weights = LoraWeights(CHECKPOINT)
    with pytest.warns(UserWarning, match="match no layer"):
        weights.inspect(plan_run(cfg))
    (row,) = weights.report()
    assert row["keys_applied"] == len(good) and row["keys_in_file"] == len(good) + 2
    assert {u["key"] for u in row["unmatched_keys"]} == {k for k in tensors if "k_img" in k}


@pytest.mark.parametrize("kind", ["truncated", "not_safetensors", "missing", "empty_header"])
def test_bad_lora_files_fail_naming_the_file(tiny_ckpt, tmp_path, good, kind):
    path = str(tmp_path / ("%s.safetensors" % kind))
    if kind == "truncated":
        _write(path, good)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
    elif kind == "not_safetensors":
        torch.save(good, path)
    elif kind == "empty_header":
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", 2) + b"{}")
    with pytest.raises(CheckpointError) as info:
        _check(tiny_ckpt, tmp_path, "{path: %s}" % path)
    assert path in str(info.value)


def test_recipe_entries_checked(tiny_ckpt, tmp_path):
    from wanport.config.validate import plan_run

    with pytest.raises(ConfigError, match="strength"):
        _recipe(tiny_ckpt, tmp_path, ["lora=[{path: a.safetensors, strength: high}]"])
    with pytest.raises(ConfigError, match="unknown key 'weight'"):
        _recipe(tiny_ckpt, tmp_path, ["lora=[{path: a.safetensors, weight: 1}]"])
    cfg, _ = _recipe(tiny_ckpt, tmp_path, ["lora=[{path: a.safetensors, expert: high}]"])
    with pytest.raises(ConfigError, match="one DiT"):
        plan_run(cfg)
    cfg, _ = _recipe(tiny_ckpt, tmp_path, ["lora=[a.safetensors, {path: a.safetensors, strength: 0.5}]"])
    plan = plan_run(cfg)
    assert [(s.name, s.strength, s.merge) for s in plan.loras] == [("a", 1.0, True), ("a#2", 0.5, True)]


def test_two_expert_entries_name_their_expert(tiny_layout, tmp_path):
    from wanport.config import load_recipe
    from wanport.config.validate import plan_run
    from wanport.lora.weights import LoraWeights
    from wanport.pipeline.weights import CHECKPOINT

    ckpt = tiny_layout("wan2.2-t2v-a14b")
    recipe = os.path.join(os.path.dirname(__file__), os.pardir, "recipes", "tiny-wan2.2-t2v-a14b.yaml")
    structure = ModelStructure.of(WanDiT.on_meta(tiny_dit_config("wan2.2-t2v-a14b"), FP32))
    high, low = str(tmp_path / "high.safetensors"), str(tmp_path / "low.safetensors")
    write_lora(high, structure, "diffusers", seed=1)
    write_lora(low, structure, "kohya", seed=2)
    cfg, _ = load_recipe(recipe, ["checkpoint_dir=%s" % ckpt, "lora=[{path: %s}]" % high])
    with pytest.raises(ConfigError, match="expert: high | low | both"):
        plan_run(cfg)
    cfg, _ = load_recipe(recipe, ["checkpoint_dir=%s" % ckpt, "lora=[{path: %s, expert: high}, "
                                  "{path: %s, expert: low, merge: false}]" % (high, low)])
    weights = LoraWeights(CHECKPOINT)
    weights.inspect(plan_run(cfg))
    assert {k: [l.spec.name for l in v] for k, v in weights.loaded.items()} == {"high_noise": ["high"],
                                                                                 "low_noise": ["low"]}
    rows = weights.report()
    assert [(r["format"], r["experts"], r["merged"]) for r in rows] == [("diffusers", ["high_noise"], True),
                                                                         ("kohya", ["low_noise"], False)]


def test_merge_at_load_rounds_once_to_the_policy_dtype(tiny_ckpt, tmp_path):
    """The checkpoint path: deltas added to the tensors as read, in float32, one rounding to bf16."""
    from wanport.checkpoints.dit_checkpoint import inspect_dit, load_dit
    from wanport.checkpoints.safetensors_files import iter_tensors
    from wanport.config.validate import plan_run
    from wanport.lora.weights import LoraWeights
    from wanport.models.dit import param_dtype
    from wanport.pipeline.weights import CHECKPOINT

    policy = PRESETS["official"]
    ckpt = inspect_dit(tiny_ckpt, policy)
    structure = ModelStructure.of(WanDiT.on_meta(ckpt.config, policy))
    path = str(tmp_path / "k.safetensors")
    expected = write_lora(path, structure, "kohya", seed=4)
    cfg, _ = _recipe(tiny_ckpt, tmp_path, ["lora=[{path: %s, strength: 0.5}]" % path])
    weights = LoraWeights(CHECKPOINT)
    ckpts = weights.inspect(plan_run(cfg))
    model = weights.load_dit(ckpts.dit, policy, CPU)
    got = model.state_dict()
    for key, raw in iter_tensors(ckpt.entries):
        dtype = param_dtype(key, policy)
        want = (raw.float() + 0.5 * expected[key]).to(dtype) if key in expected else raw.to(dtype)
        assert got[key].dtype == dtype
        assert (got[key].float() - want.float()).abs().max().item() <= 2.0 ** -7 * want.float().abs().max().item(), key
    assert load_dit is not None
