"""Block offload and the memory plan on one GPU: step time of a streamed DiT against the DiT in
device memory, the peak with the device memory capped, and predicted-vs-measured peaks of whole
pipeline calls (docs/plan.md).

    python3 benchmarks/offload_bench.py --out $OUT/offload [--quant fp8] [--skip-timing] [--skip-peaks]
    python3 benchmarks/offload_bench.py --out /tmp/smoke --smoke   # the same logic, tiny models on the CPU

Part 1 (timing, Wan2.1 T2V-14B 832x480 x 81, random weights): one DiT forward with the weights
in device memory, the memory capped at 48 GiB (``DeviceRuntime.set_memory_fraction``); then
the same model with its blocks in page-locked host memory streamed through the device
(``offload.dit: block``) with prefetch 1 and 2, capped at 24 GiB; the host-to-device bandwidth of
one block's copy. A CFG step is two forwards.

Part 2 (peaks): one ``wanport.Pipeline`` call (1 step) per configuration -- 1.3B/14B/5B/A14B/I2V,
480p/720p, the one-video run and the resident pipeline, offload none/model/block -- each with the
memory plan's prediction (the run's gate, ``report.peak_memory.predicted``) beside the measured
``max_memory_allocated``. 14B configurations at 720p and the A14B/I2V ones use 33 frames to stay in
the time budget (the plan predicts the same frames). CFG/Ulysses layouts need two GPUs (NCCL does
not put two ranks on one device) and are not run here.

Writes OUT.json and OUT.md. About 5 minutes on one H200.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch

GIB = float(2 ** 30)


# ----------------------------------------------------------------------------- random weights


def staged_random_dit(cfg, policy, device, seed: int):
    """A random DiT whose tensors end in host memory, drawn on the device one block at a time
    (a 14B model drawn on the host takes minutes; drawn whole on the device it would not fit
    under the cap)."""
    from wanport.models.dit import WanDiT
    from wanport.models.dit.layers import init_random_

    model = WanDiT.on_meta(cfg, policy)
    model.apply_policy_dtypes()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    for name, child in model.named_children():
        for part in (list(child) if name == "blocks" else [child]):
            part.to_empty(device=device)
            init_random_(part, gen)
            part.to("cpu")
    return model.eval().requires_grad_(False)


def staged_weights(device):
    from wanport.bench.random_weights import RandomWeights, _seed

    class StagedRandomWeights(RandomWeights):
        def load_dit(self, ckpt, policy, target):
            if torch.device(target) == torch.device("cpu"):  # offload: the DiT goes to host memory
                return staged_random_dit(ckpt.config, policy, device, _seed(self.seed, ckpt.directory))
            return super().load_dit(ckpt, policy, target)

    return StagedRandomWeights(0)


# ----------------------------------------------------------------------------- helpers


SMOKE = {"wan2.1-t2v-1.3b": "wan2.1-t2v-tiny", "wan2.1-t2v-14b": "wan2.1-t2v-tiny",
         "wan2.2-ti2v-5b": "wan2.2-ti2v-5b-tiny", "wan2.2-t2v-a14b": "wan2.2-t2v-a14b-tiny",
         "wan2.1-i2v-14b-480p": "wan2.1-i2v-tiny", "wan2.1-i2v-14b-720p": "wan2.1-i2v-tiny"}
#: --smoke: tiny models on the reference backend at 64x64 x 5 frames (checks the script, measures nothing)
SETTINGS = {"backend": "cuda", "smoke": False}


def _free(rt) -> None:
    gc.collect()
    rt.synchronize()
    rt.empty_cache()


def _cap(rt, gib: Optional[float]) -> None:
    fn = getattr(rt, "set_memory_fraction", None)
    if fn is None:  # a runtime that cannot cap (the host): the cap column then says what it would be
        return
    total = rt.total_memory_bytes()
    fn(1.0 if gib is None else min(1.0, gib * GIB / total))


def _recipe(model: str, size: str, frames: int, offload: Dict[str, Any], out: str, image: Optional[str] = None,
            extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from wanport.config import MODELS

    if SETTINGS["smoke"]:
        model, size, frames = SMOKE[model], "64*64", 5
    raw = {"model": model, "checkpoint_dir": "/nonexistent-random", "task": MODELS[model].task,
           "prompt": "a corgi surfing a wave at sunset, cinematic", "backend": SETTINGS["backend"],
           "precision": "official" if not SETTINGS["smoke"] else "fp32",
           "sample": {"size": size, "frame_num": frames, "steps": 1}, "offload": dict(offload),
           "output": {"dir": out}}
    if image:
        raw["image"] = image
    raw.update(extra or {})
    return raw


# ----------------------------------------------------------------------------- part 1


def timing(out_dir: str, forwards: int = 2) -> Dict[str, Any]:
    from wanport.bench.random_weights import RandomWeights
    from wanport.config import build_config
    from wanport.offload.blocks import BlockStreamer
    from wanport.offload.transfers import Transfers
    from wanport.pipeline.common import prepare

    raw = _recipe("wan2.1-t2v-14b", "832*480", 81, {}, out_dir)
    prep = prepare(build_config(raw), weights=RandomWeights(0))
    rt, dev, plan = prep.runtime, prep.device, prep.plan
    pol = plan.policy
    res: Dict[str, Any] = {"model": plan.preset.name, "size": "%dx%d" % (plan.width, plan.height),
                           "frames": plan.frame_num, "device": rt.describe()}
    model = RandomWeights(0).load_dit(prep.ckpts.dit, pol, dev).bind_ops(prep.ops)
    x = torch.randn((1,) + tuple(plan.latent_shape), device=dev)
    ctx = torch.randn(1, 512, prep.ckpts.dit.config.text_dim, device=dev, dtype=pol.text_encoder)
    t = torch.tensor([999], device=dev)

    def measure(label: str, cap: Optional[float]) -> Dict[str, Any]:
        _free(rt)
        _cap(rt, cap)
        with torch.no_grad():
            model(x, t, context=ctx)  # warm-up
            rt.synchronize()
            rt.reset_peak_memory()
            times = []
            for _ in range(forwards):
                s = time.perf_counter()
                model(x, t, context=ctx)
                rt.synchronize()
                times.append(time.perf_counter() - s)
        row = {"what": label, "cap_gib": cap, "forward_s": [round(v, 4) for v in times],
               "forward_median_s": round(sorted(times)[len(times) // 2], 4),
               "cfg_step_s": round(2 * sorted(times)[len(times) // 2], 4),
               "peak_gib": round(rt.peak_memory_bytes() / GIB, 3)}
        print(json.dumps(row), flush=True)
        return row

    rows = [measure("in device memory", 48.0)]
    s = time.perf_counter()
    streamer = BlockStreamer(model, Transfers(rt, dev), prefetch=1)
    res["blocks_to_pinned_host_s"] = round(time.perf_counter() - s, 2)
    res["block_bytes"] = streamer.largest_block_bytes
    res["streamed_bytes_per_forward"] = sum(streamer.block_bytes)
    res["pinned"] = streamer.describe()["pinned"]
    _free(rt)
    # host-to-device bandwidth of one block (page-locked, side stream)
    tr = streamer.transfers
    tr.ready(tr.copy_in(streamer.host[0]))
    rt.synchronize()
    s = time.perf_counter()
    for _ in range(5):
        tr.ready(tr.copy_in(streamer.host[0]))
    rt.synchronize()
    res["h2d_gb_per_s"] = round(5 * streamer.block_bytes[0] / (time.perf_counter() - s) / 1e9, 2)
    rows.append(measure("block offload, prefetch 1", 24.0))
    streamer.prefetch = 2
    rows.append(measure("block offload, prefetch 2", 24.0))
    _cap(rt, None)
    res["rows"] = rows
    base = rows[0]["forward_median_s"]
    for r in rows:
        r["vs_in_memory"] = round(r["forward_median_s"] / base, 4)
    streamer.close()
    del model, streamer, x, ctx
    _free(rt)
    return res


# ----------------------------------------------------------------------------- part 2


def configs(out_dir: str, image: str, quant: Optional[str]) -> List[Dict[str, Any]]:
    block = {"dit": "block", "prefetch": 1}
    out = [
        dict(name="1.3b-480p run", model="wan2.1-t2v-1.3b", size="832*480", frames=81, resident=False, offload={}),
        dict(name="1.3b-480p resident", model="wan2.1-t2v-1.3b", size="832*480", frames=81, resident=True,
             offload={}),
        dict(name="14b-480p run <=48GiB", model="wan2.1-t2v-14b", size="832*480", frames=81, resident=False,
             offload={}, cap=48.0),
        dict(name="14b-480p run block <=24GiB", model="wan2.1-t2v-14b", size="832*480", frames=81,
             resident=False, offload=block, cap=24.0),
        dict(name="14b-480p resident block <=24GiB", model="wan2.1-t2v-14b", size="832*480", frames=81,
             resident=True, offload=block, cap=24.0),
        dict(name="14b-480p resident dit=model", model="wan2.1-t2v-14b", size="832*480", frames=81,
             resident=True, offload={"dit": "model"}),
        dict(name="14b-720p x33 run", model="wan2.1-t2v-14b", size="1280*720", frames=33, resident=False,
             offload={}),
        dict(name="14b-720p x33 run block+vae-host", model="wan2.1-t2v-14b", size="1280*720", frames=33,
             resident=False, offload=dict(block, vae="host_until_decode")),
        dict(name="5b-704p x41 run", model="wan2.2-ti2v-5b", size="1280*704", frames=41, resident=False,
             offload={}),
        dict(name="a14b-480p x33 run block", model="wan2.2-t2v-a14b", size="832*480", frames=33, resident=False,
             offload=block),
        dict(name="i2v-14b-480p x33 run block", model="wan2.1-i2v-14b-480p", size="832*480", frames=33,
             resident=False, offload=block, image=image),
        # recipes/wan2.1-i2v-14b-720p-48gb.yaml as written: 81 frames, blocks streamed with prefetch 2
        dict(name="i2v-14b-720p run block p2 <=48GiB", model="wan2.1-i2v-14b-720p", size="1280*720", frames=81,
             resident=False, offload={"dit": "block", "prefetch": 2}, cap=48.0, image=image),
    ]
    if quant:
        out.append(dict(name="14b-480p run block+quant %s <=24GiB" % json.dumps(quant), model="wan2.1-t2v-14b", size="832*480",
                        frames=81, resident=False, offload=block, cap=24.0, extra={"quant": quant}))
    return out


def peaks(out_dir: str, quant: Optional[str]) -> List[Dict[str, Any]]:
    from wanport.config import build_config
    from wanport.errors import WanportError
    from wanport.pipeline.api import Pipeline

    image = os.path.join(out_dir, "input.png")
    from PIL import Image

    Image.new("RGB", (832, 480), (40, 120, 200)).save(image)
    rows = []
    from wanport.pipeline.session import choose_backend, start_session

    rt = start_session(*choose_backend(SETTINGS["backend"]), {}).runtime
    for c in configs(out_dir, image, quant):
        raw = _recipe(c["model"], c["size"], c["frames"], c["offload"], out_dir, c.get("image"), c.get("extra"))
        row: Dict[str, Any] = {"config": c["name"], "cap_gib": c.get("cap")}
        _free(rt)
        _cap(rt, c.get("cap"))
        s = time.perf_counter()
        try:
            cfg = build_config(raw)
            with Pipeline.from_config(cfg, raw, weights=staged_weights(rt.device()), progress=False,
                                      resident=c["resident"]) as pipe:
                pipe.generate()
                rep = pipe.last_report
            pm = rep["peak_memory"]
            pred = pm.get("predicted") or {}
            row.update(measured_gib=round(pm["bytes"] / GIB, 3),
                       predicted_gib=round(pred.get("peak_bytes", 0) / GIB, 3) if pred else None,
                       predicted_stage=pred.get("peak_stage"), predicted_stages_gib={
                           k: round(v / GIB, 3) for k, v in (pred.get("stages") or {}).items()},
                       stages=rep.get("stages"))
            if pred:
                row["measured_over_predicted"] = round(pm["bytes"] / pred["peak_bytes"], 4)
            if "offload" in rep:
                row["offload"] = rep["offload"].get("settings")
        except (WanportError, RuntimeError) as exc:  # e.g. the quant key absent on this branch, or OOM
            row["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:300])
        row["wall_s"] = round(time.perf_counter() - s, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    _cap(rt, None)
    return rows


# ----------------------------------------------------------------------------- report


def markdown(res: Dict[str, Any]) -> str:
    lines = ["# Block offload and memory plan, %s" % res.get("device", "")]
    t = res.get("timing")
    if t:
        lines += ["", "%s %s x %d, one DiT forward (random weights); a CFG step is two forwards. Blocks to "
                      "page-locked host memory: %s s; one block %.1f MiB, %.2f GiB streamed per forward; "
                      "host-to-device %.1f GB/s (pinned: %s)."
                  % (t["model"], t["size"], t["frames"], t["blocks_to_pinned_host_s"], t["block_bytes"] / 2 ** 20,
                     t["streamed_bytes_per_forward"] / GIB, t["h2d_gb_per_s"], t["pinned"]),
                  "", "| DiT weights | memory cap GiB | forward s (median) | CFG step s | vs in memory | peak GiB |",
                  "|---|---|---|---|---|---|"]
        for r in t["rows"]:
            lines.append("| %s | %s | %.3f | %.3f | %.3f | %.2f |" % (r["what"], r["cap_gib"], r["forward_median_s"],
                                                                    r["cfg_step_s"], r["vs_in_memory"], r["peak_gib"]))
    p = res.get("peaks")
    if p:
        lines += ["", "Pipeline calls (1 step, random weights): the memory plan's prediction (the run's gate) and "
                      "the measured peak (max_memory_allocated).", "",
                  "| configuration | cap GiB | predicted GiB (stage) | measured GiB | measured / predicted | step s | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for r in p:
            if "error" in r:
                lines.append("| %s | %s | - | - | %s | - | %s |" % (r["config"], r["cap_gib"], r["error"], r["wall_s"]))
            else:
                steps = (r.get("stages") or {}).get("steps_s") or []
                lines.append("| %s | %s | %s (%s) | %.2f | %s | %s | %s |" % (
                    r["config"], r["cap_gib"], r["predicted_gib"], r["predicted_stage"], r["measured_gib"],
                    r.get("measured_over_predicted"), "%.3f" % steps[0] if steps else "-", r["wall_s"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output stem: STEM.json and STEM.md")
    ap.add_argument("--quant", default=None,
                    help="also run 14B 480p block offload with the recipe key quant set to this YAML value "
                         "(e.g. fp8 or '{dit: fp8}'), where the branch has quantized linears")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-peaks", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny models on the reference backend: checks the script on a CPU, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        SETTINGS.update(backend="reference", smoke=True)
    if args.quant is not None:
        import yaml

        args.quant = yaml.safe_load(args.quant)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    res: Dict[str, Any] = {"kind": "wanport.bench.offload", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "torch": torch.__version__, "smoke": args.smoke}
    from wanport.pipeline.session import choose_backend, start_session

    res["device"] = start_session(*choose_backend(SETTINGS["backend"]), {}).runtime.describe()
    start = time.perf_counter()
    if not args.skip_timing:
        res["timing"] = timing(out_dir)
    if not args.skip_peaks:
        res["peaks"] = peaks(out_dir, args.quant)
    res["wall_s"] = round(time.perf_counter() - start, 1)
    with open(args.out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    text = markdown(res)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
