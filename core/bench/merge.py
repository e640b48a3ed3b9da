"""``wanport bench merge``: benchmark results from one or more machines into one report.

Inputs: any ``wanport bench ops|dit|pipeline`` JSON, or an earlier merged file (also the older
``{"dit": [...], "ops": [...], "notes": [...]}`` results files). Each run belongs to a *source*:
its backend and device (``cuda @ NVIDIA H100 80GB HBM3``), or the label given for its file.

The markdown has one table per run (per backend), then, when there is more than one source,
combined tables: each (op, case) on one row with a latency and an error column per source (its
fastest exact implementation, named in the cell) and the ratio of the first two sources; the
same for DiT forwards and pipeline runs. The published reference numbers of the models seen
come last, labelled published.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from . import dit as bench_dit
from . import ops as bench_ops
from . import pipeline as bench_pipeline
from . import published

KINDS = {"wanport.bench.ops": "ops", "wanport.bench.dit": "dit", "wanport.bench.pipeline": "pipeline"}
MERGED = "wanport.bench.merged"


def source_label(run: Mapping[str, Any]) -> str:
    device = str(run.get("device", "?")).split(" (")[0]
    return "%s @ %s" % (run.get("backend", "?"), device)


def load_runs(paths: Sequence[str], labels: Optional[Sequence[str]] = None) -> Tuple[Dict[str, List[Dict]], List[str]]:
    """{"ops": [...], "dit": [...], "pipeline": [...]} with a ``source`` on each run, and the notes
    of merged inputs. ``labels``: one per input file (replaces the backend @ device label)."""
    if labels and len(labels) != len(paths):
        raise ConfigError("bench merge: %d --labels for %d input files; give one label per file"
                          % (len(labels), len(paths)))
    runs: Dict[str, List[Dict]] = {"ops": [], "dit": [], "pipeline": []}
    notes: List[str] = []
    for i, path in enumerate(paths):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise ConfigError("bench merge: cannot read %s (%s)" % (path, exc.strerror or exc)) from None
        except ValueError as exc:
            raise ConfigError("bench merge: %s is not JSON (%s)" % (path, exc)) from None
        found = _runs_of(data)
        if found is None:
            raise ConfigError("bench merge: %s is not a wanport bench result (kind %r); give the JSON written by "
                              "`wanport bench ops|dit|pipeline --out` or `wanport bench merge`"
                              % (path, data.get("kind") if isinstance(data, dict) else type(data).__name__))
        for part, run in found:
            run = dict(run)
            run["source"] = labels[i] if labels else run.get("source") or source_label(run)
            run["file"] = path
            runs[part].append(run)
        if isinstance(data, dict):
            notes.extend(data.get("notes") or [])
    return runs, notes


def _runs_of(data: Any) -> Optional[List[Tuple[str, Dict]]]:
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind in KINDS:
        return [(KINDS[kind], data)]
    if kind == MERGED or (kind is None and ("ops" in data or "dit" in data)):
        return [(part, run) for part in ("ops", "dit", "pipeline") for run in data.get(part) or []]
    return None


def _sources(runs: Mapping[str, List[Dict]]) -> List[str]:
    seen: List[str] = []
    for part in ("ops", "dit", "pipeline"):
        for run in runs[part]:
            if run["source"] not in seen:
                seen.append(run["source"])
    return seen


def combine(runs: Sequence[Mapping[str, Any]], rows_of: Callable[[Mapping[str, Any]], List[Tuple[tuple, Dict]]],
            better: Callable[[Dict, Dict], bool]) -> Tuple[List[tuple], Dict[tuple, Dict[str, Dict]]]:
    """Rows keyed across sources: (keys in first-seen order, {key: {source: best cell}})."""
    order: List[tuple] = []
    table: Dict[tuple, Dict[str, Dict]] = {}
    for run in runs:
        for key, cell in rows_of(run):
            if key not in table:
                order.append(key)
                table[key] = {}
            have = table[key].get(run["source"])
            if have is None or better(cell, have):
                table[key][run["source"]] = cell
    return order, table


def _ops_rows(run):
    return [((r["kind"], r["case"]), r) for r in run["rows"]
            if "median_ms" in r and not r["impl"].endswith("(lossy)")]


def _dit_rows(run):
    s = run["size"]
    return [((run["model"], "%dx%d x %d" % (s["width"], s["height"], s["frames"])), run["wanport"])]


def _pipeline_rows(run):
    s = run["size"]
    return [((run["model"], "%dx%d x %d, %d steps" % (s["width"], s["height"], s["frames"], run["steps"])), run)]


def _faster(key: str):
    return lambda a, b: a[key] < b[key]


def _ratio(cells: Mapping[str, Dict], sources: Sequence[str], key: str) -> str:
    if len(sources) < 2 or sources[0] not in cells or sources[1] not in cells:
        return ""
    a, b = cells[sources[0]].get(key), cells[sources[1]].get(key)
    return "%.3f" % (b / a) if a and b else ""


def combined_ops(runs, sources) -> Tuple[List[Dict], str]:
    order, table = combine(runs, _ops_rows, _faster("median_ms"))
    head = "| op | case | " + " | ".join("%s ms (impl) | %s rel err" % (s, s) for s in sources)
    head += (" | %s / %s |" % (sources[1], sources[0])) if len(sources) > 1 else " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(sources) + (1 if len(sources) > 1 else 0))]
    rows = []
    for kind, case in order:
        cells = table[(kind, case)]
        row = {"kind": kind, "case": case, "by_source": {}}
        parts = []
        for s in sources:
            c = cells.get(s)
            if c is None:
                parts += ["", ""]
                continue
            err = c.get("rel_err_vs_f64")
            row["by_source"][s] = {"impl": c["impl"], "median_ms": c["median_ms"], "rel_err_vs_f64": err}
            parts += ["%.3f (%s)" % (c["median_ms"], c["impl"]), "n/a" if err is None else "%.3g" % err]
        ratio = _ratio(cells, sources, "median_ms")
        row["ratio"] = float(ratio) if ratio else None
        rows.append(row)
        lines.append("| %s | %s | %s%s" % (kind, case, " | ".join(parts),
                                           (" | %s |" % ratio) if len(sources) > 1 else " |"))
    return rows, "\n".join(lines)


def _combined_simple(runs, sources, rows_of, key: str, fmt: Callable[[Dict], str], what: str) -> Tuple[List[Dict], str]:
    order, table = combine(runs, rows_of, _faster(key))
    head = "| model | %s | %s |" % (what, " | ".join(sources))
    if len(sources) > 1:
        head += " %s / %s |" % (sources[1], sources[0])
    lines = [head, "|" + "---|" * (2 + len(sources) + (1 if len(sources) > 1 else 0))]
    rows = []
    for key_ in order:
        cells = table[key_]
        rows.append({"model": key_[0], "case": key_[1], "by_source": {s: cells[s].get(key) for s in cells}})
        line = "| %s | %s | %s |" % (key_[0], key_[1], " | ".join(fmt(cells[s]) if s in cells else "" for s in sources))
        if len(sources) > 1:
            line += " %s |" % _ratio(cells, sources, key)
        lines.append(line)
    return rows, "\n".join(lines)


def _pipeline_cell(c: Mapping[str, Any]) -> str:
    return "%.1f s (step %.3f s)" % (c["compute_s"], c["step_median_s"] or 0)


def combined_tables(result: Mapping[str, Any]) -> Dict[str, Tuple[List[Dict], str, str]]:
    """name -> (rows, markdown table, heading) of the combined tables (more than one source)."""
    sources = result["sources"]
    out: Dict[str, Tuple[List[Dict], str, str]] = {}
    if len(sources) < 2:
        return out
    if result["ops"]:
        out["ops"] = combined_ops(result["ops"], sources) + ("Ops, combined (fastest exact implementation per source)",)
    if result["dit"]:
        out["dit"] = _combined_simple(result["dit"], sources, _dit_rows, "median_s",
                                      lambda c: "%.3f s" % c["median_s"], "size") + ("DiT forward, combined",)
    if result["pipeline"]:
        out["pipeline"] = _combined_simple(result["pipeline"], sources, _pipeline_rows, "compute_s", _pipeline_cell,
                                           "size, steps") + (
            "Pipeline, combined (compute = text + image + VAE encode + denoise + decode)",)
    return out


def merge(paths: Sequence[str], labels: Optional[Sequence[str]] = None, notes: Sequence[str] = ()) -> Dict[str, Any]:
    runs, old_notes = load_runs(paths, labels)
    models = sorted({r["model"] for part in ("dit", "pipeline") for r in runs[part]}
                    | {c["model"] for r in runs["ops"] for c in r.get("cases", [])})
    result: Dict[str, Any] = {
        "kind": MERGED,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "inputs": list(paths),
        "sources": _sources(runs),
        "ops": runs["ops"],
        "dit": runs["dit"],
        "pipeline": runs["pipeline"],
        "notes": list(old_notes) + list(notes),
        "published": published.published_rows(models or None),
    }
    result["combined"] = {name: rows for name, (rows, _, _) in combined_tables(result).items()}
    return result


def markdown(result: Mapping[str, Any]) -> str:
    parts = ["## Sources\n\n" + "\n".join("- %s" % s for s in result["sources"])]
    for _, table, heading in combined_tables(result).values():
        parts.append("## %s\n\n%s" % (heading, table))
    for run in result["pipeline"]:
        parts.append("## Pipeline: %s\n\n%s" % (run["source"], bench_pipeline.markdown(dict(run, published=[]))))
    for run in result["dit"]:
        parts.append("## DiT forward: %s\n\n%s" % (run["source"], bench_dit.markdown(run)))
    for run in result["ops"]:
        parts.append("## Ops: %s\n\n%s" % (run["source"], bench_ops.markdown(run)))
    table = published.markdown(result.get("published") or [])
    if table:
        parts.append("## Published\n\n" + table)
    if result.get("notes"):
        parts.append("## Notes\n\n" + "\n".join("- " + n for n in result["notes"]))
    return "\n\n".join(parts)


def plots(result: Mapping[str, Any]):
    """Latency per (op, case) per source (fastest exact implementation of each)."""
    from ..io.plots import bar_chart

    if not result["ops"]:
        return []
    sources = result["sources"]
    order, table = combine(result["ops"], _ops_rows, _faster("median_ms"))
    labels = ["%s | %s" % k for k in order]
    series = {s: [table[k][s]["median_ms"] if s in table[k] else None for k in order] for s in sources}
    return [("-ops", lambda path: bar_chart(path, "op latency per source (fastest exact implementation)", labels,
                                            series, "median latency (ms, log scale)"))]


__all__ = ["merge", "markdown", "plots", "load_runs", "source_label", "combine"]
