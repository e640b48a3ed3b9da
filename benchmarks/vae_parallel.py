"""The VAE decode split over N ranks (``parallel.vae``) against the same decode on one rank.

Random weights of the real architecture (timings do not depend on values); one latent drawn on
the CPU from ``--seed``. Under ``torchrun --nproc_per_node N`` every rank builds the same VAE;
then, after one warm-up each:

(a) rank 0 decodes the whole latent alone (the other ranks wait at a barrier),
(b) all ranks decode it split by latent rows (``wanport.parallel.vae.decode_split``), untimed
    phases (no device synchronisation in the loop: the speed the pipeline gets), then once more
    with timed phases (the runtime synchronises around every halo exchange, attention all-gather
    and the output gather: the per-phase breakdown, per rank, slower than the untimed run),

and rank 0 compares (b) with (a) (max abs and relative L2 difference; fp32 differs only where the
convolution kernels pick another algorithm for the shard's shape). ``post`` is rank 0's
conversion of the decoded video to uint8 frames on the host (``wanport.io.video.to_uint8_frames``),
timed for both. Writes ``--out FILE.json`` and ``FILE.md``.

    timeout 300 torchrun --nproc_per_node 2 benchmarks/vae_parallel.py --vae wan2.1 \\
        --size 832*480 --frames 81 --previous --out vae-par21.json
    timeout 600 torchrun --nproc_per_node 2 benchmarks/vae_parallel.py --vae wan2.2 --out vae-par22.json
    torchrun --nproc_per_node 2 benchmarks/vae_parallel.py --smoke --out /tmp/vae-par.json   # CPU, gloo
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vae_profile import _compare, _norm_op, _time, _vae  # noqa: E402  (the shared VAE helpers)

from wanport.bench.random_weights import VAE_CLASSES  # noqa: E402
from wanport.io.video import to_uint8_frames  # noqa: E402
from wanport.models.vae.setup import preferred_memory_format  # noqa: E402
from wanport.parallel.mesh import CommClock, init_mesh, launched_world, shutdown  # noqa: E402
from wanport.parallel.vae import SplitVAEContext, VAEPhases, decode_split, split_sizes  # noqa: E402
from wanport.registry import discover  # noqa: E402

#: the defaults of each VAE: (size W*H, frames) -- the sizes the Wan models decode at
DEFAULTS = {"wan2.1": ("832*480", 81), "wan2.2": ("1280*704", 121)}
#: a smoke run: tiny VAEs (the official dim=8 test size), a few latent rows per rank
SMOKE = {"wan2.1": ({"dim": 8}, "64*48", 5), "wan2.2": ({"dim": 8, "dec_dim": 8}, "64*64", 5)}


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", default="wan2.1", choices=sorted(VAE_CLASSES))
    ap.add_argument("--size", default=None, help="W*H of the video (default: 832*480 for wan2.1, 1280*704 for wan2.2)")
    ap.add_argument("--frames", type=int, default=None, help="video frames (default 81 / 121)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default=None, help="default: cuda (reference with --smoke)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds any collective may wait")
    ap.add_argument("--previous", action="store_true",
                    help="also time the split as it was before (cat+pad inputs, a device sync per exchange)")
    ap.add_argument("--smoke", action="store_true", help="tiny VAE, tiny size: checks the script on a CPU (gloo)")
    ap.add_argument("--out", required=True, help="FILE.json (FILE.md beside it)")
    args = ap.parse_args(argv)
    arch, size, frames = ({}, *DEFAULTS[args.vae])
    if args.smoke:
        arch, size, frames = SMOKE[args.vae]
    args.arch = arch
    args.size = args.size or size
    args.frames = args.frames or frames
    args.backend = args.backend or ("reference" if args.smoke else "cuda")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    try:
        args.w, args.h = (int(v) for v in args.size.split("*"))
    except ValueError:
        ap.error("--size is W*H, e.g. 832*480; got %r" % args.size)
    if not args.out.endswith(".json"):
        ap.error("--out must name a .json file; got %r" % args.out)
    return args


def _latent(vae, args):
    s, sp, z = vae.temporal_stride, vae.spatial_stride, vae.z_dim
    if (args.frames - 1) % s or args.w % sp or args.h % sp:
        raise SystemExit("--frames must be %dn+1 and --size multiples of %d; got %d frames at %s"
                         % (s, sp, args.frames, args.size))
    g = torch.Generator().manual_seed(args.seed)
    return torch.randn(1, z, 1 + (args.frames - 1) // s, args.h // sp, args.w // sp, generator=g)


def _post(video):
    return to_uint8_frames(video[0])


def _single(vae, z, rt, repeats):
    """(seconds of each timed decode, post seconds, the video) on this rank alone."""
    vae.decode(z)  # warm-up
    times, video = [], None
    for _ in range(repeats):
        del video
        video, sec = _time(rt, lambda: vae.decode(z))
        times.append(sec)
    _, post = _time(rt, lambda: _post(video))
    return times, post, video


def _split(vae, z, rt, mesh, repeats):
    """(first call seconds, seconds of each untimed decode, the untimed phases, the timed
    phases, the video on rank 0) of the split decode."""
    run = lambda ph: decode_split(vae, z, mesh.rank, mesh.world, phases=ph)  # noqa: E731
    _, first = _time(rt, lambda: run(VAEPhases()))  # warm-up: the communicators' first P2P too
    times, untimed, video = [], None, None
    for _ in range(repeats):
        del video
        untimed = VAEPhases()
        video, sec = _time(rt, lambda: run(untimed))
        times.append(sec)
    del video
    timed = VAEPhases(rt, timed=True)
    video = run(timed)
    if video is not None:
        with timed.phase("post"):
            _post(video)
    return first, times, untimed, timed, video


class _PreviousContext(SplitVAEContext):
    """The split context as it was before the per-phase work (``--previous``), kept here to measure
    against in the same run: the causal input as ``cat`` of context and chunk, then ``cat`` of halo
    rows / zero rows (zeros and received rows in NCDHW, so channels-last data left its layout) and
    ``F.pad`` for the width; a synchronising clock around every exchange; the attention's row counts
    all-gathered first (a host read), keys and values gathered apart. Same values, more work."""

    def __init__(self, rank, world, rt):
        super().__init__(rank, world, comm=CommClock(rt))

    def causal_input(self, x, context, pads):
        if context is not None:
            x = torch.cat([context, x], dim=2)
        return self.pad(x, pads)

    def pad(self, x, pads):
        pads = list(pads) + [0] * (6 - len(pads)) if len(pads) < 6 and x.dim() == 5 else list(pads)
        top, bottom = pads[2], pads[3]
        hdim = x.dim() - 2
        if top or bottom:
            rows = x.shape[hdim]
            up, down = self.rank - 1, self.rank + 1
            ops, recv_top, recv_bottom = [], None, None
            if up >= 0:
                if bottom:
                    ops.append(dist.P2POp(dist.isend, x.narrow(hdim, 0, bottom).contiguous(), up))
                if top:
                    recv_top = torch.empty_like(x.narrow(hdim, 0, top)).contiguous()
                    ops.append(dist.P2POp(dist.irecv, recv_top, up))
            if down < self.world:
                if top:
                    ops.append(dist.P2POp(dist.isend, x.narrow(hdim, rows - top, top).contiguous(), down))
                if bottom:
                    recv_bottom = torch.empty_like(x.narrow(hdim, 0, bottom)).contiguous()
                    ops.append(dist.P2POp(dist.irecv, recv_bottom, down))
            if ops:
                with self.comm:
                    for req in dist.batch_isend_irecv(ops):
                        req.wait()
            zeros = lambda n: x.new_zeros(x.shape[:hdim] + (n,) + x.shape[hdim + 1:])  # noqa: E731
            parts = [recv_top if recv_top is not None else zeros(top)] if top else []
            parts.append(x)
            if bottom:
                parts.append(recv_bottom if recv_bottom is not None else zeros(bottom))
            x = torch.cat(parts, dim=hdim)
        rest = list(pads)
        rest[2] = rest[3] = 0
        return F.pad(x, tuple(rest)) if any(rest) else x

    def attention(self, q, k, v):
        return F.scaled_dot_product_attention(q, self._previous_gather(k), self._previous_gather(v))

    def _previous_gather(self, t):
        n = torch.tensor([t.shape[2]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        with self.comm:
            dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        longest = max(sizes)
        padded = F.pad(t, (0, 0, 0, longest - t.shape[2])) if t.shape[2] < longest else t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        with self.comm:
            dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:, :, :s] for p, s in zip(parts, sizes)], dim=2)


def _previous_decode(vae, z, rank, world, rt):
    """The split decode as it was (see :class:`_PreviousContext`; output all-gathered to every rank)."""
    sizes = split_sizes(z.shape[3], world)
    ctx = _PreviousContext(rank, world, rt)
    local = vae.decode(z.narrow(3, sum(sizes[:rank]), sizes[rank]), context=ctx)
    parts = [torch.empty_like(local) for _ in range(world)]  # equal shards in these runs
    with ctx.comm:
        dist.all_gather(parts, local.contiguous())
    return torch.cat(parts, dim=3) if rank == 0 else None, ctx.comm


def _previous(vae, z, rt, mesh, repeats):
    """(seconds of each decode, comm seconds of the last, comm calls of the last) of the previous split."""
    _previous_decode(vae, z, mesh.rank, mesh.world, rt)
    times, comm = [], None
    for _ in range(repeats):
        (_, comm), sec = _time(rt, lambda: _previous_decode(vae, z, mesh.rank, mesh.world, rt))
        times.append(sec)
    return times, comm.seconds, comm.calls


def _markdown(res) -> str:
    lines = ["# VAE decode split over %d ranks (%s, %s x %d frames, %s)" % (res["world"], res["vae"], res["size"],
                                                                        res["frames"], res["dtype"]), "",
             "| | 1 rank | %d ranks | speed-up |" % res["world"], "|---|---|---|---|",
             "| decode (median s) | %.4f | %.4f | %.2fx |" % (res["single_s"], res["split_s"], res["speedup"]),
             "| first call (s) | | %.4f | |" % res["split_first_call_s"],
             ] + ([] if "previous" not in res else [
             "| previous split (median s; comm %.4f s in %d synced calls) | | %.4f | %.2fx |" % (
                 res["previous"]["comm_s"], res["previous"]["comm_calls"], res["previous"]["split_s"],
                 res["previous"]["speedup"])]) + [
             "| post on rank 0 (s) | %.4f | %.4f | |" % (res["single_post_s"], res["ranks"][0]["post"].get("s", 0.0)),
             "", "max abs diff %.3g, rel-L2 %.3g, PSNR %.1f dB" % (res["diff"]["max_abs"], res["diff"]["rel_l2"],
                                                                 res["diff"]["psnr_db"]), "",
             "Per rank, timed run (the runtime synchronises around every phase; seconds, calls, MB sent):", "",
             "| rank | decode | compute | halo | attention | gather | post | halo calls | halo MB | attn MB | gather MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["ranks"]:
        lines.append("| %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %d | %.1f | %.1f | %.1f |" % (
            r["rank"], r["decode"]["s"], r["compute"]["s"], r["halo"]["s"], r["attention"]["s"], r["gather"]["s"],
            r["post"].get("s", 0.0), r["halo"]["calls"], r["halo"]["bytes_sent"] / 1e6,
            r["attention"]["bytes_sent"] / 1e6, r["gather"]["bytes_sent"] / 1e6))
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> None:
    args = _args(argv)
    reg = discover()
    if args.backend not in reg.backends:
        raise SystemExit("no backend %r (have: %s)" % (args.backend, ", ".join(sorted(reg.backends))))
    spec = reg.backends[args.backend]
    rt = spec.start()
    world = launched_world()
    if args.smoke:
        torch.set_num_threads(1)
    mesh = init_mesh(1, world, 1, spec.dist_backend, args.timeout, set_device=rt.set_device, device=rt.device)
    try:
        dev = rt.device()
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        norm = None
        if not args.smoke:
            try:
                norm = _norm_op(reg, args.backend, {"fused"})
            except SystemExit:
                norm = None
        cl = preferred_memory_format(rt) is torch.channels_last_3d
        vae = _vae(args.vae, dtype, dev, cl, norm, **args.arch)
        z = _latent(vae, args).to(dev)
        if z.shape[3] < 2 * world:
            raise SystemExit("%d latent rows cannot be split over %d ranks (2 rows each at least)" % (z.shape[3], world))
        with torch.no_grad():
            single = None
            if mesh.rank == 0:
                single = _single(vae, z, rt, args.repeats)
            dist.barrier()
            rt.reset_peak_memory()  # each rank's peak below: the split decodes' (and rank 0's copy of the 1-rank video)
            first, times, untimed, timed, video = _split(vae, z, rt, mesh, args.repeats)
            previous = None
            if args.previous and z.shape[3] % mesh.world == 0:
                ptimes, pcomm_s, pcalls = _previous(vae, z, rt, mesh, args.repeats)
                previous = {"split_s": round(statistics.median(ptimes), 4), "times_s": [round(t, 4) for t in ptimes],
                            "comm_s": round(pcomm_s, 4), "comm_calls": pcalls}
        mine = dict(timed.report(), rank=mesh.rank, untimed=untimed.report(),
                    peak_memory_bytes=rt.peak_memory_bytes())
        ranks = [None] * mesh.world
        dist.all_gather_object(ranks, mine)
        if mesh.rank != 0:
            return
        stimes, post, ref = single
        diff = _compare(video, ref)
        diff["max_abs"] = float((video.double() - ref.double()).abs().max())
        res = {"vae": args.vae, "size": args.size, "frames": args.frames, "dtype": args.dtype, "world": mesh.world,
               "latent": list(z.shape), "device": rt.describe(), "torch": torch.__version__, "backend": args.backend,
               "vae_ops": vae.report(), "repeats": args.repeats,
               "single_s": round(statistics.median(stimes), 4), "single_times_s": [round(t, 4) for t in stimes],
               "single_post_s": round(post, 4),
               "split_s": round(statistics.median(times), 4), "split_times_s": [round(t, 4) for t in times],
               "split_first_call_s": round(first, 4), "diff": diff, "ranks": ranks}
        res["speedup"] = round(res["single_s"] / max(res["split_s"], 1e-9), 3)
        if previous is not None:
            previous["speedup"] = round(res["single_s"] / max(previous["split_s"], 1e-9), 3)
            res["previous"] = previous
        text = _markdown(res)
        _write(args.out, json.dumps(res, indent=1))
        _write(args.out[:-len(".json")] + ".md", text)
        print(text, flush=True)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
