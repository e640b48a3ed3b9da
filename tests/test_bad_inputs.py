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
    """The task modules load every model through their weight source (``prep.weights``)."""
    from wanport.pipeline.weights import CHECKPOINT

    def trap(*a, **k):
        raise AssertionError("a weight loader ran before the error was raised")

    for name in ("load_text_encoder", "load_dit", "load_vae", "load_clip"):
        monkeypatch.setattr(CHECKPOINT, name, trap)


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
    ("task-mismatch", {"task": "i2v"}, 2, "task: 'i2v' does not match model wan2.1-t2v-tiny"),
    ("task-unknown", {"task": "v2v"}, 2, "'v2v' is not one of t2v, i2v, ti2v"),
    ("image-for-t2v", {"image": "cat.png"}, 2, "is text-to-video and takes no image"),
    ("guide-pair-one-expert", {"sample__guide_scale": [3.0, 4.0]}, 2, "has one expert; give one number"),
    ("guide-malformed", {"sample__guide_scale": [1, 2, 3]}, 2, "expected a number or a pair [low_noise, high_noise]"),
    ("boundary-one-expert", {"sample__boundary": 0.5}, 2, "the boundary is for two-expert (A14B) models"),
    ("park-bad-value", {"offload": {"park_inactive_expert": "sometimes"}}, 2, "expected auto, true or false"),
    ("output-name-is-path", {"output__name": "a/b"}, 2, "must be a file stem"),
    ("bad-env-name", {"env": {"1BAD": "x"}}, 2, "not a valid environment variable name"),
    ("unknown-backend", {"backend": "cdua"}, 4, "unknown backend 'cdua'"),
    ("unknown-op-impl", {"ops": {"attention": "flashy"}}, 4, "unknown attention implementation 'flashy'"),
    ("unknown-op-kind", {"ops": {"atention": "math"}}, 4, "unknown op kind or call site 'atention'"),
    ("op-constraint-fails", {"ops": {"attention": "cuda.sdpa_cudnn"}}, 4, "cannot be used for self_attention"),
    # non-finite numbers: one gate for every float field (tests/test_output_writes.py walks the schema)
    ("guide-nan", {"sample__guide_scale": float("nan")}, 2, "sample.guide_scale: must be a finite number"),
    ("guide-inf-in-pair", {"sample__guide_scale": [3.0, float("inf")]}, 2,
     "sample.guide_scale[1]: must be a finite number"),
    ("shift-nan", {"sample__shift": float("nan")}, 2, "sample.shift: must be a finite number"),
    ("boundary-minus-inf", {"sample__boundary": float("-inf")}, 2, "sample.boundary: must be a finite number"),
    # the output location, proven writable before anything loads
    ("output-dir-unwritable", {"output__dir": "/proc/wanport-out"}, 2, "output.dir: cannot create /proc/wanport-out"),
    ("output-name-too-long", {"output__name": "x" * 300}, 2, "bytes; this file system allows"),
    ("output-dir-is-a-file", {"output__dir": "/etc/hostname"}, 2, "exists and is not a folder"),
    ("text-with-nul", {"output__name": "a\0b"}, 2, "output.name: contains a NUL character"),
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
        cfg["model_type"] = "flf2v"
        json.dump(cfg, open(j("config.json"), "w"))
    elif kind == "config-i2v-in-dim":
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
    ("config-model-type", ["model_type 'flf2v' is not supported yet"]),
    ("config-i2v-in-dim", ["model_type 'i2v' needs in_dim = 2*out_dim + 4", "got in_dim 16"]),
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


# ------------------------------------------------------------------------------------------
# image-conditioned models and the Wan2.2 layouts


def _family_recipe(tmp_path, ckpt, name, **changes):
    """The tiny recipe of a family (recipes/tiny-<name>.yaml) pointed at ``ckpt``, with changes."""
    data = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), os.pardir, "recipes", "tiny-%s.yaml" % name)))
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


