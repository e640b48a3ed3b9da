"""wanport dump + compare on the reference backend: identical runs compare identical, a divergence
planted at a known block and step is found there, corrupt or mismatched dumps give clear errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from wanport.cli import main
from wanport.dump.compare import compare_dumps, markdown
from wanport.dump.format import FILES, MANIFEST, comparable_recipe
from wanport.dump.metrics import psnr, ssim, tensor_metrics
from wanport.dump.observer import DumpObserver, fingerprint_index, parse_indices, resolve_indices
from wanport.dump.record import dump_recipe
from wanport.errors import ConfigError, DumpError
from wanport.io.plots import plots_available

STEPS, PLANT_STEP, PLANT_BLOCK = 3, 1, 1


def _overrides(ckpt):
    return ["checkpoint_dir=%s" % ckpt, "sample.steps=%d" % STEPS, "sample.size=64*48", "sample.frame_num=5"]


class PlantedObserver(DumpObserver):
    """Perturbs the cond output of block PLANT_BLOCK at step PLANT_STEP before it is recorded
    (its hook runs first), as a kernel bug there would."""

    def _attach(self, model):
        if id(model) not in self._seen:
            def plant(module, inputs, output):
                if self._step == PLANT_STEP and self._branch == "cond":
                    return output + 0.5 * output.std()
            model.blocks[PLANT_BLOCK].register_forward_hook(plant)
        super()._attach(model)


@pytest.fixture(scope="module")
def dumps(tiny_ckpt, tmp_path_factory):
    """Dump A (through the CLI), dump B (the same recipe, another output folder), dump C (planted)."""
    root = tmp_path_factory.mktemp("dumps")
    a, b, c = (str(root / n) for n in "abc")
    cli = ["dump", "--no-progress", "--out", a, "--blocks", "0,-1", "--steps", "0,-1"]
    assert main(cli + _overrides(tiny_ckpt)) == 0
    dump_recipe(None, _overrides(tiny_ckpt), b, blocks="0", steps="all")
    dump_recipe(None, _overrides(tiny_ckpt), c, blocks="all", steps="1", observer_class=PlantedObserver)
    return a, b, c


def _copy(src, tmp_path, name="copy"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(path, fn):
    p = os.path.join(path, MANIFEST)
    with open(p) as f:
        m = json.load(f)
    fn(m)
    with open(p, "w") as f:
        json.dump(m, f)


def test_dump_folder_is_complete_and_versioned(dumps):
    a = dumps[0]
    assert {MANIFEST, "run.mp4", "run.json"} | set(FILES.values()) <= set(os.listdir(a))
    with open(os.path.join(a, MANIFEST)) as f:
        m = json.load(f)
    assert m["format"] == "wanport.dump" and m["version"] == 1
    assert m["hardware"]["backend"] == "reference" and m["versions"]["torch"] == torch.__version__
    assert len(m["recipe_hash"]) == 64 and len(m["compare_hash"]) == 64
    assert "backend" not in m["compare_recipe"] and "checkpoint_dir" not in m["compare_recipe"]
    assert m["ops"]["self_attention"] == "reference.math"
    d = m["dump"]
    assert d["num_steps"] == STEPS and d["num_blocks"] == 2 and d["branches"] == ["cond", "uncond"]
    assert d["blocks"] == [0, 1] and d["steps"] == [0, STEPS - 1]
    assert sorted(m["files"]["blocks.safetensors"]) == sorted(
        "%s.step%03d.block%03d" % (br, s, b) for br in ("cond", "uncond") for s in (0, 2) for b in (0, 1))
    assert m["files"]["latents.safetensors"] == ["latent.step%03d" % i for i in range(STEPS)]
    from safetensors.torch import load_file

    stats = load_file(os.path.join(a, "stats.safetensors"))
    assert stats["stats.cond"].shape == (STEPS, 2, 6) and stats["fingerprint.cond"].shape == (STEPS, 2, 256)
    assert torch.isfinite(stats["stats.uncond"]).all() and stats["present.uncond"].tolist() == [1] * STEPS
    video = load_file(os.path.join(a, "video.safetensors"))["video"]
    assert video.dtype == torch.uint8 and tuple(video.shape) == (5, 48, 64, 3)


def test_identical_dumps_compare_identical(dumps, tmp_path, capsys):
    a, b, _ = dumps
    out = tmp_path / "cmp"
    assert main(["compare", a, b, "--out", str(out)]) == 0
    assert "**identical**" in capsys.readouterr().out
    result = json.loads((tmp_path / "cmp.json").read_text())
    assert result["identical"] and result["first_divergence"] is None and result["first_latent_divergence"] is None
    assert result["video"]["psnr_db"] is None and result["video"]["ssim"] == 1.0 and result["video"]["max_abs"] == 0
    assert [t["key"] for t in result["tensors"]] == ["cond.step000.block000", "cond.step002.block000",
                                                     "uncond.step000.block000", "uncond.step002.block000"]
    assert "cond.step000.block001" in result["only_in_a"] and "cond.step001.block000" in result["only_in_b"]
    for suffix in ("-blocks-cond", "-latents"):
        assert os.path.isfile("%s%s.png" % (out, suffix)) == plots_available()


def test_compare_finds_the_planted_divergence(dumps):
    a, _, c = dumps
    result = compare_dumps(c, a)
    assert not result["identical"]
    first = result["first_divergence"]
    assert (first["step"], first["branch"], first["block"]) == (PLANT_STEP, "cond", PLANT_BLOCK)
    assert first["rel_err"] > 0.05 and first["t"] == result["latents"][PLANT_STEP]["t"]
    rel = result["blocks"]["rel_err"]["cond"]
    assert rel[0] == [0.0, 0.0] and rel[PLANT_STEP][0] == 0.0  # bit-identical before the plant
    assert result["latents"][0]["identical"] and not result["latents"][PLANT_STEP]["identical"]
    assert result["video"]["ssim"] <= 1.0


def test_different_recipes_are_refused_unless_allowed(dumps, tmp_path):
    a, b, _ = dumps
    other = _copy(b, tmp_path)

    def change_prompt(m):
        m["compare_recipe"]["prompt"] = "a different prompt"
        m["compare_hash"] = "0" * 64

    _edit_manifest(other, change_prompt)
    with pytest.raises(DumpError, match="different recipes.*prompt"):
        compare_dumps(a, other)
    result = compare_dumps(a, other, allow_different_recipe=True)
    assert any("prompt" in w for w in result["warnings"])


def test_machine_keys_do_not_change_the_compare_hash():
    raw = {"model": "m", "prompt": "p", "backend": "cuda", "ops": {"attention": "x"}, "env": {"A": "1"},
           "checkpoint_dir": "/data/a", "output": {"dir": "o"}, "sample": {"seed": 1}}
    other = dict(raw, backend="ascend", ops={}, env={}, checkpoint_dir="/mnt/b", output={"dir": "p"})
    assert comparable_recipe(raw) == comparable_recipe(other) == {"model": "m", "prompt": "p", "sample": {"seed": 1}}
    assert comparable_recipe(dict(raw, sample={"seed": 2})) != comparable_recipe(raw)


def test_corrupt_or_incomplete_dumps_give_clear_errors(dumps, tmp_path):
    a = dumps[0]
    missing = _copy(a, tmp_path, "missing")  # a tensor listed in the manifest is not in its file
    from safetensors.torch import load_file, save_file

    lat = load_file(os.path.join(missing, "latents.safetensors"))
    del lat["latent.step001"]
    save_file(lat, os.path.join(missing, "latents.safetensors"))
    with pytest.raises(DumpError, match="'latent.step001' listed in dump.json is missing from latents.safetensors"):
        compare_dumps(missing, a)

    truncated = _copy(a, tmp_path, "truncated")
    with open(os.path.join(truncated, "stats.safetensors"), "r+b") as f:
        f.truncate(4)
    with pytest.raises(DumpError, match="dump A .*corrupt"):
        compare_dumps(truncated, a)

    gone = _copy(a, tmp_path, "gone")
    os.unlink(os.path.join(gone, "video.safetensors"))
    with pytest.raises(DumpError, match="video.safetensors listed in dump.json is missing"):
        compare_dumps(a, gone)

    unfinished = _copy(a, tmp_path, "unfinished")
    os.unlink(os.path.join(unfinished, MANIFEST))
    with pytest.raises(DumpError, match="dump B .*no dump.json"):
        compare_dumps(a, unfinished)

    future = _copy(a, tmp_path, "future")
    _edit_manifest(future, lambda m: m.update(version=99))
    with pytest.raises(DumpError, match="format version 99"):
        compare_dumps(a, future)

    broken = _copy(a, tmp_path, "broken")
    with open(os.path.join(broken, MANIFEST), "w") as f:
        f.write("{not json")
    with pytest.raises(DumpError, match="not readable JSON"):
        compare_dumps(broken, a)
    with pytest.raises(DumpError, match="folder not found"):
        compare_dumps(str(tmp_path / "nowhere"), a)
    assert main(["compare", str(tmp_path / "nowhere"), a]) == 6


def test_dump_settings_are_checked_before_anything_runs(tiny_ckpt, tmp_path):
    out = tmp_path / "d"
    with pytest.raises(ConfigError, match="--blocks: 2 out of range; there are 2"):
        dump_recipe(None, _overrides(tiny_ckpt), str(out), blocks="0,2")
    with pytest.raises(ConfigError, match="--steps: 'x' is not a list"):
        dump_recipe(None, _overrides(tiny_ckpt), str(out), steps="x")
    assert not out.exists()  # nothing loaded, nothing written
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty and holds no dump"):
        dump_recipe(None, _overrides(tiny_ckpt), str(busy))


def test_indices_fingerprints_and_metrics():
    assert parse_indices("0,39", "b") == (0, 39) and parse_indices("0-2,-1", "b") == (0, 1, 2, -1)
    assert parse_indices("all", "b") is None and parse_indices(None, "b") == ()
    assert resolve_indices((0, -1), 40, "b") == (0, 39) and resolve_indices(None, 3, "b") == (0, 1, 2)
    i = fingerprint_index(10 ** 6, 64, 0)
    assert torch.equal(i, fingerprint_index(10 ** 6, 64, 0)) and int(i.max()) < 10 ** 6
    assert torch.equal(fingerprint_index(5, 64, 0), torch.arange(5))
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    m = tensor_metrics(x, x)
    assert m["identical"] and m["cosine"] == 1.0 and m["rel_l2"] == 0.0
    m = tensor_metrics(x * 1.01, x)
    assert abs(m["rel_l2"] - 0.01) < 1e-6 and not m["identical"]
    m = tensor_metrics(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    assert m["nonfinite"] == 1 and m["rel_l2"] is None
    v = torch.randint(0, 256, (3, 32, 40, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    noisy = (v.to(torch.int16) + 8).clamp(0, 255).to(torch.uint8)
    assert psnr(v, v) is None and ssim(v, v) == 1.0
    assert 25 < psnr(noisy, v) < 40 and ssim(noisy, v) < 1.0


# ---------------------------------------------------------------------------- dumps of parallel runs
# 80x48, one frame: 5x3 = 15 tokens, which no degree divides (the sequence ranks carry padding)
PAR_STEPS = 2


def _par_overrides(ckpt):
    return ["checkpoint_dir=%s" % ckpt, "sample.steps=%d" % PAR_STEPS, "sample.size=80*48", "sample.frame_num=1",
            "precision=fp32"]


# fp32 arithmetic (eps 2^-23): a parallel layout only reorders sums -- the attention's key blocks
# merged through the log-sum-exp (ring), per-head attention on a head slice (Ulysses), token rows
# of the matmuls in other shapes -- so one block's output may move by a few (8) ulps x sqrt(K) for
# the longest reduction (the FFN, K = 512); the differences accumulate through the 2 blocks of a
# forward, the 2 steps, and the guidance combine of the two branches (x2) that feeds the next step.
FP32_BOUND = 8 * 2.0 ** -23 * 512 ** 0.5 * 2 * PAR_STEPS * 2  # 1.7e-4; measured: 0 (Ulysses), ~1e-6 (ring)


@pytest.fixture(scope="module")
def one_process_dump(tiny_ckpt, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one") / "dump")
    dump_recipe(None, _par_overrides(tiny_ckpt), out, blocks="all", steps="all")
    return out


@pytest.mark.parametrize("layout", [{"ulysses": 2}, {"cfg": 2, "ring": 2}], ids=["ulysses2", "cfg2xring2"])
def test_parallel_dump_matches_a_one_process_dump(layout, tiny_ckpt, one_process_dump, tmp_path):
    """Sequence chunks (with padding) reassembled in token order; with cfg 2 each branch comes from
    its own rank group; the ring merges key blocks through the log-sum-exp (not bit-identical)."""
    import _parallel_workers as W

    out = tmp_path / "par"
    world = 1
    for v in layout.values():
        world *= v
    proc, seconds = W.torchrun(world, ["dump", "--no-progress", "--out", out, "--blocks", "all", "--steps", "all"]
                               + _par_overrides(tiny_ckpt) + ["parallel.%s=%d" % kv for kv in layout.items()],
                               timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 300 and proc.stdout.count("wrote dump") == 1  # rank 0 alone reports and writes
    with open(os.path.join(out, MANIFEST)) as f:
        m = json.load(f)
    p = m["parallel"]
    assert p["world"] == world and len(p["ranks"]) == world
    assert all(p[k] == v for k, v in layout.items())
    assert m["dump"]["branches"] == ["cond", "uncond"]
    result = compare_dumps(str(out), one_process_dump)  # the parallel keys are no recipe difference
    assert not result["warnings"]
    assert result["layout"]["a"]["processes"] == world and result["layout"]["b"]["processes"] == 1
    assert result["first_divergence"] is None and result["first_latent_divergence"] is None
    rel = [v for rows in result["blocks"]["rel_err"].values() for row in rows for v in row]
    assert len(rel) == 2 * PAR_STEPS * 2 and all(v is not None and v <= FP32_BOUND for v in rel)
    assert len(result["tensors"]) == 2 * PAR_STEPS * 2  # every block output, padding dropped
    for t in result["tensors"]:
        assert "error" not in t and t["rel_l2"] <= FP32_BOUND, t
    for r in result["latents"]:
        assert r["rel_l2"] <= FP32_BOUND
    from safetensors.torch import load_file

    sa, sb = load_file(os.path.join(out, FILES["stats"])), load_file(os.path.join(one_process_dump, FILES["stats"]))
    for branch in ("cond", "uncond"):
        a, b = sa["stats." + branch], sb["stats." + branch]  # [steps, blocks, (mean std abs_max l2 nan inf)]
        assert torch.equal(a[..., 4:], b[..., 4:]) and not a[..., 4:].any()
        assert ((a[..., 1:4] - b[..., 1:4]).abs() <= FP32_BOUND * b[..., 1:4].abs()).all()
        rms = b[..., 3] / (15 * 256) ** 0.5  # l2 / sqrt(numel): 15 tokens x 256 channels
        assert ((a[..., 0] - b[..., 0]).abs() <= FP32_BOUND * rms).all()
    assert "layout (not a recipe difference): A %d processes" % world in markdown(result)


def test_parallel_recipe_dumped_in_one_process_says_how_to_launch(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="needs 2 process.*torchrun --standalone --nproc_per_node 2 -m wanport dump"):
        dump_recipe(None, _par_overrides(tiny_ckpt) + ["parallel.ulysses=2"], str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_gathered_shards_are_put_back_in_token_order_per_branch(monkeypatch):
    """The reassembly on rank 0 for cfg 2 x ring 2 (rank = cfg_index * 2 + sp_rank): each CFG
    group's chunks in sequence-rank order, padding cut; a forward every group ran alike (guidance
    off) is recorded once."""
    import wanport.dump.gather as G

    full = {"cond": torch.randn(1, 7, 3), "uncond": torch.randn(1, 7, 3)}  # 7 tokens, padded to 8
    padded = {k: torch.cat([v, v[:, -1:]], dim=1) for k, v in full.items()}
    layout = G.GatherLayout(cfg=2, ulysses=1, ring=2, rank=0)

    def fake_all_gather(parts, x):
        for r in range(4):
            branch = ("cond", "uncond")[r // 2] if fake_all_gather.cfg_parallel else "cond"
            parts[r].copy_(padded[branch][:, (r % 2) * 4:(r % 2 + 1) * 4])

    monkeypatch.setattr(G.dist, "all_gather", fake_all_gather)
    fake_all_gather.cfg_parallel = True
    got = layout.reassemble(torch.zeros(1, 4, 3), ["cond", "cond", "uncond", "uncond"], tokens=7)
    assert [b for b, _ in got] == ["cond", "uncond"]
    assert all(torch.equal(t, full[b]) for b, t in got)
    fake_all_gather.cfg_parallel = False
    got = layout.reassemble(torch.zeros(1, 4, 3), ["cond"] * 4, tokens=7)
    assert [b for b, _ in got] == ["cond"] and torch.equal(got[0][1], full["cond"])
    assert G.GatherLayout(cfg=2, ulysses=1, ring=2, rank=3).reassemble(torch.zeros(1, 4, 3), ["cond"] * 4, 7) == []

    class Model:
        class cfg:
            patch_size = (1, 2, 2)

    assert G.token_count(Model(), torch.zeros(1, 16, 3, 6, 10)) == 45 and G.token_count(object(), torch.zeros(1)) is None
