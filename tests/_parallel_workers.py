"""Worker functions for the multi-process (gloo, CPU) parallelism tests; spawned by
torch.multiprocessing, so they live in an importable module."""

from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def dit_case(per_token: bool = False):
    """A small DiT (4 heads of 128), inputs whose token count (45) no degree divides."""
    from wanport.models.dit import DiTConfig

    cfg = DiTConfig(dim=512, ffn_dim=1024, num_heads=4, num_layers=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 3, 6, 10, generator=g)
    if per_token:
        t = torch.randint(0, 1000, (1, 45), generator=g)
    else:
        t = torch.tensor([777])
    ctx = torch.randn(1, 512, 4096, generator=g)
    return cfg, x, t, ctx


class StagingExchange:
    """A test exchange shaped like a copy-engine one: it hands out its own send buffers (from a pool
    it reuses after each wait) and refuses a tensor it did not hand out; the moving itself is the
    collective's. Counts what went through it."""

    name = "staging"

    def __init__(self):
        from wanport.parallel.exchange import CollectiveExchange

        self.inner = CollectiveExchange()
        self.pool, self.lent = {}, {}
        self.buffers = self.starts = 0

    def send_buffer(self, shape, dtype, device):
        key = (tuple(shape), dtype)
        free = self.pool.setdefault(key, [])
        if not free:
            self.buffers += 1
            free.append(torch.full(tuple(shape), float("nan"), dtype=dtype, device=device))
        buf = free.pop()
        self.lent[buf.data_ptr()] = (key, buf)
        return buf

    def start(self, send, group):
        key, buf = self.lent.pop(send.data_ptr())
        self.starts += 1
        recv, work = self.inner.start(send, group)
        pool = self.pool

        class Done:
            def wait(self_inner):
                work.wait()
                pool[key].append(buf)

        return recv, Done()


def dit_forward(cfg, x, t, ctx, mesh=None, overlap=True, comm=None, exchange=None):
    from wanport.models.dit import WanDiT
    from wanport.models.dit.requirements import dit_requirements
    from wanport.parallel.mesh import CommClock
    from wanport.parallel.sequence import wrap_self_attention
    from wanport.precision import PRESETS
    from wanport.registry import discover, resolve_ops

    reg = discover()
    sp = mesh is not None and mesh.sp_degree > 1
    reqs = dit_requirements(cfg, PRESETS["fp32"], "cpu", padded_keys=sp, ring_lse=bool(mesh and mesh.ring > 1),
                            per_token_timesteps=t.dim() == 2)
    table = resolve_ops(reg, reg.backends["reference"], reqs)
    if sp:
        table = wrap_self_attention(table, mesh, comm or CommClock(), overlap, exchange)
    model = WanDiT.random(cfg, PRESETS["fp32"], torch.device("cpu"), seed=11).bind_ops(table)
    with torch.no_grad():
        return model(x, t, ctx)


def sequence_parallel_worker(rank: int, world: int, port: int, ulysses: int, ring: int, per_token: bool, out: str):
    from wanport.parallel.mesh import init_mesh, shutdown

    dist_env(rank, world, port)
    mesh = init_mesh(1, ulysses, ring, "gloo", 60)
    try:
        from wanport.parallel.mesh import CommClock

        cfg, x, t, ctx = dit_case(per_token)
        clocks = {"on": CommClock(), "off": CommClock()}
        y = dit_forward(cfg, x, t, ctx, mesh, True, clocks["on"])
        torch.save(y, "%s.rank%d" % (out, rank))
        if ulysses > 1:  # the plain (blocking, unchunked) Ulysses path, to compare bit for bit
            off = dit_forward(cfg, x, t, ctx, mesh, False, clocks["off"])
            stats = {k: {"calls": c.calls, "bytes": c.bytes, "seconds": c.seconds} for k, c in clocks.items()}
            staging = StagingExchange()
            staged = dit_forward(cfg, x, t, ctx, mesh, True, CommClock(), staging)
            torch.save({"y": off, "comm": stats, "staged": staged,
                        "staging": {"buffers": staging.buffers, "starts": staging.starts}},
                       "%s.off.rank%d" % (out, rank))
    finally:
        shutdown()


def vae_worker(rank: int, world: int, port: int, dim: int, out: str):
    from wanport.parallel.mesh import init_mesh, shutdown
    from wanport.parallel.vae import VAEPhases, decode_split, encode_split
    from wanport.reference.runtime import HostRuntime

    dist_env(rank, world, port)
    mesh = init_mesh(1, world, 1, "gloo", 60)
    try:
        vae = vae_case(dim)
        z = torch.randn(1, 16, 3, 9, 7, generator=torch.Generator().manual_seed(3))
        phases = VAEPhases(HostRuntime(), timed=True)
        video = decode_split(vae, z, mesh.rank, mesh.world, phases=phases)
        frames = torch.randn(1, 3, 5, 72, 56, generator=torch.Generator().manual_seed(4)).clamp(-1, 1)
        latent = encode_split(vae, frames, mesh.rank, mesh.world)
        # the layout a GPU runs the VAE in: halo rows written into channels-last padded inputs
        vae.set_memory_format(torch.channels_last_3d)
        untimed = VAEPhases()
        video_cl = decode_split(vae, z, mesh.rank, mesh.world, phases=untimed)
        torch.save({"video": video, "latent": latent, "video_cl": video_cl, "phases": phases.report(),
                    "untimed": untimed.report()}, "%s.rank%d" % (out, rank))
    finally:
        shutdown()


