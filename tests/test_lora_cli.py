"""make-tiny --lora, the distilled recipe catalogue, and the LoRA part of bench pipeline (no GPU)."""

from __future__ import annotations

import os

import pytest

from wanport.cli import main
from wanport.config import load_recipe
from wanport.config.distilled import DISTILLED_RECIPES
from wanport.config.validate import plan_run

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def test_distilled_recipes_are_listed_and_valid():
    listed = {r for r, _, _ in DISTILLED_RECIPES}
    on_disk = {f for f in os.listdir(os.path.join(REPO, "recipes")) if "distill" in f}
    assert listed == on_disk
    for recipe, model, _ in DISTILLED_RECIPES:
        cfg, _ = load_recipe(os.path.join(REPO, "recipes", recipe))
        plan = plan_run(cfg)
        assert plan.preset.name == model and plan.solver == "distill" and not plan.needs_uncond
        assert plan.denoising_step_list == (1000, 750, 500, 250) and plan.shift == 5.0
        if plan.preset.experts:
            assert [s.expert for s in plan.loras] == ["high", "low"]


def test_make_tiny_lora_writes_every_format(tmp_path, capsys):
    from wanport.checkpoints.tiny import tiny_dit_config
    from wanport.lora.match import ModelStructure, inspect_lora
    from wanport.lora.spec import LoraSpec
    from wanport.lora.tiny import TINY_FORMATS, structure_for

    d = str(tmp_path / "i2v")
    assert main(["make-tiny", d, "--model", "wan2.1-i2v", "--lora"]) == 0
    structure = structure_for(tiny_dit_config("wan2.1-i2v"))
    assert isinstance(structure, ModelStructure)
    for stem, fmt, _ in TINY_FORMATS:
        path = os.path.join(d, "lora", stem + ".safetensors")
        lora = inspect_lora(LoraSpec(path, name=stem), structure)
        assert lora.fmt == fmt and lora.keys_applied == lora.keys_total
        assert "blocks.1.cross_attn.k_img.weight" in lora.params()
    assert "tiny LoRA" in capsys.readouterr().out


def test_bench_lora_synthesis_and_overhead_table(tmp_path):
    from wanport.bench import lora as lora_bench
    from wanport.bench.pipeline import _step_values
    from wanport.bench.random_weights import RandomWeights
    from wanport.lora.match import inspect_lora
    from wanport.lora.spec import LoraSpec
    from wanport.lora.tiny import structure_for

    cfg, _ = load_recipe(os.path.join(REPO, "recipes", "tiny-t2v-distill-lora.yaml"), ["lora=[]"])
    plan = plan_run(cfg)
    assert _step_values(plan, 1) == {"denoising_step_list": [1000]}  # a distill recipe: its first entries
    weights = RandomWeights(0)
    info = lora_bench.synthesise(plan, weights, 8, 0, str(tmp_path))
    ckpts = weights.inspect(plan)
    lora = inspect_lora(LoraSpec(info["path"], name="r"), structure_for(ckpts.dit.config, plan.policy))
    assert {t.rank for t in lora.lowrank} == {8} and all(t.scale == 1.0 for t in lora.lowrank)
    assert len(lora.lowrank) == info["layers"] and "head.head.weight" in lora.params()
    assert lora_bench.lora_override(info, "unmerged").endswith("merge: false}]")

    def summary(denoise, step):
        return {"stages_s": {"denoise": denoise, "load": 1.0}, "step_median_s": step, "steps_s": [step] * 4,
                "compute_s": denoise + 1, "peak_memory_gib": 1.0, "run_report": {"lora": None}}

    section = lora_bench.overhead(summary(10.0, 2.5), {"merged": summary(10.1, 2.52),
                                                        "unmerged": summary(11.0, 2.75)}, info)
    assert section["modes"]["merged"]["denoise_overhead_pct"] == pytest.approx(1.0)
    assert section["modes"]["unmerged"]["step_overhead_pct"] == pytest.approx(10.0)
    text = lora_bench.markdown(section)
    assert "| merged |" in text and "+10.00 %" in text


def test_check_exits_3_for_a_bad_lora(tiny_ckpt, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    path = str(tmp_path / "nan.safetensors")
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.full((2, 256), float("nan")),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(256, 2)}, path)
    code = main(["check", "checkpoint_dir=%s" % tiny_ckpt, "lora=[{path: %s}]" % path])
    err = capsys.readouterr().err
    assert code == 3 and path in err and "blocks.0.self_attn.q.lora_down.weight" in err and "NaN" in err