def _image(tmp_path, kind):
    from PIL import Image

    path = tmp_path / "input.png"
    if kind == "missing":
        return str(tmp_path / "nowhere.png")
    if kind == "unreadable":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    elif kind == "too-small":
        Image.new("RGB", (10, 300)).save(path)
    elif kind == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("hello")
    elif kind == "url":
        return "http://example.com/a.png"
    elif kind == "folder":
        return str(tmp_path)
    elif kind == "extreme-aspect":
        Image.new("RGB", (8000, 16)).save(path)
    return str(path)


# (image problem, family, expected exit code, message fragment)
IMAGE_CASES = [
    ("missing", "wan2.1-i2v", 5, "nowhere.png: file not found"),
    ("unreadable", "wan2.1-i2v", 5, "not an image file PIL can read"),
    ("text", "wan2.2-ti2v-5b", 5, "notes.jpg: not an image file"),
    ("too-small", "wan2.2-i2v-a14b", 5, "10x300 is too small; each side needs at least 16 pixels"),
    ("url", "wan2.1-i2v", 5, "only local files are read (no URLs)"),
    ("folder", "wan2.1-i2v", 5, "is a folder, not an image file"),
    ("extreme-aspect", "wan2.1-i2v", 5, "aspect ratio 8000x16 is too extreme"),
]


