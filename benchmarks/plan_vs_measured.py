"""The memory plan's prediction, recomputed with the current plan code and constants, against the
peaks measured by ``benchmarks/offload_bench.py`` on a GPU (its ``peaks`` rows):

    python3 benchmarks/plan_vs_measured.py benchmarks/results/2026-11-30-h200-r2-offload.json \\
        --out benchmarks/results/2026-11-30-h200-r2-plan-vs-measured

Runs on a CPU in seconds (the plan reads no weights). Each configuration is rebuilt exactly as
offload_bench.py built it (same recipe, same layout), planned for the bench's backend (its VAE
norm fused or not, ``wanport.plan.check.vae_norm_fused``) and for the device memory the run saw
(its cap, else the GPU's), and compared with the measured ``max_memory_allocated``. Writes
STEM.json and STEM.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GIB = float(2 ** 30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measured", help="offload_bench.py JSON with a peaks section")
    ap.add_argument("--backend", default="cuda", help="the backend the measurement ran on (default cuda)")
    ap.add_argument("--device-gib", type=float, default=139.8, help="the GPU's memory when a row had no cap")
    ap.add_argument("--out", required=True, help="output stem")
    args = ap.parse_args(argv)

    import offload_bench as ob

    from wanport.config import build_config
    from wanport.config.validate import plan_run
    from wanport.plan import predict
    from wanport.plan.arch import for_plan
    from wanport.plan.check import vae_norm_fused
    from wanport.plan.memory import Layout
    from wanport.registry.discovery import discover

    with open(args.measured) as f:
        measured = {r["config"]: r for r in json.load(f)["peaks"]}
    reg = discover()
    ob.SETTINGS.update(backend=args.backend)
    import tempfile

    from PIL import Image

    from wanport.pipeline.images import load_image, output_size

    image = os.path.join(tempfile.mkdtemp(), "input.png")
    Image.new("RGB", (832, 480), (40, 120, 200)).save(image)  # the bench's input image
    rows = []
    for c in ob.configs("/tmp", image, {"dit": "fp8_rowwise"}):
        m = measured.get(c["name"])
        if m is None or "measured_gib" not in m:
            continue
        raw = ob._recipe(c["model"], c["size"], c["frames"], c["offload"], "/tmp", c.get("image"), c.get("extra"))
        cfg = build_config(raw)
        plan = plan_run(cfg, "bench")
        size = None
        if plan.image_path is not None:  # the image decides the video size, as in the run
            size = output_size(plan.preset, load_image(plan.image_path, min_side=plan.preset.spatial_multiple),
                               plan.width * plan.height)
        plan = dataclasses.replace(plan, vae_norm_fused=vae_norm_fused(reg, args.backend, cfg.ops))
        mem = predict(plan, for_plan(plan, use_checkpoint=False), Layout.from_plan(plan, c["resident"]),
                      device_memory=int((c.get("cap") or args.device_gib) * GIB), size=size)
        pred = mem.peak / GIB
        rows.append({"config": c["name"], "measured_gib": m["measured_gib"], "predicted_at_run_gib": m.get("predicted_gib"),
                     "predicted_gib": round(pred, 3), "peak_stage": mem.ranks[0].peak_stage,
                     "measured_over_predicted": round(m["measured_gib"] / pred, 4)})
    worst = max(abs(r["measured_over_predicted"] - 1) for r in rows)
    res = {"kind": "wanport.bench.plan_vs_measured", "measured_file": os.path.basename(args.measured),
           "backend": args.backend, "rows": rows, "worst_abs_error": round(worst, 4)}
    lines = ["# Memory plan vs measured peaks (%s, %s)" % (os.path.basename(args.measured), args.backend), "",
             "| configuration | measured GiB | predicted at the run | predicted now (stage) | measured / predicted |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %.2f | %s | %.2f (%s) | %.3f |" % (r["config"], r["measured_gib"], r["predicted_at_run_gib"],
                                                              r["predicted_gib"], r["peak_stage"],
                                                              r["measured_over_predicted"]))
    lines += ["", "worst |measured / predicted - 1|: %.1f %%" % (100 * worst)]
    for ext, text in ((".json", json.dumps(res, indent=1)), (".md", "\n".join(lines) + "\n")):
        tmp = args.out + ext + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out + ext)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
