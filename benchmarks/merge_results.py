"""Merge raw `wanport bench` JSON files into one results file + markdown (+ PNG with matplotlib).

    python benchmarks/merge_results.py benchmarks/results/2026-11-23-h100 run/*.json [--note "..."]

The same as ``wanport bench merge run/*.json --out benchmarks/results/2026-11-23-h100 [--note ...]``
(kept for the commands in older notes); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys

from wanport.cli import main as wanport


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stem")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    notes = [x for n in args.note for x in ("--note", n)]
    return wanport(["bench", "merge"] + args.inputs + ["--out", args.stem] + notes)


if __name__ == "__main__":
    sys.exit(main())
