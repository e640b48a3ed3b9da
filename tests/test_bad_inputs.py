"""Bad recipes and bad checkpoints: one clear message each, a non-zero exit, no traceback,
and no weight loaded (the loaders are booby-trapped)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from wanport import cli
from wanport.config import TINY_RECIPE


@pytest.fixture
def no_weight_loading(monkeypatch):
    import wanport.pipeline.t2v as t2v

    def trap(*a, **k):
        raise AssertionError("a weight loader ran before the error was raised")

    monkeypatch.setattr(t2v, "load_dit", trap)
    monkeypatch.setattr(t2v, "load_vae", trap)
    monkeypatch.setattr(t2v.WanTextEncoder, "load", trap)


def run_cli(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def write_recipe(tmp_path, ckpt, **changes):
    data = json.loads(json.dumps(TINY_RECIPE))
    data["checkpoint_dir"] = ckpt
    data["output"] = {"dir": str(tmp_path / "out")}
    for path, value in changes.items():
        node = data
        parts = path.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is _DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True))
    return str(p)


_DELETE = object()

# (case id, recipe changes, expected exit code, message fragment)
RECIPE_CASES = [
    ("unknown-top-key", {"stesp": 4}, 2, "unknown key 'stesp'"),
    ("unknown-nested-key", {"sample__stpes": 4}, 2, "did you mean 'sample.steps'"),
    ("frames-not-4n+1", {"sample__frame_num": 16}, 2, "16 is not 4n+1"),
    ("size-not-divisible", {"sample__size": "250*256"}, 2, "not divisible by 16"),
    ("size-malformed", {"sample__size": "big"}, 2, "must look like W*H"),
    ("steps-zero", {"sample__steps": 0}, 2, "sample.steps: must be > 0"),
    ("steps-wrong-type", {"sample__steps": "four"}, 2, "sample.steps: expected an integer"),
    ("shift-negative", {"sample__shift": -1.0}, 2, "sample.shift: must be > 0"),
    ("guide-zero", {"sample__guide_scale": 0}, 2, "sample.guide_scale: must be > 0"),
    ("seed-negative", {"sample__seed": -5}, 2, "sample.seed: must be in"),
    ("unknown-model", {"model": "wan2.1-t2v-13b"}, 2, "unknown model 'wan2.1-t2v-13b'"),
    ("unknown-precision", {"precision": "fp8"}, 2, "unknown preset 'fp8'"),
    ("unknown-precision-part", {"precision": {"preset": "official", "vea": "bf16"}}, 2, "precision.vea: unknown part"),
    ("unknown-solver", {"sample__solver": "ddim"}, 2, "'ddim' is not one of unipc, euler"),
    ("unknown-noise", {"sample__noise": "gpu"}, 2, "'gpu' is not one of cpu, device"),
    ("timesteps-need-euler", {"sample__timesteps": [999, 500]}, 2, "needs sample.solver: euler"),
    ("timesteps-not-decreasing", {"sample__solver": "euler", "sample__timesteps": [500, 999]}, 2,
     "strictly decreasing"),
    ("empty-prompt", {"prompt": "  "}, 2, "prompt: must not be empty"),
    ("missing-prompt", {"prompt": _DELETE}, 2, "prompt: required"),
    ("task-mismatch", {"task": "i2v"}, 2, "'i2v' is not one of t2v"),
    ("output-name-is-path", {"output__name": "a/b"}, 2, "must be a file stem"),
    ("bad-env-name", {"env": {"1BAD": "x"}}, 2, "not a valid environment variable name"),
    ("unknown-backend", {"backend": "cdua"}, 4, "unknown backend 'cdua'"),
    ("unknown-op-impl", {"ops": {"attention": "flashy"}}, 4, "unknown attention implementation 'flashy'"),
    ("unknown-op-kind", {"ops": {"atention": "math"}}, 4, "unknown op kind or call site 'atention'"),
    ("op-constraint-fails", {"ops": {"attention": "cuda.sdpa_cudnn"}}, 4, "cannot be used for self_attention"),
]


@pytest.mark.parametrize("case,changes,code,fragment", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe(case, changes, code, fragment, tmp_path, tiny_ckpt, capsys, no_weight_loading):
    recipe = write_recipe(tmp_path, tiny_ckpt, **changes)
    got, err = run_cli(capsys, ["run", recipe, "--no-progress"])
    assert got == code, err
    assert fragment in err
    assert "Traceback" not in err and err.startswith("wanport: error: ")


def test_several_problems_reported_together(tmp_path, tiny_ckpt, capsys):
    recipe = write_recipe(tmp_path, tiny_ckpt, sample__frame_num=16, sample__size="250*256", sample__steps=0)
    got, err = run_cli(capsys, ["check", recipe])
    assert got == 2 and "3 problems" in err


def test_recipe_file_missing_and_invalid_yaml(tmp_path, capsys):
    got, err = run_cli(capsys, ["check", str(tmp_path / "nope.yaml")])
    assert got == 2 and "not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample: [1, 2\n")
    got, err = run_cli(capsys, ["check", str(bad)])
    assert got == 2 and "not valid YAML" in err


def test_bad_override(capsys):
    got, err = run_cli(capsys, ["check", "sample.stepz=4"])
    assert got == 2 and "did you mean 'sample.steps'" in err


def _rewrite_shard(ckpt, fn):
    from safetensors.torch import load_file, save_file

    index = json.load(open(os.path.join(ckpt, "diffusion_pytorch_model.safetensors.index.json")))
    shard = sorted(set(index["weight_map"].values()))[0]
    path = os.path.join(ckpt, shard)
    tensors = load_file(path)
    fn(tensors, index)
    save_file(tensors, path)
    json.dump(index, open(os.path.join(ckpt, "diffusion_pytorch_model.safetensors.index.json"), "w"))
    return shard


def _drop_key(t, index):
    key = sorted(t)[0]
    del t[key]
    del index["weight_map"][key]


def _extra_key(t, index):
    import torch

    shard = next(iter(index["weight_map"].values()))
    t["blocks.0.bonus.weight"] = torch.zeros(3)
    index["weight_map"]["blocks.0.bonus.weight"] = shard


def _reshape_key(t, index):
    key = [k for k in sorted(t) if k.endswith("ffn.0.weight")][0]
    t[key] = t[key][:-1].contiguous()


def corrupt(kind, ckpt):
    j = lambda *p: os.path.join(ckpt, *p)  # noqa: E731
    if kind == "config-missing":
        os.remove(j("config.json"))
    elif kind == "config-invalid-json":
        open(j("config.json"), "w").write("{dim: 256")
    elif kind == "config-missing-key":
        cfg = json.load(open(j("config.json")))
        del cfg["num_heads"]
        json.dump(cfg, open(j("config.json"), "w"))
    elif kind == "config-model-type":
        cfg = json.load(open(j("config.json")))
        cfg["model_type"] = "i2v"
        json.dump(cfg, open(j("config.json"), "w"))
    elif kind == "config-heads-indivisible":
        cfg = json.load(open(j("config.json")))
        cfg["num_heads"] = 3
        json.dump(cfg, open(j("config.json"), "w"))
    elif kind == "shard-missing":
        os.remove(j("diffusion_pytorch_model-00002-of-00002.safetensors"))
    elif kind == "index-corrupt":
        open(j("diffusion_pytorch_model.safetensors.index.json"), "w").write("[]")
    elif kind == "tensor-missing":
        _rewrite_shard(ckpt, _drop_key)
    elif kind == "tensor-extra":
        _rewrite_shard(ckpt, _extra_key)
    elif kind == "tensor-misshaped":
        _rewrite_shard(ckpt, _reshape_key)
    elif kind == "safetensors-header-corrupt":
        path = j("diffusion_pytorch_model-00001-of-00002.safetensors")
        data = bytearray(open(path, "rb").read())
        data[8:40] = b"\x00" * 32
        open(path, "wb").write(bytes(data))
    elif kind == "safetensors-truncated":
        path = j("diffusion_pytorch_model-00001-of-00002.safetensors")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "vae-missing":
        os.remove(j("Wan2.1_VAE.pth"))
    elif kind == "vae-corrupt":
        open(j("Wan2.1_VAE.pth"), "wb").write(os.urandom(4096))
    elif kind == "vae-key-missing":
        import torch

        sd = torch.load(j("Wan2.1_VAE.pth"), weights_only=True)
        del sd["decoder.head.2.bias"]
        torch.save(sd, j("Wan2.1_VAE.pth"))
    elif kind == "t5-missing":
        os.remove(j("models_t5_umt5-xxl-enc-bf16.pth"))
    elif kind == "tokenizer-missing":
        import shutil

        shutil.rmtree(j("google"))
    elif kind == "dir-missing":
        import shutil

        shutil.rmtree(ckpt)


# (corruption, expected message fragments: the file and the key or problem)
CKPT_CASES = [
    ("dir-missing", ["not found", "wanport make-tiny"]),
    ("config-missing", ["config.json: missing"]),
    ("config-invalid-json", ["config.json: not valid JSON"]),
    ("config-missing-key", ["config.json: missing key(s) num_heads"]),
    ("config-model-type", ["model_type 'i2v' is not supported yet"]),
    ("config-heads-indivisible", ["not divisible by num_heads 3"]),
    ("shard-missing", ["00002-of-00002.safetensors", "is missing"]),
    ("index-corrupt", ["index.json", "unreadable shard index"]),
    ("tensor-missing", ["missing tensor(s)", "DiT weights"]),
    ("tensor-extra", ["unexpected tensor 'blocks.0.bonus.weight'", "00001-of-00002.safetensors"]),
    ("tensor-misshaped", ["ffn.0.weight", "has shape [511, 256], expected [512, 256]"]),
    ("safetensors-header-corrupt", ["00001-of-00002.safetensors", "corrupt safetensors header"]),
    ("safetensors-truncated", ["00001-of-00002.safetensors", "truncated"]),
    ("vae-missing", ["Wan2.1_VAE.pth: file not found"]),
    ("vae-corrupt", ["Wan2.1_VAE.pth: unreadable checkpoint"]),
    ("vae-key-missing", ["Wan2.1_VAE.pth", "decoder.head.2.bias"]),
    ("t5-missing", ["models_t5_umt5-xxl-enc-bf16.pth"]),
    ("tokenizer-missing", ["umt5-xxl"]),
]


@pytest.mark.parametrize("kind,fragments", CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_bad_checkpoint(kind, fragments, tmp_path, tiny_copy, capsys, no_weight_loading):
    corrupt(kind, tiny_copy)
    recipe = write_recipe(tmp_path, tiny_copy)
    got, err = run_cli(capsys, ["run", recipe, "--no-progress"])
    assert got == 3, err
    for fragment in fragments:
        assert fragment in err
    assert "Traceback" not in err


def test_wrong_model_for_checkpoint(tmp_path, tiny_ckpt, capsys, no_weight_loading):
    recipe = write_recipe(tmp_path, tiny_ckpt, model="wan2.1-t2v-1.3b", sample__size="832*480")
    got, err = run_cli(capsys, ["run", recipe])
    assert got == 3 and "not a wan2.1-t2v-1.3b checkpoint" in err and "dim 256 (expected 1536)" in err


def test_count_of_distinct_bad_inputs():
    """The issue asks for at least 15 distinct bad recipes and checkpoints."""
    assert len(RECIPE_CASES) + len(CKPT_CASES) + 4 >= 15
    fragments = [c[3] for c in RECIPE_CASES] + [" ".join(c[1]) for c in CKPT_CASES]
    assert len(set(fragments)) == len(fragments)


def test_overrides_after_options_are_applied(tmp_path, tiny_ckpt, capsys, no_weight_loading):
    recipe = write_recipe(tmp_path, tiny_ckpt)
    got, err = run_cli(capsys, ["run", recipe, "--no-progress", "sample.steps=0"])
    assert got == 2 and "sample.steps: must be > 0" in err
    with pytest.raises(SystemExit):
        cli.main(["run", recipe, "--bogus"])
