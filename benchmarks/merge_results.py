"""Merge raw `wanport bench` JSON files into one results file + a markdown table.

    python benchmarks/merge_results.py benchmarks/results/2026-11-23-h100 run/*.json [--note "..."]

Writes <stem>.json ({"dit": [...], "ops": [...], "notes": [...]}) and <stem>.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from wanport.bench import dit as bench_dit
from wanport.bench import ops as bench_ops
from wanport.io.atomic import atomic_path, write_json_atomic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stem")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    merged = {"dit": [], "ops": [], "notes": args.note}
    for path in args.inputs:
        with open(path) as f:
            data = json.load(f)
        kind = data.get("kind")
        if kind == "wanport.bench.dit":
            merged["dit"].append(data)
        elif kind == "wanport.bench.ops":
            merged["ops"].append(data)
        else:
            print("skipping %s (kind %r)" % (path, kind), file=sys.stderr)
    parts = []
    for d in merged["dit"]:
        parts.append("### DiT forward\n\n" + bench_dit.markdown(d))
    for o in merged["ops"]:
        parts.append("### Ops\n\n" + bench_ops.markdown(o))
    if merged["notes"]:
        parts.append("### Notes\n\n" + "\n".join("- " + n for n in merged["notes"]))
    write_json_atomic(args.stem + ".json", merged)
    with atomic_path(args.stem + ".md") as tmp:
        with open(tmp, "w") as f:
            f.write("\n\n".join(parts) + "\n")
    print("wrote %s.json and %s.md" % (args.stem, args.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