def vae_case(dim: int):
    from wanport.models.vae.wan21 import WanVAE21

    torch.manual_seed(2)
    vae = WanVAE21(dim=dim, z_dim=16)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn(p.shape))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.05 * torch.randn(p.shape))
    return vae.eval()


def pipeline_worker(rank: int, world: int, port: int, overrides, out: str):
    """One rank of a real `wanport run` (the tiny recipe with overrides); rank 0 saves the decoded
    video tensor it hands to the mp4 writer."""
    import wanport.io.video as video_io
    from wanport.config import load_recipe
    from wanport.pipeline.run import run

    dist_env(rank, world, port)
    captured = {}
    real = video_io.write_mp4

    def capture(video, path, fps):
        captured["video"] = video.clone()
        real(video, path, fps)

    video_io.write_mp4 = capture
    cfg, raw = load_recipe(None, list(overrides))
    report = run(cfg, raw, progress=False)
    if rank == 0:
        import json

        torch.save({"video": captured["video"], "report": json.loads(json.dumps(report, default=str))}, out)
    else:
        assert "video" not in captured  # only rank 0 writes


def failing_worker_script() -> str:
    """A two-rank program in which rank 1 dies before a collective that rank 0 waits in."""
    return (
        "import os, sys, torch, torch.distributed as dist\n"
        "from wanport.parallel.mesh import init_mesh\n"
        "mesh = init_mesh(1, 2, 1, 'gloo', float(sys.argv[1]))\n"
        "if mesh.rank == 1:\n"
        "    raise RuntimeError('rank 1 fails')\n"
        "t = torch.ones(1)\n"
        "dist.all_reduce(t)\n"
        "print('rank 0 should not get here')\n"
    )


def fsdp_worker(rank: int, world: int, port: int, out: str):
    """The DiT forward with its weights sharded across ranks (FSDP2), every rank the same input."""
    from wanport.parallel.fsdp import shard_dit
    from wanport.parallel.mesh import init_mesh, shutdown

    dist_env(rank, world, port)
    init_mesh(world, 1, 1, "gloo", 60)  # cfg-sized mesh: every rank runs the full sequence
    try:
        from wanport.models.dit import WanDiT
        from wanport.models.dit.requirements import dit_requirements
        from wanport.precision import PRESETS
        from wanport.registry import discover, resolve_ops

        cfg, x, t, ctx = dit_case(False)
        reg = discover()
        table = resolve_ops(reg, reg.backends["reference"], dit_requirements(cfg, PRESETS["official"], "cpu"))
        model = WanDiT.random(cfg, PRESETS["official"], torch.device("cpu"), seed=11).bind_ops(table)
        shard_dit(model, "cpu", world)
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
        with torch.no_grad():
            y = model(x, t, ctx)
        torch.save({"y": y, "local_params": local}, "%s.rank%d" % (out, rank))
    finally:
        shutdown()


def torchrun(nproc: int, args, timeout: float, cwd=None):
    """``torchrun --standalone --nproc_per_node NPROC -m wanport ARGS`` as a user starts it (one
    thread per rank, no launcher variables inherited); returns (CompletedProcess, seconds).
    ``subprocess.TimeoutExpired`` past ``timeout``: a hang fails the test instead of stalling it."""
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "wanport"] + [str(a) for a in args]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return proc, time.time() - start


def api_worker(rank: int, world: int, port: int, overrides, out: str):
    """One rank of a `wanport.Pipeline` with two generate calls (the recipe's seed, then seed 3):
    rank 0 saves both videos; every other rank must get None; the process group lives as long as
    the pipeline."""
    import torch.distributed as dist

    from wanport import Pipeline

    dist_env(rank, world, port)
    pipe = Pipeline.from_recipe(None, overrides=list(overrides), progress=False)
    with pipe:
        first = pipe.generate(video_tensor=True)
        assert dist.is_initialized()
        second = pipe.generate(seed=3, video_tensor=True)
        report = pipe.last_report
    assert not dist.is_initialized()  # closed with the pipeline
    if rank == 0:
        import json

        torch.save({"first": first.video, "second": second.video,
                    "report": json.loads(json.dumps(report, default=str))}, out)
    else:
        assert first is None and second is None


def batch_worker(rank: int, world: int, jobs):
    """Several multi-process jobs of one world size, one after another, in one set of spawned
    processes: each process imports torch and wanport once instead of once per job (the spawns
    were most of the parallel tests' time). ``jobs``: ``(worker name, port, args)``; every worker
    above takes ``(rank, world, port, *args)`` with its output path last. A job that raises leaves
    its traceback in ``<out>.error.rank<r>`` and drops the process group; the next job still runs."""
    import traceback

    import torch.distributed as dist

    for name, port, args in jobs:
        try:
            globals()[name](rank, world, port, *args)
        except Exception:
            with open("%s.error.rank%d" % (args[-1], rank), "w") as f:
                f.write(traceback.format_exc())
            if dist.is_initialized():
                dist.destroy_process_group()


def batch_errors(out: str, world: int) -> str:
    """The tracebacks a batched job left on any rank ('' if none)."""
    texts = []
    for r in range(world):
        path = "%s.error.rank%d" % (out, r)
        if os.path.exists(path):
            with open(path) as f:
                texts.append("rank %d:\n%s" % (r, f.read()))
    return "\n".join(texts)
