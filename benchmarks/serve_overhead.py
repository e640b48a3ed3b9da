"""Per-task overhead of `wanport serve` over a direct `Pipeline.generate` call.

One resident pipeline in this process serves both paths, alternately, so both see the same
machine load:

* direct: ``pipe.generate(output=tasks/NAME.mp4, **values)`` (the mp4 and report written, as the
  server writes them);
* served: the same values POSTed to a live uvicorn server on the loopback (the server's own
  TaskQueue/worker, SQLite store and routes, in a thread of this process), the client waiting on
  ``GET /v1/tasks/{id}?wait=60`` and then downloading the mp4 -- from the request to the last
  byte of the video.

Overhead = median(served) - median(direct) and its share of median(direct), per setting. The
client shares the process (and the GIL) with the server, which counts against the server.

    python benchmarks/serve_overhead.py --checkpoint ckpts/tiny-wan2.1-t2v --repeats 5 \\
        --out benchmarks/results/serve-overhead-cpu.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time

SETTINGS = {
    # the smallest task: the fixed cost of the server is most visible here
    "32x32x1f-1step": {"size": "32*32", "frames": 1, "steps": 1},
    # a small but real tiny task
    "128x128x9f-4steps": {"size": "128*128", "frames": 9, "steps": 4},
    # the tiny recipe's own task (recipes/tiny-t2v.yaml: 256x256, 17 frames, 8 steps)
    "256x256x17f-8steps": {"size": "256*256", "frames": 17, "steps": 8},
}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a tiny checkpoint folder (wanport make-tiny)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--port", type=int, default=8799)
    p.add_argument("--out", required=True, help="result JSON path")
    args = p.parse_args(argv)

    import httpx
    import torch

    from wanport import Pipeline
    from wanport.io.atomic import write_json_atomic
    from wanport.serve.inprocess import start_in_thread

    work = tempfile.mkdtemp(prefix="wanport-serve-bench-")
    pipe = Pipeline.from_recipe(None, checkpoint_dir=args.checkpoint, progress=False,
                                overrides=["output.dir=%s" % work])
    server, queue, store, thread = start_in_thread(pipe, os.path.join(work, "srv"), args.port)
    client = httpx.Client(base_url="http://127.0.0.1:%d" % args.port, timeout=120)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    cpu = {"direct": [], "served": []}

    def direct(values, n):
        c, t = time.process_time(), time.perf_counter()
        pipe.generate(output=os.path.join(store.tasks_dir, "direct-%d.mp4" % n), **values)
        cpu["direct"].append(time.process_time() - c)
        return time.perf_counter() - t

    def served(values):
        c, t = time.process_time(), time.perf_counter()
        task = client.post("/v1/tasks/video", json=values).json()["id"]
        st = client.get("/v1/tasks/%s?wait=60" % task).json()
        assert st["state"] == "done", st
        video = client.get("/v1/tasks/%s/video" % task).content
        assert video[4:8] == b"ftyp"
        cpu["served"].append(time.process_time() - c)
        return time.perf_counter() - t

    results = {}
    n = 0
    for name, values in SETTINGS.items():
        values = dict(values, prompt="a red panda on a skateboard", seed=1)
        direct(values, n)  # warm-up of both paths (first-call costs, op table, caches)
        served(values)
        cpu["direct"].clear()
        cpu["served"].clear()
        d, s = [], []
        for i in range(args.repeats):
            n += 1
            if i % 2 == 0:  # alternate the order: drifting load hits both paths alike
                d.append(direct(values, n))
                s.append(served(values))
            else:
                s.append(served(values))
                d.append(direct(values, n))
        md, ms = statistics.median(d), statistics.median(s)
        results[name] = {"values": values, "direct_s": [round(x, 4) for x in d], "served_s": [round(x, 4) for x in s],
                         "direct_median_s": round(md, 4), "served_median_s": round(ms, 4),
                         "overhead_s": round(ms - md, 4), "overhead_pct": round(100 * (ms - md) / md, 2),
                         # the fastest of each: the least disturbed by other processes on a shared machine
                         "direct_min_s": round(min(d), 4), "served_min_s": round(min(s), 4),
                         "overhead_min_s": round(min(s) - min(d), 4),
                         "overhead_min_pct": round(100 * (min(s) - min(d)) / min(d), 2),
                         # CPU seconds of this process (every thread: server, worker, client) per task:
                         # what the server adds, nearly independent of other processes' load
                         "direct_cpu_s": [round(x, 4) for x in cpu["direct"]],
                         "served_cpu_s": [round(x, 4) for x in cpu["served"]],
                         "cpu_overhead_s": round(statistics.median(cpu["served"]) - statistics.median(cpu["direct"]), 4),
                         "cpu_overhead_pct": round(100 * (statistics.median(cpu["served"]) - statistics.median(
                             cpu["direct"])) / statistics.median(cpu["direct"]), 2)}
        r = results[name]
        print("%-20s wall: direct %.3f s  served %.3f s  overhead %+.1f ms (%+.2f %%); fastest %+.2f %%; "
              "cpu overhead %+.1f ms (%+.2f %%)" % (name, md, ms, 1000 * (ms - md), 100 * (ms - md) / md,
                                                   r["overhead_min_pct"], 1000 * r["cpu_overhead_s"],
                                                   r["cpu_overhead_pct"]), flush=True)
        cpu["direct"].clear()
        cpu["served"].clear()
    server.should_exit = True
    thread.join(10)
    queue.stop()
    report = {
        "kind": "wanport.bench.serve_overhead",
        "what": "per-task wall time of a request through `wanport serve` (POST, long-poll until done, mp4 "
                "download) against a direct Pipeline.generate writing the same files, same process, alternating",
        "model": pipe.model, "recipe": "embedded tiny recipe", "repeats": args.repeats,
        "hardware": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "machine": platform.machine(),
                     "load_average_1min": {"start": load_start,
                                           "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
                     "note": "a shared machine: other processes ran at the same time (see the load averages)"},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "uvicorn": importlib.metadata.version("uvicorn"),
                     "httpx": httpx.__version__},
        "settings": results,
    }
    write_json_atomic(args.out, report)
    pipe.close()
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
