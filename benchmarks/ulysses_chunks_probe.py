"""Probe: the overlapped Ulysses attention's head-chunk count (``wanport.parallel.sequence.head_chunks``
picks the largest of 4, 3, 2 dividing the rank's heads) against other counts, per exchange.

    torchrun --standalone --nproc_per_node 2 benchmarks/ulysses_chunks_probe.py \
        --model wan2.1-t2v-14b [--chunks 1 2 4 5 10] [--out chunks.json]

More chunks expose less of each exchange (the first chunk's q/k/v, the last chunk's output) but
cut the attention into smaller calls whose last wave of tiles leaves SMs idle (14B 480p: 256 query
tiles per head, 132 SMs). Each count's forward is timed (median of CUDA-event timings, the same
input) and its output compared with the first count's bit for bit (attention is per head, so
every count must give the same bits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List

import torch
import torch.distributed as dist
from profile_ulysses import U2Setup, add_setup_args  # benchmarks/ is on the path when a script runs

import wanport.parallel.sequence as sequence
from wanport.parallel.exchange import make_exchange
from wanport.parallel.mesh import CommClock, shutdown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_setup_args(ap)
    ap.add_argument("--chunks", type=int, nargs="+", default=[4, 1, 2, 5, 10])
    ap.add_argument("--exchanges", nargs="+", default=["collective", "copy_engine"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    su = U2Setup(args)
    cfg, runtime, world, mesh, model, x, ctx, t = su.cfg, su.runtime, su.world, su.mesh, su.model, su.x, su.ctx, su.t
    dev = runtime.device()
    heads = cfg.num_heads // world
    rows: List[Dict[str, object]] = []
    first = None
    original = sequence.head_chunks
    try:
        with torch.no_grad():
            for exchange in args.exchanges:
                ex = make_exchange(exchange, runtime, mesh.ulysses_group)
                for c in args.chunks:
                    if heads % c:
                        continue
                    sequence.head_chunks = lambda _h, _r=1, _c=c: _c  # noqa: E731 - the probe's override
                    model.bind_ops(su.table(CommClock(runtime), True, ex))
                    out = model(x, t, ctx)  # also compiles what a new chunk shape needs
                    runtime.synchronize()
                    times = []
                    for _ in range(args.repeats):
                        a, b = runtime.event(), runtime.event()
                        dist.barrier()
                        a.record()
                        model(x, t, ctx)
                        b.record()
                        runtime.synchronize()
                        times.append(a.elapsed_ms(b))
                    if first is None:
                        first = out
                    same = torch.tensor([int(torch.equal(out, first))], device=dev)
                    dist.all_reduce(same, op=dist.ReduceOp.MIN)
                    slow = torch.tensor([statistics.median(times)], device=dev)
                    dist.all_reduce(slow, op=dist.ReduceOp.MAX)
                    row = {"exchange": exchange, "chunks": c, "heads_per_chunk": heads // c,
                           "forward_ms": round(float(slow.item()), 2), "same_bits_as_first": bool(same.item())}
                    rows.append(row)
                    if mesh.rank == 0:
                        print(json.dumps(row), flush=True)
    finally:
        sequence.head_chunks = original
        shutdown()
    if mesh.rank == 0 and args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"model": args.model, "world": world, "size": [args.width, args.height, args.frames],
                       "device": runtime.describe(), "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
