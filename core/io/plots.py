"""PNG charts of benchmark and comparison results, through matplotlib (the optional ``plot``
extra). Every function writes one PNG atomically; without matplotlib, :func:`plots_available`
is False and callers skip the PNGs with :data:`MISSING`."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from .atomic import atomic_path

MISSING = ("matplotlib is not installed: PNG plots skipped (JSON and markdown written). "
           "Install it with: pip install 'wanport[plot]'  (or: pip install matplotlib)")


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    plt = _pyplot()
    try:
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def _finite(v: Optional[float]) -> bool:
    return v is not None and not (isinstance(v, float) and (math.isnan(v) or math.isinf(v)))


def bar_chart(path: str, title: str, labels: Sequence[str], series: Dict[str, Sequence[Optional[float]]],
              xlabel: str, log: bool = True) -> None:
    """Horizontal grouped bars: one group per label, one bar per series (None: no bar)."""
    plt = _pyplot()
    n, k = len(labels), max(1, len(series))
    longest = max((len(label) for label in labels), default=0)
    fig, ax = plt.subplots(figsize=(min(30.0, 6.0 + 0.065 * longest), 1.2 + 0.22 * n * k + 0.1 * n))
    height = 0.8 / k
    for j, (name, values) in enumerate(series.items()):
        ys = [i + j * height for i in range(n)]
        xs = [v if _finite(v) and (v > 0 or not log) else 0.0 for v in values]
        ax.barh(ys, xs, height=height, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(n)])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7)
    _save(fig, path)


def line_chart(path: str, title: str, xs: Sequence[float], series: Dict[str, Sequence[Optional[float]]],
               xlabel: str, ylabel: str, log: bool = False, hline: Optional[float] = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in series.items():
        pts = [(x, v) for x, v in zip(xs, values) if _finite(v) and (v > 0 or not log)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="red", linestyle="--", linewidth=1, label="threshold")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def heatmap(path: str, title: str, rows: List[List[Optional[float]]], xlabel: str, ylabel: str,
            colorbar: str, floor: float = 1e-12) -> None:
    """``rows[i][j]`` drawn at (x=j, y=i) on a log10 colour scale (values <= floor: the floor)."""
    plt = _pyplot()
    data = [[math.log10(max(v, floor)) if _finite(v) else float("nan") for v in row] for row in rows]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.12 * max(1, len(rows))))
    im = ax.imshow(data, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("log10 " + colorbar)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


__all__ = ["MISSING", "plots_available", "bar_chart", "line_chart", "heatmap"]
