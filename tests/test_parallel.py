"""Parallelism on CPU with gloo and several processes: every layout gives the single-process
result, including sequence lengths no degree divides; failures end every rank; bad layouts are
refused before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

import pytest
import torch
import torch.multiprocessing as mp

import _parallel_workers as W
from _float_bounds import chain_terms, f32_bound
from wanport import cli


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def dit_reference():
    cfg, x, t, ctx = W.dit_case(False)
    return W.dit_forward(cfg, x, t, ctx)


BASE = ["sample.size=80*48", "sample.frame_num=5", "sample.steps=3", "precision=fp32", "output.name=par"]

#: the pipeline layouts checked against the one-process video: id -> overrides
LAYOUTS = {
    "cfg2": ["parallel.cfg=2"],
    "ulysses2": ["parallel.ulysses=2"],
    "ring2+vae": ["parallel.ring=2", "parallel.vae=true"],
    "cfg2xulysses2+vae": ["parallel.cfg=2", "parallel.ulysses=2", "parallel.vae=true"],
    "ulysses2xring2": ["parallel.ulysses=2", "parallel.ring=2"],
}
SEQUENCE = [(2, 1), (1, 2), (4, 1), (1, 4), (2, 2)]


def _world(overrides) -> int:
    world = 1
    for item in overrides:
        if item.split("=")[0] in ("parallel.cfg", "parallel.ulysses", "parallel.ring"):
            world *= int(item.split("=")[1])
    return world


def _fsdp2() -> bool:
    from wanport.parallel.fsdp import _fully_shard

    return _fully_shard() is not None


def _jobs(world: int, root, ckpt):
    """Every multi-process job of this module with ``world`` ranks: name -> (worker, args)."""
    jobs = {}
    for u, r in SEQUENCE:
        if u * r == world:
            jobs["seq-u%dr%d" % (u, r)] = ("sequence_parallel_worker", (u, r, False))
    if world == 4:
        jobs["seq-per-token"] = ("sequence_parallel_worker", (2, 2, True))
    jobs["vae"] = ("vae_worker", (8,))
    for name, layout in LAYOUTS.items():
        if _world(layout) == world:
            os.makedirs(os.path.join(root, name), exist_ok=True)
            jobs["pipe-" + name] = ("pipeline_worker", (BASE + layout + [
                "checkpoint_dir=%s" % ckpt, "output.dir=%s" % os.path.join(root, name)],))
    if world == 2:
        jobs["api-cfg2"] = ("api_worker", (BASE + ["parallel.cfg=2", "checkpoint_dir=%s" % ckpt,
                                                   "output.dir=%s" % os.path.join(root, "api")],))
        if _fsdp2():
            jobs["fsdp-dit"] = ("fsdp_worker", ())
            jobs["pipe-fsdp"] = ("pipeline_worker", (BASE + [
                "parallel.cfg=2", "parallel.dit_fsdp=true", "parallel.t5_fsdp=true",
                "checkpoint_dir=%s" % ckpt, "output.dir=%s" % os.path.join(root, "fsdp")],))
    return jobs


class Batch:
    """The jobs of one world size, run in one ``mp.spawn`` (see ``W.batch_worker``); a test reads
    its job's output and fails with the job's traceback if any rank raised."""

    def __init__(self, world: int, root, ckpt):
        self.world, self.root = world, str(root)
        jobs = _jobs(world, self.root, ckpt)
        self.out = {name: os.path.join(self.root, name + ".out") for name in jobs}
        mp.spawn(W.batch_worker, nprocs=world, args=(world, [
            (worker, W.free_port(), tuple(args) + (self.out[name],)) for name, (worker, args) in jobs.items()]))

    def path(self, name: str) -> str:
        if name not in self.out:
            pytest.skip("job %s is not run here" % name)
        errors = W.batch_errors(self.out[name], self.world)
        if errors:
            pytest.fail("job %s raised:\n%s" % (name, errors), pytrace=False)
        return self.out[name]

    def load(self, name: str, rank: Optional[int] = None):
        path = self.path(name)
        return torch.load(path if rank is None else "%s.rank%d" % (path, rank))


@pytest.fixture(scope="module")
def batches(tiny_ckpt, tmp_path_factory):
    made = {}

    def get(world: int) -> Batch:
        if world not in made:
            made[world] = Batch(world, tmp_path_factory.mktemp("world%d" % world), tiny_ckpt)
        return made[world]
    return get


@pytest.mark.parametrize("ulysses,ring", SEQUENCE)
def test_sequence_parallel_dit_equals_single_process(ulysses, ring, dit_reference, batches):
    world = ulysses * ring
    batch = batches(world)
    for r in range(world):
        y = batch.load("seq-u%dr%d" % (ulysses, ring), r)
        assert y.shape == dit_reference.shape
        assert rel(y, dit_reference) <= 1e-5  # 45 tokens: padded to a multiple of the degree


@pytest.mark.parametrize("ulysses,ring", [(2, 1), (4, 1), (2, 2)])
def test_ulysses_overlap_is_bit_identical_to_the_blocking_path(ulysses, ring, batches):
    """parallel.ulysses_overlap (async all-to-alls, q/k stacked, attention per head chunk) moves
    the same values as the blocking path: equal bit for bit, and the same bytes on the wire."""
    batch = batches(ulysses * ring)
    name = "seq-u%dr%d" % (ulysses, ring)
    for r in range(ulysses * ring):
        on = batch.load(name, r)
        off = torch.load("%s.off.rank%d" % (batch.path(name), r))
        assert torch.equal(on, off["y"])
        comm = off["comm"]
        assert comm["on"]["bytes"] == comm["off"]["bytes"] > 0
        # 2 layers: blocking = 4 all-to-alls per layer; overlapped = 3 per head chunk (4 heads / u)
        # plus, with ring, the same ring passes on both paths
        chunks = 4 // ulysses
        if ring == 1:
            assert comm["off"]["calls"] == 2 * 4 + 1 and comm["on"]["calls"] == 2 * 3 * chunks + 1  # + the gather
        assert comm["on"]["seconds"] >= 0 and comm["off"]["seconds"] > 0
        # parallel.ulysses_exchange: an exchange that hands out its own send buffers (as the cuda
        # copy-engine one does, from a pool reused after each wait) carries every overlapped
        # all-to-all and gives the same bits; its buffers start as NaN, so a send that bypassed
        # them, or one read back before it was written, would show
        assert torch.equal(off["staged"], on)
        if ring == 1:
            assert off["staging"]["starts"] == 2 * 3 * chunks
            assert off["staging"]["buffers"] < off["staging"]["starts"]  # reused from the pool


def test_sequence_parallel_per_token_timesteps(batches):
    cfg, x, t, ctx = W.dit_case(True)
    ref = W.dit_forward(cfg, x, t, ctx)
    assert rel(batches(4).load("seq-per-token", 0), ref) <= 1e-5


@pytest.mark.parametrize("world", [2, 4])
def test_vae_parallel_decode_and_encode_equal_single_device(world, batches):
    vae = W.vae_case(8)
    z = torch.randn(1, 16, 3, 9, 7, generator=torch.Generator().manual_seed(3))
    frames = torch.randn(1, 3, 5, 72, 56, generator=torch.Generator().manual_seed(4)).clamp(-1, 1)
    ref_video, ref_latent = vae.decode(z), vae.encode(frames)
    batch = batches(world)
    results = [batch.load("vae", r) for r in range(world)]
    # the same sums as the one-rank decode; only the conv kernels' summation order may differ
    # with the shard's shape (oneDNN blocking, the conv2d fold of small convs)
    bound = f32_bound(chain_terms(vae.decoder, 32 + 2 * 63))  # attention: C + 2 x the 9x7 keys
    assert rel(results[0]["video"], ref_video) <= bound  # 9 latent rows: uneven shards
    assert rel(results[0]["video_cl"], ref_video) <= bound  # channels-last padded inputs
    assert all(r["video"] is None and r["video_cl"] is None for r in results[1:])
    for r in results:
        assert rel(r["latent"], ref_latent) <= 1e-5


@pytest.mark.parametrize("world", [2, 4])
def test_vae_parallel_phases_count_every_exchange(world, batches):
    """33 halo exchanges per latent frame (every spatial conv of the Wan2.1 decoder), one K/V
    all-gather per frame, one output gather; each inner rank sends twice an edge rank's halo
    bytes; the timed account's compute is the decode less its communication."""
    results = [batches(world).load("vae", r) for r in range(world)]
    for rank, r in enumerate(results):
        for report in (r["phases"], r["untimed"]):
            assert report["halo"]["calls"] == 33 * 3
            assert report["attention"]["calls"] == 3
            assert report["gather"]["calls"] == 1 and report["decode"]["calls"] == 1
            assert (report["gather"]["bytes_sent"] > 0) == (rank > 0)  # everyone sends to rank 0
        assert r["phases"]["halo"]["bytes_sent"] == r["untimed"]["halo"]["bytes_sent"]
        timed = r["phases"]
        assert timed["timed"] and not r["untimed"]["timed"] and "s" not in r["untimed"]["halo"]
        assert 0 < timed["halo"]["s"] + timed["attention"]["s"] < timed["decode"]["s"]
        assert timed["compute"]["s"] == pytest.approx(
            timed["decode"]["s"] - timed["halo"]["s"] - timed["attention"]["s"], abs=1e-4)
    edge = results[0]["phases"]["halo"]["bytes_sent"]
    assert edge > 0 and results[-1]["phases"]["halo"]["bytes_sent"] == edge
    for r in results[1:-1]:
        assert r["phases"]["halo"]["bytes_sent"] == 2 * edge


