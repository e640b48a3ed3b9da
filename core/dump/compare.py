"""``wanport compare A B``: two dumps of one recipe (say an Atlas run and an H100 run), offline.

A is measured against B (B is the reference of the relative errors). Per block, step and branch:
the relative L2 error and cosine of the fingerprints; per step: the latents' cosine, max-abs and
relative L2; every full block output present in both dumps; the video's PSNR and SSIM. The first
divergence is the first (step, branch, block) in execution order whose fingerprint error passes
the threshold (or whose output is not finite in one dump only).

A dump of a multi-process run (torchrun, ``parallel.*``) holds its block outputs gathered and
reassembled as a one-process run holds them, so it compares against a one-process dump of the
same recipe like any other: the ``parallel`` settings are not a recipe difference; they are
reported as the layout of each side.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import DumpError
from .format import MACHINE_KEYS, Dump
from .metrics import psnr, rel_error, ssim, tensor_metrics
from .observer import BRANCHES

DEFAULT_THRESHOLD = 0.05


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, "%s.%s" % (prefix, k) if prefix else str(k)))
    return out


def check_comparable(a: Dump, b: Dump, allow_different_recipe: bool) -> List[str]:
    """DumpError when the dumps cannot be compared; the warnings when they can."""
    warnings: List[str] = []
    ma, mb = a.manifest, b.manifest
    if ma["compare_hash"] != mb["compare_hash"]:
        fa, fb = _flatten(ma.get("compare_recipe", {})), _flatten(mb.get("compare_recipe", {}))
        diff = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        text = ", ".join("%s (A %r, B %r)" % (k, fa.get(k), fb.get(k)) for k in diff[:6]) or "unknown keys"
        if not allow_different_recipe:
            raise DumpError("the dumps come from different recipes (compare hash %s... vs %s...): %s. Dump both with "
                            "the same recipe (only %s may differ), or pass --allow-different-recipe"
                            % (ma["compare_hash"][:12], mb["compare_hash"][:12], text, ", ".join(MACHINE_KEYS)))
        warnings.append("different recipes: " + text)
    pa, pb = (m.get("precision", {}).get("name") for m in (ma, mb))
    if pa != pb:  # e.g. `precision: auto` resolved per device: fp32 on a CPU without bf16, official elsewhere
        warnings.append("different precision policies: A %s, B %s (dump both with an explicit precision=... to "
                        "compare like with like)" % (pa, pb))
    da, db = ma["dump"], mb["dump"]
    for key in ("num_blocks", "num_steps"):
        if da.get(key) != db.get(key):
            raise DumpError("the dumps differ in %s (A %s, B %s): not the same model and schedule"
                            % (key.replace("num_", "number of "), da.get(key), db.get(key)))
    if a.has("stats", "fingerprint_index") and b.has("stats", "fingerprint_index"):
        if not torch.equal(a.tensor("stats", "fingerprint_index"), b.tensor("stats", "fingerprint_index")):
            raise DumpError("the fingerprints were taken at different positions (A: --fingerprint %s, B: %s): dump "
                            "both with the same --fingerprint" % (da.get("fingerprint"), db.get("fingerprint")))
    return warnings


def layout(d: Dump) -> Dict[str, Any]:
    """How the dump's run was laid out: processes, the parallel degrees, the recipe's ``parallel``
    settings (``{"processes": 1}`` for a one-process dump)."""
    p = d.manifest.get("parallel")
    settings = {k: v for k, v in _flatten((d.manifest.get("recipe") or {}).get("parallel") or {}, "parallel").items()}
    if not p:
        return {"processes": 1, "settings": settings}
    return {"processes": p.get("world"), "cfg": p.get("cfg"), "ulysses": p.get("ulysses"), "ring": p.get("ring"),
            "settings": settings, "recorded": p.get("recorded")}


def describe_layout(lay: Mapping[str, Any]) -> str:
    if lay.get("processes", 1) == 1:
        return "one process"
    degrees = ", ".join("%s %d" % (k, lay[k]) for k in ("cfg", "ulysses", "ring") if (lay.get(k) or 1) > 1)
    extra = ", ".join("%s=%s" % (k, v) for k, v in sorted(lay.get("settings", {}).items())
                      if k.split(".")[-1] not in ("cfg", "ulysses", "ring"))
    return "%d processes (%s%s), gathered to rank 0" % (lay["processes"], degrees, "; " + extra if extra else "")


def _num(x: float) -> Optional[float]:
    return None if x != x or x in (float("inf"), float("-inf")) else float("%.4g" % x)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    a, b = a.double(), b.double()
    den = float(a.norm() * b.norm())
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        return None
    return _num(float(a @ b) / den) if den > 0 else (1.0 if float(a.norm() + b.norm()) == 0 else 0.0)


def compare_blocks(a: Dump, b: Dump, threshold: float) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Per-branch [step][block] fingerprint errors and cosines, and the first divergence."""
    out: Dict[str, Any] = {"branches": [], "rel_err": {}, "cosine": {}, "nonfinite_only_in_one": {}}
    events = []  # (step, branch order, block, record)
    timesteps = a.tensor("stats", "timesteps").tolist() if a.has("stats", "timesteps") else []
    for order, branch in enumerate(BRANCHES):
        key = "fingerprint." + branch
        if not (a.has("stats", key) and b.has("stats", key)):
            continue
        fa, fb = a.tensor("stats", key), b.tensor("stats", key)
        pa, pb = a.tensor("stats", "present." + branch), b.tensor("stats", "present." + branch)
        sa, sb = a.tensor("stats", "stats." + branch), b.tensor("stats", "stats." + branch)
        rel_rows, cos_rows, odd = [], [], []
        for s in range(fa.shape[0]):
            rel_row: List[Optional[float]] = []
            cos_row: List[Optional[float]] = []
            for blk in range(fa.shape[1]):
                if not (int(pa[s]) and int(pb[s])):
                    rel_row.append(None)
                    cos_row.append(None)
                    if blk == 0 and int(pa[s]) != int(pb[s]):  # one side ran no block: a reused forward
                        events.append((s, order, blk, {
                            "step": s, "t": timesteps[s] if s < len(timesteps) else None, "branch": branch,
                            "block": blk, "rel_err": None, "cosine": None, "nonfinite": None,
                            "not_computed": ["b" if int(pa[s]) else "a"]}))
                    continue
                skipped = [n for n, f in (("a", fa), ("b", fb)) if bool(torch.isnan(f[s, blk]).all())]
                if skipped:  # the block did not run there: a feature cache reused its residual
                    rel_row.append(None)
                    cos_row.append(None)
                    events.append((s, order, blk, {
                        "step": s, "t": timesteps[s] if s < len(timesteps) else None, "branch": branch, "block": blk,
                        "rel_err": None, "cosine": None, "nonfinite": None, "not_computed": skipped}))
                    continue
                bad_a = float(sa[s, blk, 4] + sa[s, blk, 5]) > 0  # NaN / Inf counts
                bad_b = float(sb[s, blk, 4] + sb[s, blk, 5]) > 0
                rel = rel_error(fa[s, blk], fb[s, blk])
                rel_row.append(_num(rel))
                cos_row.append(_cosine(fa[s, blk], fb[s, blk]))
                if bad_a != bad_b:
                    odd.append([s, blk])
                if rel > threshold or bad_a != bad_b:
                    events.append((s, order, blk, {
                        "step": s, "t": timesteps[s] if s < len(timesteps) else None, "branch": branch, "block": blk,
                        "rel_err": _num(rel), "cosine": cos_row[-1],
                        "nonfinite": {"a": bad_a, "b": bad_b} if bad_a != bad_b else None}))
            rel_rows.append(rel_row)
            cos_rows.append(cos_row)
        out["branches"].append(branch)
        out["rel_err"][branch] = rel_rows
        out["cosine"][branch] = cos_rows
        out["nonfinite_only_in_one"][branch] = odd
    first = min(events, key=lambda e: e[:3])[3] if events else None
    return out, first


