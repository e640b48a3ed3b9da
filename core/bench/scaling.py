"""``wanport bench scaling``: per-step DiT latency per parallel layout, speedup and efficiency.

Under torchrun with N processes rank 0 first times the 1-device step, then every layout of world
N is measured for real (all-to-all, ring P2P, CFG exchange included). On one device it measures the 1-device step and,
for every layout,
the **communication-free path** of one rank: the DiT forward on that rank's share of the tokens,
with the attention shaped as after the Ulysses all-to-all (all tokens of the ring slot, N/u heads)
and the ring's r key blocks merged through the log-sum-exp, and 2/cfg forwards per step. That is
the compute floor of the layout on this device; the communication it leaves out is what the
multi-GPU measurement adds.

Under torchrun only rank 0 reports: every rank's step time, peak memory and communication per
step are gathered to it and appear in its rows (``ranks``; the markdown shows the maximum over the
ranks), and the process group is torn down once at the end. The communication is split as the
computation sees it: ``comm_s_per_step`` is the **exposed** time (the compute stream waiting for a
collective: blocking collectives whole, asynchronous ones only at their wait, timed with the
runtime's events, no host synchronisation), ``compute_s_per_step`` the step time less that, and
``comm_bytes_per_step`` what the rank sent. ``ulysses_overlap`` (``on``, ``off`` or ``both``)
chooses the Ulysses schedule of ``parallel.ulysses_overlap``; with ``both`` every Ulysses layout is
measured both ways in the same processes and the overlapped row says whether its output equals
the blocking path's bit for bit (``equal_to_overlap_off``). ``ulysses_exchange`` (``collective``,
``copy_engine`` or ``both``) chooses how the overlapped all-to-alls move
(``parallel.ulysses_exchange``); with ``both`` each overlapped Ulysses layout is measured with each
exchange, and with ``--ulysses-overlap both`` each overlapped row is checked against the blocking
path's bits.
"""

from __future__ import annotations

import datetime
import re
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..config.models import MODELS
from ..config.validate import parse_size
from ..errors import ConfigError
from ..models.dit import WanDiT
from ..models.dit.requirements import dit_requirements
from ..ops.table import ResolvedOp
from ..parallel.config import Degrees
from ..parallel.sequence import merge_partial
from ..pipeline.report import backend_versions, versions
from ..pipeline.session import choose_backend, start_session
from ..precision import is_auto, policy_from_config, resolve_policy
from ..registry import resolve_ops
from ..registry.backend import native_bf16
from .dit import dit_config_for, time_forward

_LAYOUT = re.compile(r"^(?:cfg(\d+))?(?:x?u(\d+))?(?:x?r(\d+))?$")


@dataclass(frozen=True)
class Layout(Degrees):
    @property
    def name(self) -> str:
        parts = []
        if self.cfg > 1:
            parts.append("cfg%d" % self.cfg)
        if self.ulysses > 1:
            parts.append("u%d" % self.ulysses)
        if self.ring > 1:
            parts.append("r%d" % self.ring)
        return "x".join(parts) or "1"


def parse_layout(text: str) -> Layout:
    """``1``, ``cfg2``, ``u4``, ``r2``, ``cfg2xu4``, ``u2xr2`` ..."""
    if text == "1":
        return Layout()
    m = _LAYOUT.match(text)
    if not m or not any(m.groups()):
        raise ConfigError("bench scaling: layout %r must look like 1, cfg2, u4, r2, cfg2xu4 or u2xr2" % text)
    c, u, r = (int(g) if g else 1 for g in m.groups())
    if c not in (1, 2) or u < 1 or r < 1:
        raise ConfigError("bench scaling: layout %r: cfg is 1 or 2, ulysses and ring >= 1" % text)
    return Layout(c, u, r)


