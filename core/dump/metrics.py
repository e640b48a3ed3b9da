"""Distances between two tensors (cosine, max-abs, relative L2) and two videos (PSNR, SSIM),
in float64 on the host, in chunks (full block outputs can be gigabytes)."""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

CHUNK = 1 << 24


def _clean(value: float) -> Optional[float]:
    return None if math.isnan(value) or math.isinf(value) else float("%.6g" % value)


def tensor_metrics(a: torch.Tensor, b: torch.Tensor) -> Dict[str, Optional[float]]:
    """``a`` against the reference ``b``: cosine similarity, max |a - b|, ||a - b|| / ||b||, and
    whether either holds NaN/Inf (then the distances are None and ``nonfinite`` is set)."""
    if a.shape != b.shape:
        raise ValueError("shapes differ: %s vs %s" % (tuple(a.shape), tuple(b.shape)))
    fa, fb = a.reshape(-1), b.reshape(-1)
    dot = na = nb = nd = 0.0
    max_abs = 0.0
    nonfinite = 0
    for i in range(0, fa.numel(), CHUNK):
        x, y = fa[i:i + CHUNK].double(), fb[i:i + CHUNK].double()
        bad = ~(torch.isfinite(x) & torch.isfinite(y))
        if bool(bad.any()):
            nonfinite += int(bad.sum())
            x, y = x[~bad], y[~bad]
        d = x - y
        dot += float(x @ y)
        na += float(x @ x)
        nb += float(y @ y)
        nd += float(d @ d)
        if d.numel():
            max_abs = max(max_abs, float(d.abs().max()))
    if na == 0.0 and nb == 0.0:
        cosine = 1.0
    else:
        cosine = dot / math.sqrt(na * nb) if na > 0 and nb > 0 else 0.0
    rel = math.sqrt(nd / nb) if nb > 0 else (0.0 if nd == 0 else float("inf"))
    out = {"cosine": _clean(cosine), "max_abs": _clean(max_abs), "rel_l2": _clean(rel),
           "nonfinite": nonfinite, "identical": bool(nonfinite == 0 and nd == 0.0)}
    if nonfinite:
        out["cosine"] = out["max_abs"] = out["rel_l2"] = None
    return out


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| of small tensors (fingerprints); inf where either is not finite."""
    a, b = a.double(), b.double()
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return float("inf")
    nb = float(b.norm())
    nd = float((a - b).norm())
    return nd / nb if nb > 0 else (0.0 if nd == 0 else float("inf"))


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 255.0) -> Optional[float]:
    """dB over all frames and channels of uint8 videos [F, H, W, 3]; None when identical (infinite)."""
    mse = 0.0
    fa, fb = a.reshape(-1), b.reshape(-1)
    for i in range(0, fa.numel(), CHUNK):
        d = fa[i:i + CHUNK].double() - fb[i:i + CHUNK].double()
        mse += float(d @ d)
    mse /= max(1, fa.numel())
    return None if mse == 0 else round(10.0 * math.log10(peak * peak / mse), 4)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, frames_per_chunk: int = 4) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of the
    luma (BT.601) of uint8 videos [F, H, W, 3], over every frame."""
    g = _gaussian()
    k = g.numel()
    wx, wy = g.view(1, 1, 1, k), g.view(1, 1, k, 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, wx), wy)

    total, count = 0.0, 0
    for i in range(0, a.shape[0], frames_per_chunk):
        x = (a[i:i + frames_per_chunk].double() @ luma).unsqueeze(1)
        y = (b[i:i + frames_per_chunk].double() @ luma).unsqueeze(1)
        if min(x.shape[-2:]) < k:  # frames smaller than the window: one global window
            mx, my = x.mean((-2, -1), keepdim=True), y.mean((-2, -1), keepdim=True)
            vx, vy = x.var((-2, -1), unbiased=False, keepdim=True), y.var((-2, -1), unbiased=False, keepdim=True)
            cov = ((x - mx) * (y - my)).mean((-2, -1), keepdim=True)
        else:
            mx, my = blur(x), blur(y)
            vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        total += float(s.mean((-3, -2, -1)).sum())
        count += x.shape[0]
    return round(total / max(1, count), 6)


__all__ = ["tensor_metrics", "rel_error", "psnr", "ssim"]
