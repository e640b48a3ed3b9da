"""The recipe's ``cache:`` section and its checks (before anything loads) -> :class:`CacheSettings`.

Every method's published defaults (docs/caching.md) fill the fields left null; one problem per
bad value, each naming the fix, collected into the recipe's one ``ConfigError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from ..recipe_fields import _f

METHODS = ("none", "teacache", "magcache", "first_block")

#: first-block cache: ParaAttention publishes no Wan value; 0.08 is its default for FLUX.1
FIRST_BLOCK_THRESHOLD = 0.08


@dataclass
class CacheConfig:
    method: str = _f("none", type="str", choices=METHODS,
                     help="none (exact, the default) | teacache | magcache | first_block: reuse the blocks' "
                          "residual on steps whose change is small (lossy; docs/caching.md)")
    threshold: Optional[float] = _f(None, type="float?",
                                    help="reuse while the method's accumulated statistic stays below it; 0 never "
                                         "reuses (published default per model when null)")
    warmup_steps: Optional[int] = _f(None, type="int?",
                                     help="the first steps always computed (per expert with per_expert) "
                                          "(method default when null)")
    cutoff_steps: Optional[int] = _f(None, type="int?",
                                     help="the last steps always computed (method default when null)")
    max_reuse: Optional[int] = _f(None, type="int?",
                                  help="most consecutive reuses per branch (MagCache's K; null: the method's "
                                       "default, unlimited for teacache and first_block)")
    input: Optional[str] = _f(None, type="str?", choices=("e", "e0"),
                              help="teacache: the statistic's input, e (time embedding, default) or e0 "
                                   "(modulation; TeaCache's use_ret_steps, 5 warm-up steps, no cut-off)")
    coefficients: Optional[List[float]] = _f(None, type="float_list?",
                                             help="teacache: the rescaling polynomial, highest power first "
                                                  "(published per model when null)")
    per_expert: bool = _f(True, type="bool",
                          help="two-expert models: one cache state per expert, warm-up counted per expert; "
                               "false: one state, reset at the switch (never reuses across experts either way)")
    schedule: Optional[List[int]] = _f(None, type="int_list?",
                                       help="explicit steps (0-based) to reuse in both branches, in place of the "
                                            "method's decision (speed measurement with random weights)")


@dataclass(frozen=True)
class CacheSettings:
    """A checked ``cache:`` section with every default filled in."""

    method: str
    threshold: float
    #: None (magcache): int(retention x the expert's step count)
    warmup_steps: Optional[int]
    cutoff_steps: int
    max_reuse: Optional[int]
    per_expert: bool
    schedule: Optional[Tuple[int, ...]]
    #: teacache: "e" or "e0" and the polynomial (high power first); where it comes from
    input: Optional[str] = None
    coefficients: Optional[Tuple[float, ...]] = None
    #: magcache: retention ratio (share of each expert's first steps always computed)
    retention: Optional[float] = None
    #: the model whose published data is used (or "recipe")
    source: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def to_dict(self) -> dict:
        return {"method": self.method, "threshold": self.threshold, "warmup_steps": self.warmup_steps,
                "cutoff_steps": self.cutoff_steps, "max_reuse": self.max_reuse, "per_expert": self.per_expert,
                "schedule": list(self.schedule) if self.schedule is not None else None, "input": self.input,
                "coefficients": list(self.coefficients) if self.coefficients else None,
                "retention": self.retention, "data_from": self.source, "lossy": self.enabled}


NONE = CacheSettings("none", 0.0, 0, 0, None, True, None)


def check_cache(c: Any, preset_name: str, steps: int, image: bool, problems: List[str]) -> CacheSettings:
    """The ``cache:`` section against the model and the step count; appends problems."""
    from . import published as P

    if c is None:
        return NONE
    method = c.method
    if method == "none":
        set_fields = [name for name in ("threshold", "warmup_steps", "cutoff_steps", "max_reuse", "input",
                                        "coefficients", "schedule") if getattr(c, name) is not None]
        if set_fields:
            problems.append("cache.%s: set, but cache.method is none (exact); choose cache.method: teacache, "
                            "magcache or first_block, or remove cache.%s" % (set_fields[0], set_fields[0]))
        return NONE
    before = len(problems)
    if c.threshold is not None and (not math.isfinite(c.threshold) or c.threshold < 0):
        problems.append("cache.threshold: must be a number >= 0 (0 never reuses), got %r" % c.threshold)
    for name in ("warmup_steps", "cutoff_steps"):
        v = getattr(c, name)
        if v is not None and not 0 <= v <= steps:
            problems.append("cache.%s: must be in [0, %d] (the run has %d steps), got %d" % (name, steps, steps, v))
    if c.max_reuse is not None and c.max_reuse < 1:
        problems.append("cache.max_reuse: must be >= 1 (null: the method's default), got %d" % c.max_reuse)
    if method != "teacache":
        for name in ("input", "coefficients"):
            if getattr(c, name) is not None:
                problems.append("cache.%s: only for cache.method: teacache; remove it" % name)
    schedule = None
    if c.schedule is not None:
        bad = [s for s in c.schedule if not 0 < s < steps]
        if bad:
            problems.append("cache.schedule: step %d is outside 1..%d (0-based; step 0 has nothing cached to "
                            "reuse)" % (bad[0], steps - 1))
        elif len(set(c.schedule)) != len(c.schedule):
            problems.append("cache.schedule: lists a step twice; give each step to reuse once")
        schedule = tuple(sorted(set(c.schedule)))
    src, coeff, inp, retention = None, None, None, None
    max_reuse = c.max_reuse
    if method == "teacache":
        inp = c.input or "e"
        src, fit = P.teacache_fit(preset_name)
        if c.coefficients is not None:
            if not c.coefficients or not all(math.isfinite(v) for v in c.coefficients):
                problems.append("cache.coefficients: give a non-empty list of finite numbers, highest power first")
            coeff, src = tuple(float(v) for v in c.coefficients), "recipe"
        elif fit is None:
            problems.append("cache.method: teacache publishes no rescaling polynomial for %s; give "
                            "cache.coefficients: [...] (highest power first) or use cache.method: magcache or "
                            "first_block" % preset_name)
        else:
            coeff = fit[inp]
        threshold = c.threshold
        if threshold is None:
            table = P.TEACACHE_THRESHOLDS.get(src or "", {}).get(inp)
            threshold = table[1] if table else 0.2  # the fast setting of the published table
        warmup = c.warmup_steps if c.warmup_steps is not None else (5 if inp == "e0" else 1)
        cutoff = c.cutoff_steps if c.cutoff_steps is not None else (0 if inp == "e0" else 1)
    elif method == "magcache":
        src, curve = P.magcache_curve(preset_name, max(steps, 1), image)
        if curve is None:
            problems.append("cache.method: magcache publishes no magnitude-ratio curve for %s; use cache.method: "
                            "teacache or first_block" % preset_name)
        thr, k, retention = P.MAGCACHE_DEFAULTS.get((src or "").split("+")[0], (0.12, 2, 0.2))
        threshold = c.threshold if c.threshold is not None else thr
        max_reuse = c.max_reuse if c.max_reuse is not None else k
        warmup = c.warmup_steps  # None: from the retention ratio, per expert
        cutoff = c.cutoff_steps if c.cutoff_steps is not None else 0
    else:  # first_block
        threshold = c.threshold if c.threshold is not None else FIRST_BLOCK_THRESHOLD
        warmup = c.warmup_steps if c.warmup_steps is not None else 1
        cutoff = c.cutoff_steps if c.cutoff_steps is not None else 0
        src = "ParaAttention default"
    if len(problems) > before:
        return NONE
    return CacheSettings(method, float(threshold), None if warmup is None else int(warmup), int(cutoff), max_reuse,
                         bool(c.per_expert), schedule,
                         input=inp, coefficients=coeff, retention=retention, source=src)


__all__ = ["CacheConfig", "CacheSettings", "METHODS", "NONE", "check_cache"]