class _LocalShare:
    """A SequencePlan stand-in for one rank's share of the tokens, without communication."""

    def __init__(self, degree: int) -> None:
        self.degree = degree

    def padded_len(self, n: int) -> int:
        return -(-n // self.degree) * self.degree

    def pad(self, x, total, dim=1):
        n = x.shape[dim]
        if n == total:
            return x
        reps = [1] * x.dim()
        reps[dim] = total - n
        return torch.cat([x, x.narrow(dim, n - 1, 1).repeat(*reps)], dim=dim)

    def local(self, x, dim=1):
        return x.narrow(dim, 0, x.shape[dim] // self.degree)

    def gather(self, x, dim=1):
        return torch.cat([x] * self.degree, dim=dim)


class _LocalShapeAttention:
    """One rank's attention work in layout (u, r): q of the ring slot's tokens with N/u heads against
    r key blocks, merged through the LSE; the local [B, S/sp, N, D] shape goes back out."""

    def __init__(self, inner, ulysses: int, ring: int) -> None:
        self.inner, self.u, self.r = inner, ulysses, ring

    def __call__(self, q, k, v, *, scale, kv_lens=None, return_lse=False):
        b, s, n, d = q.shape
        u, r = self.u, self.r
        heads = n // u
        qs = q[:, :, :heads].repeat(1, u, 1, 1)  # [B, u*S_l, N/u, D]: the ring slot's tokens
        ks, vs = k[:, :, :heads].repeat(1, u, 1, 1), v[:, :, :heads].repeat(1, u, 1, 1)
        if r == 1:
            out = self.inner(qs, ks, vs, scale=scale)
        else:
            out = lse = None
            for _ in range(r):  # r blocks of the same size pass by
                o, l = self.inner(qs, ks, vs, scale=scale, return_lse=True)
                out, lse = (o.float(), l) if out is None else merge_partial(out, lse, o, l)
            out = out.to(q.dtype)
        return out[:, :s].repeat(1, 1, u, 1)  # back to [B, S_l, N, D]


OVERLAP_CHOICES = ("on", "off", "both")
EXCHANGE_CHOICES = ("collective", "copy_engine", "both")


def bench_scaling(model: str, size: str, frames: int, layouts: Sequence[str], backend: str = "auto",
                  ops: Optional[Mapping[str, str]] = None, precision: Any = "official", warmup: int = 1,
                  repeats: int = 3, layers: Optional[int] = None, seed: int = 0,
                  ulysses_overlap: str = "on", ulysses_exchange: str = "collective") -> Dict[str, Any]:
    if ulysses_overlap not in OVERLAP_CHOICES:
        raise ConfigError("bench scaling: --ulysses-overlap must be one of %s, got %r"
                          % (", ".join(OVERLAP_CHOICES), ulysses_overlap))
    if ulysses_exchange not in EXCHANGE_CHOICES:
        raise ConfigError("bench scaling: --ulysses-exchange must be one of %s, got %r"
                          % (", ".join(EXCHANGE_CHOICES), ulysses_exchange))
    cfg = dit_config_for(model, layers)
    preset = MODELS[model]
    width, height = parse_size(size)
    parsed = [parse_layout(x) for x in layouts]
    for lay in parsed:
        if cfg.num_heads % lay.ulysses:
            raise ConfigError("bench scaling: ulysses %d does not divide the %d heads of %s"
                              % (lay.ulysses, cfg.num_heads, model))
    policy_from_config(precision)  # a bad value is a ConfigError before the runtime starts
    registry, spec = choose_backend(backend)
    session = start_session(registry, spec, {})
    runtime, device = session.runtime, session.device
    policy, _ = resolve_policy(precision, native_bf16(runtime, spec.name) if is_auto(precision) else None)
    lat = (cfg.in_dim, (frames - 1) // preset.vae_stride[0] + 1, height // preset.vae_stride[1],
           width // preset.vae_stride[2])
    tokens = lat[1] * (lat[2] // cfg.patch_size[1]) * (lat[3] // cfg.patch_size[2])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1,) + lat, generator=gen).to(device)
    t = torch.tensor([999])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen).to(device=device, dtype=policy.text_encoder)
    model_ = WanDiT.random(cfg, policy, device, seed=seed)
    rows: List[Dict[str, Any]] = []
    base = None
    from ..parallel.mesh import launched_world

    world = launched_world()
    if world > 1:
        return _bench_launched(model, cfg, policy, registry, spec, session, model_, x, t, ctx, tokens, parsed, ops,
                               warmup, repeats, width, height, frames, world, ulysses_overlap, ulysses_exchange)
    with torch.no_grad():
        for lay in [Layout()] + [p for p in parsed if p.world > 1]:
            reqs = dit_requirements(cfg, policy, spec.device_type, padded_keys=lay.sp > 1, ring_lse=lay.ring > 1)
            table = resolve_ops(registry, spec, reqs, ops or {})
            if lay.sp > 1:
                import dataclasses

                inner = table.self_attention
                table = dataclasses.replace(
                    table, sequence=_LocalShare(lay.sp),
                    self_attention=ResolvedOp(inner.site, inner.kind, inner.impl,
                                              _LocalShapeAttention(inner.fn, lay.ulysses, lay.ring), inner.why))
            model_.bind_ops(table)
            forwards = 2 // lay.cfg  # CFG: two forwards per step, one per rank with cfg 2
            times = time_forward(lambda: [model_(x, t, ctx) for _ in range(forwards)], runtime, warmup, repeats)
            step = statistics.median(times)
            if base is None:
                base = step
            rows.append({"layout": lay.name, "world": lay.world, "cfg": lay.cfg, "ulysses": lay.ulysses,
                         "ring": lay.ring, "step_s": round(step, 4), "times_s": [round(v, 4) for v in times],
                         "speedup": round(base / step, 3), "efficiency": round(base / step / lay.world, 3),
                         "measured": "1 device" if lay.world == 1 else "communication-free path on 1 device"})
    return _result(model, width, height, frames, tokens, spec, runtime, policy, rows,
                   "per-step DiT time (CFG: 2 forwards). Layouts of world > 1 are the compute of one rank on this "
                   "device without communication: an upper bound on the real speedup.")


def _bench_launched(model, cfg, policy, registry, spec, session, dit, x, t, ctx, tokens, layouts, ops, warmup,
                    repeats, width, height, frames, world, ulysses_overlap="on", ulysses_exchange="collective"):
    """Under torchrun: rank 0 times the 1-device step while the others wait, then every layout of
    this world size is timed for real (communication included)."""
    from ..parallel.mesh import shutdown

    runtime = session.runtime
    rows: List[Dict[str, Any]] = []
    todo = [p for p in layouts if p.world == world]
    if not todo:
        raise ConfigError("bench scaling: launched with %d processes, but no layout of world %d was given (%s)"
                          % (world, world, ", ".join(p.name for p in layouts) or "none"))
    try:
        _launched_rows(todo, rows, cfg, policy, registry, spec, runtime, dit, x, t, ctx, ops, warmup, repeats,
                       ulysses_overlap, ulysses_exchange)
    finally:
        shutdown()  # once, on every rank, also when a layout failed
    return _result(model, width, height, frames, tokens, spec, runtime, policy, rows,
                   "per-step DiT time (CFG: 2 forwards), measured on %d processes; per-rank figures gathered to "
                   "rank 0 (exposed comm s/step, comm GB/step and peak memory: the maximum over the ranks; "
                   "compute s/step: step s less the exposed comm of the rank that waited longest). Exposed comm: "
                   "time the compute stream waited for collectives (asynchronous ones at their wait only)" % world)


def _schedules(lay, ulysses_overlap: str, ulysses_exchange: str = "collective") -> List[tuple]:
    """The Ulysses schedules to measure for ``lay``: (overlap, exchange) pairs -- the blocking path
    first when ``ulysses_overlap`` is ``both``, then the overlapped one with each exchange asked for."""
    if lay.ulysses == 1:
        return [(True, "collective")]
    exchanges = ["collective", "copy_engine"] if ulysses_exchange == "both" else [ulysses_exchange]
    plain = [(False, "collective")] if ulysses_overlap in ("off", "both") else []
    overlapped = [(True, e) for e in exchanges] if ulysses_overlap in ("on", "both") else []
    return plain + overlapped


def _launched_rows(todo, rows, cfg, policy, registry, spec, runtime, dit, x, t, ctx, ops, warmup, repeats,
                   ulysses_overlap: str = "on", ulysses_exchange: str = "collective") -> None:
    """The rows (rank 0) of every layout in ``todo``, each timed on all ranks."""
    import torch.distributed as dist

    from ..parallel.cfg import CfgParallel
    from ..parallel.exchange import make_exchange
    from ..parallel.mesh import CommClock, init_mesh
    from ..parallel.sequence import wrap_self_attention

    base = None
    with torch.no_grad():
        first = True
        for lay in todo:
            mesh = init_mesh(lay.cfg, lay.ulysses, lay.ring, spec.dist_backend, 600, set_device=runtime.set_device,
                             device=runtime.device)
            device = runtime.device()
            if first:  # the 1-device reference step, on rank 0
                first = False
                if mesh.rank == 0:
                    table = resolve_ops(registry, spec, dit_requirements(cfg, policy, spec.device_type), ops or {})
                    dit.to(device).bind_ops(table)
                    xs, cs = x.to(device), ctx.to(device)
                    base = statistics.median(time_forward(lambda: [dit(xs, t, cs) for _ in range(2)], runtime,
                                                          warmup, repeats))
                    rows.append({"layout": "1", "world": 1, "cfg": 1, "ulysses": 1, "ring": 1,
                                 "step_s": round(base, 4), "speedup": 1.0, "efficiency": 1.0,
                                 "measured": "1 device"})
                dist.barrier()
            plain_out = None
            for overlap, exchange in _schedules(lay, ulysses_overlap, ulysses_exchange):
                runtime.reset_peak_memory()
                comm = CommClock(runtime)  # events on the compute stream: no host synchronisation per call
                reqs = dit_requirements(cfg, policy, spec.device_type, padded_keys=lay.sp > 1, ring_lse=lay.ring > 1)
                table = resolve_ops(registry, spec, reqs, ops or {})
                if lay.sp > 1:
                    ex = make_exchange(exchange, runtime, mesh.ulysses_group) if overlap and lay.ulysses > 1 else None
                    table = wrap_self_attention(table, mesh, comm, overlap, ex)
                dit.to(device).bind_ops(table)
                xs, cs = x.to(device), ctx.to(device)
                if lay.cfg == 2:
                    cfgp = CfgParallel(mesh, comm)
                    step_fn = lambda: cfgp.guided(dit, xs, t, {"context": cs}, {"context": cs}, 5.0)  # noqa: E731
                else:
                    step_fn = lambda: [dit(xs, t, cs) for _ in range(2)]  # noqa: E731
                for _ in range(warmup):
                    step_fn()
                runtime.synchronize()
                before = comm.snapshot()
                times = time_forward(step_fn, runtime, 0, repeats)
                after = comm.snapshot()
                step = statistics.median(times)
                n = max(1, repeats)
                exposed = (after["seconds"] - before["seconds"]) / n
                mine = {"rank": mesh.rank, "step_s": round(step, 4), "peak_memory_bytes": runtime.peak_memory_bytes(),
                        "comm_s_per_step": round(exposed, 5),
                        "compute_s_per_step": round(step - exposed, 5),
                        "comm_calls_per_step": (after["calls"] - before["calls"]) // n,
                        "comm_bytes_per_step": (after["bytes"] - before["bytes"]) // n}
                ranks: List[Any] = [None] * mesh.world
                dist.all_gather_object(ranks, mine)
                equal = None
                if lay.ulysses > 1 and ulysses_overlap == "both":  # same input, same bits?
                    out = dit(xs, t, cs)
                    if not overlap:
                        plain_out = out
                    else:
                        same = torch.tensor([int(torch.equal(out, plain_out))], device=device)
                        dist.all_reduce(same, op=dist.ReduceOp.MIN)
                        equal = bool(same.item())
                if mesh.rank == 0:
                    rows.append(_launched_row(lay, step, base, ranks, overlap, equal, exchange))
            del plain_out


def _launched_row(lay, step, base, ranks, overlap, equal, exchange="collective") -> Dict[str, Any]:
    peaks = [r["peak_memory_bytes"] for r in ranks if r["peak_memory_bytes"] is not None]
    worst = max(ranks, key=lambda r: r["comm_s_per_step"])
    row = {"layout": lay.name, "world": lay.world, "cfg": lay.cfg, "ulysses": lay.ulysses,
           "ring": lay.ring, "step_s": round(step, 4),
           "speedup": round(base / step, 3) if base else None,
           "efficiency": round(base / step / lay.world, 3) if base else None,
           "measured": "%d devices, communication included" % lay.world,
           "comm_s_per_step": worst["comm_s_per_step"],
           "compute_s_per_step": worst["compute_s_per_step"],
           "comm_bytes_per_step": max(r["comm_bytes_per_step"] for r in ranks),
           "peak_memory_bytes": max(peaks) if peaks else None,
           "ranks": ranks}
    if lay.ulysses > 1:
        row["ulysses_overlap"] = overlap
        if overlap:
            row["ulysses_exchange"] = exchange
        if equal is not None:
            row["equal_to_overlap_off"] = equal
    return row


def _result(model, width, height, frames, tokens, spec, runtime, policy, rows, note) -> Dict[str, Any]:
    return {
        "kind": "wanport.bench.scaling",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": model,
        "size": {"width": width, "height": height, "frames": frames, "video_tokens": tokens},
        "backend": spec.name,
        "device": runtime.describe(),
        "precision": policy.to_dict(),
        "rows": rows,
        "note": note,
        "versions": versions(backend_versions(spec)),
    }


def markdown(result: Mapping[str, Any]) -> str:
    lines = ["%s %dx%d x %d frames (%d tokens), backend %s on %s" % (
        result["model"], result["size"]["width"], result["size"]["height"], result["size"]["frames"],
        result["size"]["video_tokens"], result["backend"], result["device"]), "",
        "| layout | world | step s | speedup | efficiency | compute s/step | exposed comm s/step | comm GB/step "
        "| peak memory GiB | measured |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        comm, peak = r.get("comm_s_per_step"), r.get("peak_memory_bytes")
        compute, sent = r.get("compute_s_per_step"), r.get("comm_bytes_per_step")
        name = r["layout"]
        if "ulysses_overlap" in r:
            name += " (overlap %s%s%s)" % ("on" if r["ulysses_overlap"] else "off",
                                           ", copy engine" if r.get("ulysses_exchange") == "copy_engine" else "",
                                           {True: ", same bits as off", False: ", DIFFERS from off"}.get(
                                               r.get("equal_to_overlap_off"), ""))
        lines.append("| %s | %d | %.4f | %s | %s | %s | %s | %s | %s | %s |" % (
            name, r["world"], r["step_s"], "n/a" if r["speedup"] is None else "%.2f" % r["speedup"],
            "n/a" if r["efficiency"] is None else "%.2f" % r["efficiency"],
            "" if compute is None else "%.4f" % compute, "" if comm is None else "%.4f" % comm,
            "" if sent is None else "%.3f" % (sent / 1e9),
            "" if peak is None else "%.2f" % (peak / 2 ** 30), r["measured"]))
    return "\n".join(lines) + "\n\n" + result["note"]


def plots(result: Mapping[str, Any]):
    """Speedup per layout against the ideal (= world size)."""
    from ..io.plots import bar_chart

    rows = result["rows"]
    labels = [r["layout"] + ("" if r.get("ulysses_overlap", True) else " (no overlap)") for r in rows]
    title = "wanport bench scaling: %s %dx%d x %d frames on %s" % (
        result["model"], result["size"]["width"], result["size"]["height"], result["size"]["frames"],
        result["device"])
    series = {"speedup": [r["speedup"] for r in rows], "ideal": [float(r["world"]) for r in rows]}
    return [("", lambda path: bar_chart(path, title, labels, series, "per-step speedup vs 1 device", log=False))]