def compare_latents(a: Dump, b: Dump, threshold: float) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    rows, first = [], None
    timesteps = a.manifest["sampling"].get("timesteps") or []
    experts = a.manifest["dump"].get("experts") or []
    for key in a.keys("latents"):
        if not b.has("latents", key):
            continue
        step = int(key.rsplit("step", 1)[1])
        m = tensor_metrics(a.tensor("latents", key), b.tensor("latents", key))
        row = dict(m, step=step, t=timesteps[step] if step < len(timesteps) else None,
                   expert=experts[step] if step < len(experts) else None)
        rows.append(row)
        if first is None and (m["rel_l2"] is None or m["rel_l2"] > threshold):
            first = {"step": step, "t": row["t"], "rel_l2": m["rel_l2"], "cosine": m["cosine"]}
    return sorted(rows, key=lambda r: r["step"]), first


def compare_video(a: Dump, b: Dump) -> Optional[Dict[str, Any]]:
    if not (a.has("video", "video") and b.has("video", "video")):
        return None
    va, vb = a.tensor("video", "video"), b.tensor("video", "video")
    if va.shape != vb.shape:
        return {"error": "video shapes differ: A %s, B %s" % (list(va.shape), list(vb.shape))}
    diff = (va.to(torch.int16) - vb.to(torch.int16)).abs()
    return {"frames": int(va.shape[0]), "height": int(va.shape[1]), "width": int(va.shape[2]),
            "psnr_db": psnr(va, vb), "ssim": ssim(va, vb), "max_abs": int(diff.max()) if diff.numel() else 0,
            "identical": bool(int(diff.max()) == 0) if diff.numel() else True}