@pytest.mark.parametrize("kind,family,code,fragment", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_image(kind, family, code, fragment, tmp_path, tiny_layout, capsys, no_weight_loading):
    recipe = _family_recipe(tmp_path, tiny_layout(family), family, image=_image(tmp_path, kind))
    got, err = run_cli(capsys, ["run", recipe, "--no-progress"])
    assert got == code, err
    assert fragment in err
    assert "Traceback" not in err and err.startswith("wanport: error: ")


def test_i2v_needs_an_image(tmp_path, tiny_layout, capsys, no_weight_loading):
    recipe = _family_recipe(tmp_path, tiny_layout("wan2.1-i2v"), "wan2.1-i2v", image=_DELETE)
    got, err = run_cli(capsys, ["check", recipe])
    assert got == 2 and "is image-to-video and needs an input image" in err


def _drop_tensor(folder, key):
    from safetensors.torch import load_file, save_file

    index_path = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    index = json.load(open(index_path))
    shard = index["weight_map"].pop(key)
    tensors = load_file(os.path.join(folder, shard))
    del tensors[key]
    save_file(tensors, os.path.join(folder, shard))
    json.dump(index, open(index_path, "w"))


def _copy(tiny_layout, layout, tmp_path):
    import shutil

    dst = str(tmp_path / "ckpt")
    shutil.copytree(tiny_layout(layout), dst)
    return dst


def _layout_corrupt(kind, ckpt):
    import shutil

    import torch

    j = lambda *p: os.path.join(ckpt, *p)  # noqa: E731
    if kind == "expert-folder-missing":
        shutil.rmtree(j("low_noise_model"))
    elif kind == "expert-tensor-missing":
        _drop_tensor(j("high_noise_model"), "blocks.1.ffn.2.bias")
    elif kind == "expert-config-missing":
        os.remove(j("low_noise_model", "config.json"))
    elif kind == "experts-differ":
        cfg = json.load(open(j("low_noise_model", "config.json")))
        cfg["eps"] = 1e-5
        json.dump(cfg, open(j("low_noise_model", "config.json"), "w"))
    elif kind == "clip-missing":
        os.remove(j("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"))
    elif kind == "clip-key-missing":
        path = j("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
        sd = torch.load(path, weights_only=True)
        del sd["visual.transformer.1.attn.to_qkv.bias"]
        torch.save(sd, path)
    elif kind == "clip-truncated":
        path = j("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 3])
    elif kind == "image-attention-missing":
        _drop_tensor(ckpt, "blocks.0.cross_attn.k_img.weight")
    elif kind == "vae22-missing-vae21-present":
        os.replace(j("Wan2.2_VAE.pth"), j("Wan2.1_VAE.pth"))
    elif kind == "vae22-key-missing":
        path = j("Wan2.2_VAE.pth")
        sd = torch.load(path, weights_only=True)
        del sd["decoder.upsamples.1.upsamples.3.time_conv.weight"]
        torch.save(sd, path)


# (layout, corruption, model to run (None: the layout's tiny model), message fragments)
LAYOUT_CASES = [
    ("wan2.2-t2v-a14b", "expert-folder-missing", None, ["low_noise_model: expert folder missing", "high_noise_model/"]),
    ("wan2.2-i2v-a14b", "expert-tensor-missing", None, ["missing tensor(s) 'blocks.1.ffn.2.bias'", "high_noise_model"]),
    ("wan2.2-t2v-a14b", "expert-config-missing", None, ["low_noise_model/config.json: missing"]),
    ("wan2.2-t2v-a14b", "experts-differ", None, ["the two experts differ (eps 1e-06 vs 1e-05)"]),
    ("wan2.2-t2v-a14b", "none", "wan2.1-t2v-tiny", ["holds high_noise_model/ expert folders", "single DiT"]),
    ("wan2.1-t2v", "none", "wan2.2-t2v-a14b-tiny", ["high_noise_model: expert folder missing"]),
    ("wan2.1-i2v", "clip-missing", None, ["models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth: file not found"]),
    ("wan2.1-i2v", "clip-key-missing", None, ["missing key 'visual.transformer.1.attn.to_qkv.bias'"]),
    ("wan2.1-i2v", "clip-truncated", None, ["vit-huge-14.pth: corrupt or truncated checkpoint"]),
    ("wan2.1-i2v", "image-attention-missing", None, ["missing tensor(s) 'blocks.0.cross_attn.k_img.weight'"]),
    ("wan2.2-ti2v-5b", "vae22-missing-vae21-present", None, ["Wan2.2_VAE.pth: file not found (found Wan2.1_VAE.pth"]),
    ("wan2.2-ti2v-5b", "vae22-key-missing", None, ["Wan2.2_VAE.pth", "decoder.upsamples.1.upsamples.3.time_conv.weight"]),
]


@pytest.mark.parametrize("layout,kind,model,fragments", LAYOUT_CASES, ids=["%s-%s" % (c[0], c[1]) for c in LAYOUT_CASES])
def test_bad_layout(layout, kind, model, fragments, tmp_path, tiny_layout, tiny_ckpt, capsys, no_weight_loading,
                    input_image):
    from wanport.config import MODELS, TINY_LAYOUTS

    source = _copy(tiny_layout, layout, tmp_path) if layout != "wan2.1-t2v" else tiny_ckpt
    _layout_corrupt(kind, source)
    model = model or TINY_LAYOUTS[layout]
    family = next(k for k, v in TINY_LAYOUTS.items() if v == model)
    recipe_name = "t2v" if family == "wan2.1-t2v" else family
    if recipe_name == "t2v":
        recipe = write_recipe(tmp_path, source)
    else:
        changes = {"image": input_image} if MODELS[model].image != "none" else {}
        recipe = _family_recipe(tmp_path, source, recipe_name, **changes)
    got, err = run_cli(capsys, ["run", recipe, "--no-progress"])
    assert got == 3, err
    for fragment in fragments:
        assert fragment in err
    assert "Traceback" not in err


def test_wan22_i2v_model_rejects_a_clip_dit(tmp_path, tiny_layout, capsys, no_weight_loading, input_image):
    """A Wan2.1 I2V DiT (with img_emb) in a Wan2.2 I2V expert folder: the extra keys are named."""
    import shutil

    ckpt = _copy(tiny_layout, "wan2.2-i2v-a14b", tmp_path)
    for sub in ("high_noise_model", "low_noise_model"):
        shutil.rmtree(os.path.join(ckpt, sub))
        shutil.copytree(tiny_layout("wan2.1-i2v"), os.path.join(ckpt, sub))
    recipe = _family_recipe(tmp_path, ckpt, "wan2.2-i2v-a14b", image=input_image)
    got, err = run_cli(capsys, ["check", recipe])
    assert got == 3 and "unexpected tensor 'img_emb." in err


@pytest.mark.parametrize("case,changes,code,fragment", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_check_rejects_what_run_rejects(case, changes, code, fragment, tmp_path, tiny_ckpt, capsys,
                                        no_weight_loading):
    """`check` stops every bad recipe `run` stops, with the same exit code and message."""
    recipe = write_recipe(tmp_path, tiny_ckpt, **changes)
    got, err = run_cli(capsys, ["check", recipe])
    assert got == code, err
    assert fragment in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# safetensors headers: everything the loader would refuse is refused by `check` and `run` alike,
# before any weight loads (the header is the only part read)

SHARD1 = "diffusion_pytorch_model-00001-of-00002.safetensors"
SHARD2 = "diffusion_pytorch_model-00002-of-00002.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _edit_header(path, fn):
    """Rewrite a safetensors file's header (and data) through ``fn(header, data) -> (header, data)``."""
    import struct

    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    header, data = fn(header, data)
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(blob)) + blob + data)


def _by_offset(header):
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _set(field, value_fn, which=0):
    def fn(h, d):
        key = _by_offset(h)[which]
        h[key][field] = value_fn(h[key])
        return h, d
    return fn


def _shift(which, by):
    return _set("data_offsets", lambda e: [e["data_offsets"][0] + by, e["data_offsets"][1] + by], which)


# (case id, header edit, message fragments)
HEADER_CASES = [
    ("offsets-strings", _set("data_offsets", lambda e: [str(o) for o in e["data_offsets"]]),
     ["has data_offsets ['0', ", "expected two integers"]),
    ("offsets-floats", _set("data_offsets", lambda e: [float(o) for o in e["data_offsets"]]),
     ["has data_offsets [0.0, ", "expected two integers"]),
    ("offsets-negative", _set("data_offsets", lambda e: [-4, e["data_offsets"][1]]), ["expected 0 <= begin <= end"]),
    ("offsets-reversed", _set("data_offsets", lambda e: e["data_offsets"][::-1], which=1),
     ["expected 0 <= begin <= end"]),
    ("offsets-one-number", _set("data_offsets", lambda e: [e["data_offsets"][1]]), ["expected two integers"]),
    ("offsets-overlap", _shift(1, -4), ["overlaps tensor"]),
    ("offsets-gap", lambda h, d: (_shift(-1, 4)(h, d)[0], d + b"\0" * 4),
     ["leaves a gap of 4 bytes"]),
    ("offsets-past-end", _shift(-1, 4), ["of the data, but the file holds", "truncated download?"]),
    ("span-does-not-match-shape", _set("shape", lambda e: [e["shape"][0] - 1] + e["shape"][1:]),
     ["spans", "bytes, but shape"]),
    ("shape-negative", _set("shape", lambda e: [-1] + e["shape"][1:]), ["expected a list of non-negative integers"]),
    ("shape-not-a-list", _set("shape", lambda e: "big"), ["expected a list of non-negative integers"]),
    ("dtype-unreadable", _set("dtype", lambda e: "F4"), ["dtype 'F4', which wanport cannot read"]),
    ("dtype-unknown", _set("dtype", lambda e: "Q4"), ["dtype 'Q4', which wanport cannot read"]),
    ("dtype-not-a-string", _set("dtype", lambda e: 32), ["dtype 32, which wanport cannot read"]),
    ("entry-not-an-object", lambda h, d: ({**h, _by_offset(h)[0]: "weights"}, d), ["not an object"]),
    ("entry-lacks-fields", lambda h, d: ({**h, _by_offset(h)[0]: {"dtype": "F32"}}, d),
     ["lacks shape, data_offsets"]),
    ("metadata-not-strings", lambda h, d: ({**h, "__metadata__": {"format": 1}}, d), ["__metadata__"]),
    ("trailing-bytes", lambda h, d: (h, d + b"\0" * 16), ["the tensors cover"]),
    ("header-not-utf8", lambda h, d: (b"\xff\xfe{}", d), ["corrupt safetensors header"]),
    ("header-not-an-object", lambda h, d: (b"[1, 2]", d), ["not a JSON object"]),
]


@pytest.mark.parametrize("kind,edit,fragments", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_bad_safetensors_header(kind, edit, fragments, tmp_path, tiny_copy, capsys, no_weight_loading):
    path = os.path.join(tiny_copy, SHARD1 if kind != "offsets-past-end" else SHARD2)
    _edit_header(path, edit)
    recipe = write_recipe(tmp_path, tiny_copy)
    for command in (["check", recipe], ["run", recipe, "--no-progress"]):
        got, err = run_cli(capsys, command)
        assert got == 3, (command, err)
        assert os.path.basename(path) in err and "Traceback" not in err, err
        for fragment in fragments:
            assert fragment in err, (fragment, err)


def test_header_validation_agrees_with_the_loader(tmp_path):
    """What wanport accepts, the safetensors reader reads tensor by tensor; each case above is also one
    the reader refuses (bar the dtype wanport does not use), so no refusal is spurious; and random
    header edits give either an accepted, fully readable file or one CheckpointError, never another
    exception."""
    import random

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from wanport.checkpoints.safetensors_files import read_header
    from wanport.errors import CheckpointError

    def loader_reads(path):
        try:
            with safe_open(path, framework="pt") as f:
                [f.get_tensor(k) for k in f.keys()]
            return True
        except Exception:
            return False

    tensors = {"a": torch.ones(2, 3), "b": torch.zeros(0, 4, dtype=torch.bfloat16), "c": torch.arange(5),
               "d": torch.ones(3, dtype=torch.bool), "e": torch.ones(1, dtype=torch.float16)}
    path = str(tmp_path / "ok.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    entries = read_header(path)
    assert {k: (e.shape, e.dtype) for k, e in entries.items()} == {
        "a": ((2, 3), "F32"), "b": ((0, 4), "BF16"), "c": ((5,), "I64"), "d": ((3,), "BOOL"), "e": ((1,), "F16")}
    for kind, edit, _ in HEADER_CASES:
        bad = str(tmp_path / (kind + ".safetensors"))
        save_file(tensors, bad)
        _edit_header(bad, edit)
        with pytest.raises(CheckpointError):
            read_header(bad)
        assert not loader_reads(bad) or kind == "dtype-unreadable", kind
    rng = random.Random(0)
    fuzz = str(tmp_path / "fuzz.safetensors")
    for trial in range(150):
        save_file(tensors, fuzz)

        def mutate(h, d):
            key = rng.choice(sorted(k for k in h if k != "__metadata__"))
            field = rng.choice(["data_offsets", "shape", "dtype"])
            if field == "data_offsets":
                i = rng.randrange(2)
                h[key][field][i] += rng.choice([-8, -1, 1, 4, 8])
            elif field == "shape":
                h[key][field] = [max(0, x + rng.choice([-1, 1])) for x in h[key][field]] or [1]
            else:
                h[key][field] = rng.choice(["F32", "F16", "BF16", "I64", "U8", "F64"])
            return h, d + (b"\0" * rng.choice([0, 0, 4]))

        _edit_header(fuzz, mutate)
        try:
            read_header(fuzz)
        except CheckpointError:
            continue
        assert loader_reads(fuzz), trial


# ------------------------------------------------------------------------------------------
# the shard index: strings only, files inside the checkpoint folder only


@pytest.fixture
def opened_shards(monkeypatch):
    """Every path whose safetensors header is read."""
    import wanport.checkpoints.safetensors_files as st

    seen = []
    real = st.read_header

    def spy(path):
        seen.append(os.path.realpath(path))
        return real(path)

    monkeypatch.setattr(st, "read_header", spy)
    return seen


def _remap(ckpt, fn):
    path = os.path.join(ckpt, INDEX)
    index = json.load(open(path))
    fn(index)
    json.dump(index, open(path, "w"))


def _map_shard2_to(name):
    def fn(index):
        for k, v in index["weight_map"].items():
            if v == SHARD2:
                index["weight_map"][k] = name
    return fn


def _index_corrupt(kind, ckpt, outside):
    import shutil

    first = lambda index: sorted(index["weight_map"])[0]  # noqa: E731
    if kind == "value-int":
        _remap(ckpt, lambda ix: ix["weight_map"].__setitem__(first(ix), 5))
    elif kind == "value-list":
        _remap(ckpt, lambda ix: ix["weight_map"].__setitem__(first(ix), [SHARD1]))
    elif kind == "value-null":
        _remap(ckpt, lambda ix: ix["weight_map"].__setitem__(first(ix), None))
    elif kind == "weight-map-list":
        _remap(ckpt, lambda ix: ix.__setitem__("weight_map", [SHARD1]))
    elif kind == "relative-outside":
        shutil.move(os.path.join(ckpt, SHARD2), os.path.join(outside, "outside.safetensors"))
        _remap(ckpt, _map_shard2_to("../outside/outside.safetensors"))
    elif kind == "absolute-outside":
        _remap(ckpt, _map_shard2_to("/etc/passwd"))
    elif kind == "linked-folder-outside":
        shutil.move(os.path.join(ckpt, SHARD2), os.path.join(outside, SHARD2))
        os.symlink(outside, os.path.join(ckpt, "linked"))
        _remap(ckpt, _map_shard2_to("linked/" + SHARD2))


# (index problem, message fragments)
INDEX_CASES = [
    ("value-int", ["index.json", "to 5, not to a shard file name"]),
    ("value-list", ["index.json", "not to a shard file name"]),
    ("value-null", ["index.json", "to None, not to a shard file name"]),
    ("weight-map-list", ["index.json", "'weight_map' must be a non-empty object"]),
    ("relative-outside", ["'../outside/outside.safetensors' is outside the checkpoint folder"]),
    ("absolute-outside", ["'/etc/passwd' is outside the checkpoint folder"]),
    ("linked-folder-outside", ["outside the checkpoint folder", "linked folder"]),
]


@pytest.mark.parametrize("kind,fragments", INDEX_CASES, ids=[c[0] for c in INDEX_CASES])
def test_bad_shard_index(kind, fragments, tmp_path, tiny_copy, capsys, no_weight_loading, opened_shards):
    outside = tmp_path / "outside"
    outside.mkdir()
    _index_corrupt(kind, tiny_copy, str(outside))
    recipe = write_recipe(tmp_path, tiny_copy)
    for command in (["check", recipe], ["run", recipe, "--no-progress"]):
        got, err = run_cli(capsys, command)
        assert got == 3, (command, err)
        assert "Traceback" not in err and err.startswith("wanport: error: ")
        for fragment in fragments:
            assert fragment in err, (fragment, err)
    root = os.path.realpath(tiny_copy)
    assert all(p.startswith(root + os.sep) for p in opened_shards), opened_shards  # nothing outside was read


def test_shard_file_linked_into_a_cache_is_read(tmp_path, tiny_copy, capsys):
    """A Hugging Face download keeps each big file as a link into its cache: the folder's own
    link is accepted (only the index's names are confined to the folder)."""
    import shutil

    cache = tmp_path / "hf-cache" / "blobs"
    cache.mkdir(parents=True)
    shutil.move(os.path.join(tiny_copy, SHARD2), str(cache / "0123abcd"))
    os.symlink(str(cache / "0123abcd"), os.path.join(tiny_copy, SHARD2))
    recipe = write_recipe(tmp_path, tiny_copy)
    got, err = run_cli(capsys, ["check", recipe])
    assert got == 0, err


# ------------------------------------------------------------------------------------------
# inputs that are not regular files: refused before anything opens them (a FIFO would block a
# reader forever, so each test runs under a deadline and a regression fails instead of hanging)


@pytest.fixture
def deadline():
    """Fail the test (instead of hanging the suite) when it runs longer than 60 s."""
    import signal

    def expired(signum, frame):
        raise TimeoutError("blocked on a non-regular file: the input was opened before it was checked")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _replace_by(path, what):
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    if what == "fifo":
        os.mkfifo(path)
    else:
        os.mkdir(path)


# (file in the checkpoint, replaced by, message fragment)
NOT_FILE_CASES = [
    (SHARD2, "fifo", SHARD2 + ": is a named pipe (FIFO), not a regular file"),
    (SHARD2, "folder", SHARD2 + ": is a folder, not a regular file"),
    (INDEX, "fifo", INDEX + ": is a named pipe (FIFO)"),
    ("config.json", "fifo", "config.json: is a named pipe (FIFO)"),
    ("Wan2.1_VAE.pth", "fifo", "Wan2.1_VAE.pth: is a named pipe (FIFO)"),
    ("Wan2.1_VAE.pth", "folder", "Wan2.1_VAE.pth: is a folder"),
    ("models_t5_umt5-xxl-enc-bf16.pth", "fifo", "models_t5_umt5-xxl-enc-bf16.pth: is a named pipe (FIFO)"),
    ("google/umt5-xxl/tokenizer_config.json", "fifo", "tokenizer_config.json: is a named pipe (FIFO)"),
]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
@pytest.mark.parametrize("name,what,fragment", NOT_FILE_CASES, ids=["%s-%s" % (c[0], c[1]) for c in NOT_FILE_CASES])
def test_checkpoint_file_that_is_not_a_file(name, what, fragment, tmp_path, tiny_copy, capsys, no_weight_loading,
                                           deadline):
    _replace_by(os.path.join(tiny_copy, name), what)
    recipe = write_recipe(tmp_path, tiny_copy)
    got, err = run_cli(capsys, ["check", recipe])
    assert got == 3 and fragment in err and "Traceback" not in err, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_recipe_and_image_that_are_fifos(tmp_path, tiny_layout, capsys, no_weight_loading, deadline):
    fifo = str(tmp_path / "fifo-recipe.yaml")
    os.mkfifo(fifo)
    got, err = run_cli(capsys, ["check", fifo])
    assert got == 2 and "recipe %s: is a named pipe (FIFO), not a regular file" % fifo in err, err
    image = str(tmp_path / "photo.png")
    os.mkfifo(image)
    recipe = _family_recipe(tmp_path, tiny_layout("wan2.1-i2v"), "wan2.1-i2v", image=image)
    got, err = run_cli(capsys, ["run", recipe, "--no-progress"])
    assert got == 5 and "image %s: is a named pipe (FIFO), not a regular file" % image in err, err


# ------------------------------------------------------------------------------------------
# a .pth holding pickled code: refused without running it, and without torch's advice to load it
# with the safety off


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


@pytest.mark.parametrize("name,legacy", [("Wan2.1_VAE.pth", False), ("models_t5_umt5-xxl-enc-bf16.pth", True)])
def test_pickled_code_is_refused(name, legacy, tmp_path, tiny_copy, capsys, no_weight_loading):
    import torch

    marker = tmp_path / "pwned"
    path = os.path.join(tiny_copy, name)
    state = torch.load(path, weights_only=True)
    state["payload"] = _Payload(str(marker))
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    recipe = write_recipe(tmp_path, tiny_copy)
    for command in (["check", recipe], ["run", recipe, "--no-progress"]):
        got, err = run_cli(capsys, command)
        assert got == 3, err
        assert name in err and "holds pickled code" in err and "refused" in err, err
        assert "weights_only" not in err and "Traceback" not in err, err  # torch's advice is not passed on
    assert not marker.exists()
