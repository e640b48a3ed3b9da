"""How soon a request to a resident pipeline behind `wanport serve` starts denoising.

Random weights of the real architecture (`wanport.bench.random_weights`; timings do not depend
on values), one resident pipeline, the server's own queue/store/routes in a thread of this
process, a real HTTP client on the loopback. Each request is timed from just before its POST:

* ``queued_to_running_s``: until the client first sees the task ``running`` (polled every 5 ms);
* ``first_step_after_start_s``: the pipeline report's ``time_to_first_step_s`` (from the
  generate call to the first denoising step: text encode, noise, schedule);
* ``to_first_step_s``: the sum, the request's latency to its first denoising step.

    python3 benchmarks/serve_latency.py --model wan2.1-t2v-14b --backend cuda --size 832*480 \
        --frames 81 --steps 1 --requests 3 --out $OUT/serve-latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="wan2.1-t2v-14b")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--size", default="832*480")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import httpx

    from wanport import Pipeline
    from wanport.bench.random_weights import RandomWeights
    from wanport.serve.inprocess import start_in_thread

    work = tempfile.mkdtemp(prefix="wanport-serve-latency-")
    t0 = time.perf_counter()
    pipe = Pipeline.from_recipe(None, weights=RandomWeights(0), progress=False, overrides=[
        "model=%s" % args.model, "backend=%s" % args.backend, "checkpoint_dir=/nonexistent",
        "sample.size=%s" % args.size, "sample.frame_num=%d" % args.frames, "sample.steps=%d" % args.steps,
        "output.dir=%s" % work])
    load_s = time.perf_counter() - t0
    server, queue, _, thread = start_in_thread(pipe, os.path.join(work, "srv"), args.port)
    client = httpx.Client(base_url="http://127.0.0.1:%d" % args.port, timeout=600)
    rows = []
    for i in range(args.requests):
        body = {"prompt": "a corgi surfing a wave at sunset, request %d" % i, "seed": i}
        start = time.perf_counter()
        task = client.post("/v1/tasks/video", json=body).json()["id"]
        running = None
        while True:
            st = client.get("/v1/tasks/%s" % task).json()
            if st["state"] == "running" and running is None:
                running = time.perf_counter() - start
            if st["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.005)
        total = time.perf_counter() - start
        # the server's own account (queued_s, to_first_step_s, ...) is in the task status; a task whose
        # output could not be written still started denoising when it says it did
        report = client.get("/v1/tasks/%s/report" % task).json() if st["state"] == "done" else {}
        first = (report.get("pipeline") or {}).get("time_to_first_step_s")
        row = {"request": i + 1, "state": st["state"], "error": st.get("error"),
               "queued_to_running_s": round(running, 4) if running is not None else None,
               "first_step_after_start_s": first,
               "client_to_first_step_s": round((running or 0) + first, 4) if first is not None else None,
               "server_stages": st.get("stages"), "task_total_s": round(total, 3), "stages": report.get("stages")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"model": args.model, "backend": args.backend, "size": args.size, "frames": args.frames,
              "steps": args.steps, "weights": "random, real-size", "load_s": round(load_s, 2),
              "requests": rows}
    server.should_exit = True
    thread.join(10)
    queue.stop(timeout=30)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