def compare_dumps(dir_a: str, dir_b: str, threshold: float = DEFAULT_THRESHOLD,
                  allow_different_recipe: bool = False) -> Dict[str, Any]:
    if not threshold > 0:
        raise DumpError("compare: --threshold must be > 0, got %r" % threshold)
    a, b = Dump(dir_a, "dump A"), Dump(dir_b, "dump B")
    warnings = check_comparable(a, b, allow_different_recipe)
    blocks, first = compare_blocks(a, b, threshold)
    latents, first_latent = compare_latents(a, b, threshold)
    tensors = []
    for key in a.keys("blocks"):
        if b.has("blocks", key):
            ta, tb = a.tensor("blocks", key), b.tensor("blocks", key)
            if ta.shape != tb.shape:
                tensors.append({"key": key, "error": "shapes differ: A %s, B %s" % (list(ta.shape), list(tb.shape))})
            else:
                tensors.append(dict(tensor_metrics(ta, tb), key=key))
    video = compare_video(a, b)
    fp_identical = all(v == 0.0 for rows in blocks["rel_err"].values() for row in rows for v in row if v is not None) \
        and not any(blocks["nonfinite_only_in_one"].values())
    identical = bool(fp_identical and all(r["identical"] for r in latents)
                     and all(t.get("identical") for t in tensors)
                     and (video is None or video.get("identical", False)))
    ops_a, ops_b = a.manifest.get("ops", {}), b.manifest.get("ops", {})
    return {
        "kind": "wanport.compare",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "a": a.describe(),
        "b": b.describe(),
        "model": a.manifest.get("model"),
        "threshold": threshold,
        "identical": identical,
        "first_divergence": first,
        "first_latent_divergence": first_latent,
        "blocks": blocks,
        "latents": latents,
        "tensors": tensors,
        "only_in_a": sorted(set(a.keys("blocks")) - set(b.keys("blocks"))),
        "only_in_b": sorted(set(b.keys("blocks")) - set(a.keys("blocks"))),
        "video": video,
        "ops_differ": {s: {"a": ops_a.get(s), "b": ops_b.get(s)} for s in sorted(set(ops_a) | set(ops_b))
                       if ops_a.get(s) != ops_b.get(s)},
        "layout": {"a": layout(a), "b": layout(b)},
        "cache": cache_sides(a, b),
        "warnings": warnings,
    }


def cache_sides(a: Dump, b: Dump) -> Dict[str, Any]:
    """Each side's feature cache (docs/caching.md) and the first forward one side reused."""
    sides = {name: d.manifest.get("cache") or {"method": "none", "reused": []} for name, d in (("a", a), ("b", b))}
    first = None
    order = {"cond": 0, "uncond": 1}
    for name, c in sides.items():
        for step, branch in c.get("reused") or ():
            if first is None or (step, order.get(branch, 2)) < (first["step"], order.get(first["branch"], 2)):
                first = {"step": step, "branch": branch, "side": name}
    return {"a": sides["a"], "b": sides["b"], "first_reused": first}


def _where(h: Optional[Mapping[str, Any]]) -> str:
    h = h or {}
    return "%s @ %s" % (h.get("backend"), h.get("device_name"))


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else "%.4g" % v