@pytest.fixture(scope="module")
def pipeline_reference(tiny_ckpt, tmp_path_factory):
    import wanport.io.video as video_io
    from wanport.config import load_recipe
    from wanport.pipeline.run import run

    out = tmp_path_factory.mktemp("single")
    got = {}
    real = video_io.write_mp4
    video_io.write_mp4 = lambda v, p, fps: (got.__setitem__("video", v.clone()), real(v, p, fps))
    try:
        cfg, raw = load_recipe(None, BASE + ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % out])
        run(cfg, raw, progress=False)
    finally:
        video_io.write_mp4 = real
    return got["video"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_pipeline_video_equals_single_process(layout, pipeline_reference, batches):
    world = _world(LAYOUTS[layout])
    batch = batches(world)
    got = batch.load("pipe-" + layout)
    assert rel(got["video"], pipeline_reference) <= 1e-5
    par = got["report"]["parallel"]
    assert par["world"] == world and len(par["ranks"]) == world
    assert all(r["comm_s"] >= 0 and r["comm_calls"] > 0 for r in par["ranks"])
    folder = os.path.join(batch.root, layout)
    assert os.path.exists(os.path.join(folder, "par.mp4")) and os.path.exists(os.path.join(folder, "par.json"))


def test_pipeline_api_cfg_parallel_two_calls(pipeline_reference, batches):
    """`wanport.Pipeline` under two gloo processes (CFG parallel): every rank builds the same
    pipeline and calls generate with the same arguments; rank 0 gets the videos, equal to the
    single-process run; two calls share one process group, ended by close()."""
    got = batches(2).load("api-cfg2")
    assert rel(got["first"], pipeline_reference) <= 1e-5
    assert got["second"].shape == got["first"].shape and not torch.equal(got["second"], got["first"])
    assert got["report"]["seed"] == 3 and got["report"]["pipeline"]["call"] == 2
    assert got["report"]["parallel"]["world"] == 2


def test_a_failing_rank_ends_every_rank_within_the_timeout(tmp_path):
    port = W.free_port()
    procs = []
    start = time.time()
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-c", W.failing_worker_script(), "15"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    codes = [p.wait(timeout=120) for p in procs]
    elapsed = time.time() - start
    assert codes[0] != 0 and codes[1] != 0
    assert elapsed < 15 + 60  # the bound plus start-up
    assert "should not get here" not in procs[0].stdout.read()


@pytest.mark.parametrize("overrides,fragment", [
    (["parallel.ulysses=8", "model=wan2.1-t2v-1.3b", "sample.size=832*480"],
     "8 does not divide the 12 attention heads of wan2.1-t2v-1.3b"),
    (["parallel.cfg=3"], "parallel.cfg: 3 is not one of 1, 2"),
    (["parallel.cfg=2", "sample.guide_scale=1.0"], "guidance is off"),
    (["parallel.ring=0"], "parallel.ring: must be >= 1"),
    (["parallel.vae=true"], "parallel.vae: true needs several processes"),
    (["parallel.t5_fsdp=true", "parallel.t5_cpu=true", "parallel.ulysses=2"], "exclude each other"),
    (["parallel.timeout_s=0", "parallel.ulysses=2"], "parallel.timeout_s: must be > 0"),
])
def test_invalid_parallel_layouts_are_refused_before_loading(overrides, fragment, tiny_ckpt, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = cli.main(["check", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path] + overrides)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err


def test_a_parallel_recipe_run_as_one_process_says_how_to_launch(tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = cli.main(["run", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path, "parallel.ulysses=2"])
    err = capsys.readouterr().err
    assert code == 2 and "needs 2 processes" in err and "torchrun --nproc_per_node 2" in err


def test_tiny_checkpoint_heads_checked_once_known(tiny_ckpt, tmp_path, capsys, monkeypatch):
    code = cli.main(["check", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path, "parallel.ulysses=4"])
    err = capsys.readouterr().err
    assert code == 2 and "4 does not divide the 2 attention heads" in err


def test_nproc_is_the_layout_product():
    from wanport.config import load_recipe
    from wanport.parallel.config import world_size

    cfg, _ = load_recipe(None, ["parallel.cfg=2", "parallel.ulysses=2", "parallel.ring=2"])
    assert world_size(cfg.parallel) == 8


def test_fsdp_sharded_dit_computes_the_same_function(batches):
    """Weights sharded per block across 2 ranks (FSDP2): each rank holds about half of them, and the
    forward equals the unsharded one."""
    from wanport.models.dit import WanDiT
    from wanport.models.dit.requirements import dit_requirements
    from wanport.precision import PRESETS
    from wanport.registry import discover, resolve_ops

    pytest.importorskip("torch.distributed.fsdp")
    from wanport.parallel.fsdp import _fully_shard

    if _fully_shard() is None:
        pytest.skip("torch without FSDP2")
    cfg, x, t, ctx = W.dit_case(False)
    reg = discover()
    table = resolve_ops(reg, reg.backends["reference"], dit_requirements(cfg, PRESETS["official"], "cpu"))
    model = WanDiT.random(cfg, PRESETS["official"], torch.device("cpu"), seed=11).bind_ops(table)
    with torch.no_grad():
        ref = model(x, t, ctx)
    total = sum(p.numel() for p in model.parameters())
    batch = batches(2)
    for r in range(2):
        got = batch.load("fsdp-dit", r)
        # the same weights and math; another process (thread count, shapes after the all-gather) may
        # accumulate in another float32 order: √K·eps32 over the DiT's summed products
        attention = cfg.num_layers * (2 * (cfg.dim // cfg.num_heads) + 2 * (45 + 512))  # 45 tokens, 512 text rows
        assert rel(got["y"], ref) <= f32_bound(chain_terms(model, attention))
        assert 0.45 * total < got["local_params"] < 0.55 * total


def test_fsdp_pipeline_run_equals_single_process(pipeline_reference, batches):
    """dit_fsdp + t5_fsdp with CFG parallel: weights sharded across the 2 ranks, same video."""
    from wanport.parallel.fsdp import _fully_shard

    if _fully_shard() is None:
        pytest.skip("torch without FSDP2")
    got = batches(2).load("pipe-fsdp")
    assert rel(got["video"], pipeline_reference) <= 1e-5


def test_init_process_group_gets_the_device_where_torch_takes_it():
    import datetime

    from wanport.parallel.mesh import init_kwargs

    def new_torch(backend=None, init_method=None, timeout=None, device_id=None):
        pass

    def torch_2_1(backend=None, init_method=None, timeout=None):  # no device_id yet
        pass

    accel = torch.device("meta", 1)  # any device with an index stands for an accelerator here
    got = init_kwargs(30, accel, new_torch)
    assert got == {"timeout": datetime.timedelta(seconds=30), "device_id": accel}
    assert "device_id" not in init_kwargs(30, accel, torch_2_1)
    assert "device_id" not in init_kwargs(30, torch.device("cpu"), new_torch)  # the host: nothing to bind
    assert "device_id" not in init_kwargs(30, None, new_torch)


def test_shutdown_tears_the_group_down_once_and_is_idempotent(monkeypatch):
    import torch.distributed as dist

    from wanport.parallel.mesh import init_mesh, shutdown

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(W.free_port()))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    shutdown()  # nothing started: a no-op
    init_mesh(1, 1, 1, "gloo", 30, device=lambda: torch.device("cpu"))
    assert dist.is_initialized()
    shutdown()
    assert not dist.is_initialized()
    shutdown()  # again (e.g. at exit after an explicit call): still fine


def test_bench_scaling_under_torchrun_reports_once_with_every_rank(tmp_path):
    """2 gloo processes: completes within the bound, rank 0 alone prints and writes (one set of
    files), its rows carry every rank's figures, and the process group is torn down."""
    stem = tmp_path / "scaling"
    proc, seconds = W.torchrun(2, ["bench", "scaling", "--model", "wan2.1-t2v-tiny", "--size", "64*64",
                                   "--frames", "5", "--backend", "reference", "--warmup", "1", "--repeats", "1",
                                   "--layouts", "u2", "cfg2", "r4", "--ulysses-overlap", "both", "--out", stem],
                                  timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 300
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["scaling.json", "scaling.md"] + (["scaling.png"] if "scaling.png" in proc.stdout else []))
    assert proc.stdout.count("| layout | world |") == 1 and proc.stdout.count("wrote ") == 1
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["layout"] for r in result["rows"]] == ["1", "u2", "u2", "cfg2"]  # r4 is not of world 2
    off, on = result["rows"][1:3]
    assert off["ulysses_overlap"] is False and on["ulysses_overlap"] is True and on["equal_to_overlap_off"] is True
    assert on["comm_bytes_per_step"] == off["comm_bytes_per_step"] > 0  # the same values moved, scheduled otherwise
    for row in result["rows"][1:]:
        assert [r["rank"] for r in row["ranks"]] == [0, 1]
        assert all(r["comm_s_per_step"] > 0 and r["comm_calls_per_step"] > 0 and r["comm_bytes_per_step"] > 0
                   for r in row["ranks"])
        assert row["comm_s_per_step"] == max(r["comm_s_per_step"] for r in row["ranks"])
        for r in row["ranks"]:  # compute + exposed communication = the step
            assert abs(r["compute_s_per_step"] + r["comm_s_per_step"] - r["step_s"]) < 1e-3
    assert "| u2 (overlap on, same bits as off) |" in proc.stdout
    assert "destroy_process_group" not in proc.stderr


def test_ulysses_exchange_choice_and_its_errors():
    """parallel.ulysses_exchange: the config takes the two values; collective is the
    torch.distributed one; copy_engine needs a runtime that offers it and names the fix when it
    does not (the host runtime has none; the cuda one says why it cannot run without a device)."""
    from wanport.config.loader import load_recipe
    from wanport.errors import ConfigError
    from wanport.parallel.exchange import CollectiveExchange, make_exchange
    from wanport.reference.runtime import HostRuntime

    cfg, _ = load_recipe(None, ["parallel.ulysses_exchange=copy_engine"])
    assert cfg.parallel.ulysses_exchange == "copy_engine"
    with pytest.raises(ConfigError, match="ulysses_exchange"):
        load_recipe(None, ["parallel.ulysses_exchange=nvlink"])
    assert isinstance(make_exchange("collective", HostRuntime(), None), CollectiveExchange)
    with pytest.raises(ConfigError, match="set parallel.ulysses_exchange: collective") as e:
        make_exchange("copy_engine", HostRuntime(), None)
    assert "no copy-engine exchange" in str(e.value)
    with pytest.raises(ConfigError, match="must be one of collective, copy_engine"):
        make_exchange("nvlink", HostRuntime(), None)
    from wanport_cuda.runtime import CudaRuntime

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            make_exchange("copy_engine", CudaRuntime(), None)


def test_exchange_layout_moves_keep_every_bit():
    """The overlapped Ulysses path moves its layouts as 8-byte words where strides allow: any bit
    pattern (NaN payloads included) arrives unchanged, and layouts that do not allow it fall back."""
    from wanport.parallel.sequence import _move

    bits = torch.randint(-2 ** 15, 2 ** 15, (1, 6, 2, 3, 4, 16), dtype=torch.int16, generator=torch.Generator().manual_seed(0))
    x = bits.view(torch.bfloat16)
    for i in range(3):  # the q/k pack of exchange_qk: rank-major, q and k side by side per token
        send = torch.empty(2, 1, 6, 2, 4, 16, dtype=torch.bfloat16)
        src = x[:, :, :, i].permute(2, 0, 1, 3, 4)
        _move(send[:, :, :, 1], src)
        assert torch.equal(send[:, :, :, 1].view(torch.int16), src.view(torch.int16))
    odd = bits[..., :6].view(torch.float16)  # 6 half-words per row: not whole 8-byte words
    dst = torch.empty(odd.shape, dtype=torch.float16)
    _move(dst, odd)
    assert torch.equal(dst.view(torch.int16), odd.view(torch.int16))
    shifted = bits.view(torch.bfloat16).reshape(-1)[1:65]  # an offset of one element
    dst = torch.empty(64, dtype=torch.bfloat16)
    _move(dst, shifted)
    assert torch.equal(dst.view(torch.int16), shifted.view(torch.int16))