def markdown(result: Mapping[str, Any]) -> str:
    a, b = result["a"], result["b"]
    lines = ["A: %s (%s; torch %s, wanport %s)" % (a["dir"], _where(a["hardware"]), a["torch"], a["wanport"]),
             "B: %s (%s; torch %s, wanport %s)" % (b["dir"], _where(b["hardware"]), b["torch"], b["wanport"]),
             "model %s; A measured against B; threshold %g (relative L2 error)"
             % (result["model"], result["threshold"]),
             ""]
    lay = result.get("layout")
    if lay and (lay["a"].get("processes", 1) > 1 or lay["b"].get("processes", 1) > 1):
        lines.append("layout (not a recipe difference): A %s; B %s"
                     % (describe_layout(lay["a"]), describe_layout(lay["b"])))
    for w in result["warnings"]:
        lines.append("**warning**: %s" % w)
    cache = result.get("cache")
    if cache and (cache["a"]["method"] != "none" or cache["b"]["method"] != "none"):
        lines.append("feature cache (lossy, not a recipe difference): A %s (%d reused), B %s (%d reused)%s" % (
            cache["a"]["method"], len(cache["a"].get("reused") or ()), cache["b"]["method"],
            len(cache["b"].get("reused") or ()), "" if cache["first_reused"] is None else
            "; first reuse: step %d, %s branch, in %s" % (
                cache["first_reused"]["step"], cache["first_reused"]["branch"], cache["first_reused"]["side"].upper())))
    first = result["first_divergence"]
    if result["identical"]:
        lines.append("**identical**: every fingerprint, latent, full tensor and the video match bit for bit.")
    elif first is None:
        lines.append("**no divergence past the threshold** (not bit-identical).")
    else:
        what = ("not computed in %s (the feature cache reused its residual)" % " and ".join(
                    x.upper() for x in first["not_computed"]) if first.get("not_computed") else
                "not finite in one dump only" if first.get("nonfinite") else
                "rel err %s, cosine %s" % (_fmt(first["rel_err"]), _fmt(first["cosine"])))
        lines.append("**first divergence**: step %d (t=%s), %s branch, block %d: %s"
                     % (first["step"], first["t"], first["branch"], first["block"], what))
    fl = result["first_latent_divergence"]
    if fl is not None:
        lines.append("first latent past the threshold: step %d (t=%s), rel L2 %s"
                     % (fl["step"], fl["t"], _fmt(fl["rel_l2"])))
    v = result["video"]
    if v and "error" not in v:
        lines.append("video: PSNR %s, SSIM %.4f, max |diff| %d of 255 (%d frames %dx%d)" % (
            "inf (identical)" if v["psnr_db"] is None else "%.2f dB" % v["psnr_db"], v["ssim"], v["max_abs"],
            v["frames"], v["width"], v["height"]))
    elif v:
        lines.append("video: %s" % v["error"])
    lines += ["", "| step | t | expert | latent rel L2 | latent cosine | latent max-abs | worst block (cond) |"
              " its rel err | blocks past threshold |", "|---|---|---|---|---|---|---|---|---|"]
    rel = result["blocks"]["rel_err"]
    cond_rows = rel.get("cond", [])
    for row in result["latents"]:
        s = row["step"]
        cond = [(e, i) for i, e in enumerate(cond_rows[s]) if e is not None] if s < len(cond_rows) else []
        worst = max(cond) if cond else None
        past = sum(1 for rows in rel.values() if s < len(rows) for e in rows[s]
                   if e is not None and e > result["threshold"])
        lines.append("| %d | %s | %s | %s | %s | %s | %s | %s | %d |" % (
            s, row["t"], row["expert"] or "", _fmt(row["rel_l2"]), _fmt(row["cosine"]), _fmt(row["max_abs"]),
            "" if worst is None else worst[1], "" if worst is None else _fmt(worst[0]), past))
    if result["tensors"]:
        lines += ["", "| full tensor | cosine | max-abs | rel L2 |", "|---|---|---|---|"]
        for t in result["tensors"]:
            if "error" in t:
                lines.append("| %s | %s | | |" % (t["key"], t["error"]))
            else:
                lines.append("| %s | %s | %s | %s |"
                             % (t["key"], _fmt(t["cosine"]), _fmt(t["max_abs"]), _fmt(t["rel_l2"])))
    for side in ("only_in_a", "only_in_b"):
        if result[side]:
            lines.append("full tensors %s: %s" % (side.replace("_", " "), ", ".join(result[side])))
    if result["ops_differ"]:
        lines += ["", "| op site | A | B |", "|---|---|---|"]
        lines += ["| %s | %s | %s |" % (s, v["a"], v["b"]) for s, v in result["ops_differ"].items()]
    return "\n".join(lines)


def plots(result: Mapping[str, Any]):
    from ..io.plots import heatmap, line_chart

    out = []
    rel = result["blocks"]["rel_err"]
    for branch, rows in rel.items():
        if rows and rows[0]:
            by_block = [[rows[s][blk] for s in range(len(rows))] for blk in range(len(rows[0]))]
            out.append(("-blocks-" + branch, lambda path, m=by_block, br=branch: heatmap(
                path, "fingerprint rel err per block over steps (%s branch), A vs B" % br, m, "step", "block",
                "rel err")))
    if result["latents"]:
        xs = [r["step"] for r in result["latents"]]
        out.append(("-latents", lambda path: line_chart(
            path, "latent rel L2 per step, A vs B", xs, {"latent rel L2": [r["rel_l2"] for r in result["latents"]]},
            "step", "rel L2", log=True, hline=result["threshold"])))
    return out


__all__ = ["compare_dumps", "check_comparable", "layout", "describe_layout", "markdown", "plots", "DEFAULT_THRESHOLD"]
