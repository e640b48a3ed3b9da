"""The feature cache of one ``generate`` call: per (expert, branch) state, the skip decision of
every forward, the cached residuals, the per-step report rows.

The DiT calls :meth:`FeatureCache.blocks` in place of its block loop (``WanDiT.forward``, when a
cache is attached); the sampling loop says which step, branch and expert the next forward is
(:meth:`FeatureCache.enter`). Parallel correctness holds by construction (docs/caching.md):

- a decision is a function of host numbers only; a statistic that depends on this rank's tokens
  is a ratio of sums whose per-rank parts are all-gathered over the sequence group and added in
  rank order on the host (so every rank gets the same float64 bits and decides the same thing;
  padded tokens are left out, so the sums are the one-process sums);
- the cached residual is this rank's own shard (the blocks' input and output are shards);
- each CFG branch keeps its own state, whether it runs on its own rank group or after the other
  branch in one process, so the CFG-parallel pair decides per branch as one process does;
- a two-expert model keeps one state per expert (``per_expert``) or resets the one state at the
  switch: a residual of one expert is never added to the other's stream.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .config import CacheSettings

BlocksFn = Callable[[torch.Tensor, int, Optional[int]], torch.Tensor]


class BranchState:
    """What one (expert, branch) remembers between its forwards."""

    def __init__(self, expert: str) -> None:
        self.expert = expert
        self.prev_input: Optional[torch.Tensor] = None  # teacache: the previous modulated input
        self.prev_first: Optional[torch.Tensor] = None  # first_block: block 0's residual at the last compute
        self.residual: Optional[torch.Tensor] = None  # this rank's shard of the cached residual
        self.accumulated = 0.0
        self.mag_ratio = 1.0
        self.mag_steps = 0
        self.run = 0  # consecutive reuses


class ShardSums:
    """Sums of per-rank partial statistics over the sequence group, identical on every rank."""

    def __init__(self, mesh=None, comm=None) -> None:
        self.mesh = mesh if mesh is not None and mesh.sp_degree > 1 else None
        self.comm = comm

    @property
    def rank(self) -> int:
        return self.mesh.sp_rank if self.mesh is not None else 0

    def __call__(self, partial: torch.Tensor) -> List[float]:
        """``partial``: this rank's float32 sums [k] on its device -> the group's sums (float64, host)."""
        if self.mesh is None:
            return [float(v) for v in partial.detach().double().cpu().tolist()]
        import contextlib

        import torch.distributed as dist

        parts = [torch.empty_like(partial) for _ in range(self.mesh.sp_degree)]
        with (self.comm if self.comm is not None else contextlib.nullcontext()):
            dist.all_gather(parts, partial.contiguous(), group=self.mesh.sp_group)
        host = torch.stack(parts).detach().double().cpu()
        total = [0.0] * host.shape[1]
        for r in range(host.shape[0]):  # rank order, the same on every rank
            for j in range(host.shape[1]):
                total[j] += float(host[r, j])
        return total


class FeatureCache:
    """One call's cache. ``experts``: the expert name of every step (one name for one model);
    ``curve``: MagCache's (cond, uncond) ratio per step."""

    #: test seam: ``fn(sp_rank, partial) -> partial`` applied to this rank's partial sums before
    #: they are combined (tests make the shards' statistics differ and check the decisions agree)
    statistic_hook: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None

    def __init__(self, settings: CacheSettings, experts: Sequence[str], reducer: Optional[ShardSums] = None,
                 curve: Optional[Sequence[Tuple[float, float]]] = None) -> None:
        self.s = settings
        self.experts = list(experts)
        self.n = len(self.experts)
        self.reducer = reducer or ShardSums()
        self.curve = curve
        self.states: Dict[Tuple[str, str], BranchState] = {}
        self.rows: List[Dict[str, Any]] = []
        self.current: Optional[Tuple[int, str, str]] = None
        self.reused = 0
        self.forwards = 0
        # each step's index within its expert's run of steps, and that run's length
        self._local: List[int] = []
        self._count: Dict[str, int] = {}
        first: Dict[str, int] = {}
        for i, name in enumerate(self.experts):
            key = name if settings.per_expert else "all"
            first.setdefault(key, i)
            self._local.append(i - first[key])
            self._count[key] = self._count.get(key, 0) + 1

    # ------------------------------------------------------------------ the loop's side
    def enter(self, step: int, branch: str, expert: str) -> None:
        """The next forward is ``branch`` ("cond"/"uncond") of ``step`` on ``expert``."""
        self.current = (int(step), branch, expert)

    def _state(self, step: int, branch: str, expert: str) -> Tuple[BranchState, bool]:
        key = (expert if self.s.per_expert else "all", branch)
        st = self.states.get(key)
        switched = False
        if st is None:
            st = self.states[key] = BranchState(expert)
        elif st.expert != expert:  # one state for both experts: reset at the switch
            st = self.states[key] = BranchState(expert)
            switched = True
        return st, switched

    def _warmup(self, step: int) -> int:
        if self.s.warmup_steps is not None:
            return self.s.warmup_steps
        key = self.experts[step] if self.s.per_expert else "all"
        return int(self._count[key] * (self.s.retention or 0.0))  # MagCache: the retention ratio

    # ------------------------------------------------------------------ statistics
    def _ratio(self, a: torch.Tensor, b: torch.Tensor, real: Optional[int]) -> float:
        """sum|a - b| / sum|b| over the real tokens of the whole sequence group. ``real``: this
        rank's real token rows along dim 1 (None: the tensors are the same on every rank)."""
        if real is not None:
            a, b = a.narrow(1, 0, real), b.narrow(1, 0, real)
        partial = torch.stack([(a.float() - b.float()).abs().sum(), b.float().abs().sum()])
        rank = self.reducer.rank
        if real is None and rank != 0:
            partial = torch.zeros_like(partial)  # replicated: counted once, from sequence rank 0
        hook = type(self).statistic_hook
        if hook is not None:
            partial = hook(rank, partial)
        diff, ref = self.reducer(partial)
        return diff / ref if ref > 0 else float("inf")

    # ------------------------------------------------------------------ the model's side
    def blocks(self, h: torch.Tensor, run: BlocksFn, *, e: torch.Tensor, e0: torch.Tensor, tokens: int,
               sp=None) -> torch.Tensor:
        """The blocks' output for input ``h`` (this rank's tokens), computed by ``run(h, start,
        stop)`` or reused. ``e``/``e0``: the time embedding and modulation of this forward;
        ``tokens``: the real token count of the whole sequence; ``sp``: the sequence plan or None."""
        if self.current is None:  # a forward outside the sampling loop: exact
            return run(h, 0, None)
        step, branch, expert = self.current
        self.current = None
        st, switched = self._state(step, branch, expert)
        local = self._local[step]
        chunk = h.shape[1]
        real = chunk if sp is None else max(0, min(chunk, tokens - sp.rank * chunk))
        per_token = e.dim() == 3
        method, thr = self.s.method, self.s.threshold
        forced = None
        if switched:
            forced = "expert switch"
        elif st.residual is None:
            forced = "nothing cached"
        elif local < self._warmup(step):
            forced = "warmup"
        elif step >= self.n - self.s.cutoff_steps:
            forced = "cutoff"
        elif self.s.max_reuse is not None and st.run >= self.s.max_reuse and method != "magcache":
            forced = "max_reuse"  # (MagCache counts its K itself, below)
        stat: Optional[float] = None
        reuse = False
        first_out = None
        if method == "teacache":
            m = e0 if self.s.input == "e0" else e
            rel = None
            if st.prev_input is not None and st.prev_input.shape == m.shape:
                rel = self._ratio(m, st.prev_input, real if per_token else None)
            st.prev_input = m.detach().clone()
            if forced is None and rel is not None:
                st.accumulated += _poly(self.s.coefficients, rel)
                stat = st.accumulated
                reuse = thr > 0 and st.accumulated < thr
            elif forced is None:
                forced = "no previous input"
        elif method == "magcache":
            if forced is None:
                ratio = self.curve[step][0 if branch == "cond" else 1]
                st.mag_ratio *= ratio
                st.mag_steps += 1
                st.accumulated += abs(1.0 - st.mag_ratio)
                stat = st.accumulated
                reuse = thr > 0 and st.accumulated < thr and st.mag_steps <= (self.s.max_reuse or 1 << 30)
        else:  # first_block: block 0 always runs; its residual decides
            h_in = h.clone()  # a block may add into its input in place
            first_out = run(h, 0, 1)
            r = first_out - h_in
            if forced is None and st.prev_first is not None:
                stat = self._ratio(r, st.prev_first, real)
                reuse = thr > 0 and stat < thr
            elif forced is None:
                forced = "no previous block-0 residual"
        if self.s.schedule is not None:  # the explicit list replaces the method's decision
            reuse = step in self.s.schedule and st.residual is not None and not switched
            reason = "schedule" if reuse else (forced if forced in ("expert switch", "nothing cached")
                                               else "not in schedule")
        else:
            if forced is not None:
                reuse = False
            reason = forced or ("below threshold" if reuse else "above threshold")
        if reuse:
            st.run += 1
            self.reused += 1
            out = (first_out if first_out is not None else h) + st.residual
        else:  # computed: the accumulated statistic starts again from here
            st.run = 0
            st.accumulated, st.mag_ratio, st.mag_steps = 0.0, 1.0, 0
            if first_out is not None:
                base = first_out.clone()  # the next block may add into its input in place
                out = run(first_out, 1, None)
                st.prev_first = r
            else:
                base = h.clone()
                out = run(h, 0, None)
            st.residual = out - base
        self.forwards += 1
        self.rows.append({"step": step, "branch": branch, "expert": expert,
                          "action": "reused" if reuse else "computed", "reason": reason,
                          "statistic": None if stat is None else round(stat, 6)})
        return out

    # ------------------------------------------------------------------ attaching and reporting
    def attach(self, models) -> "Attached":
        return Attached(self, models)

    def report(self) -> Dict[str, Any]:
        out = self.s.to_dict()
        out.update(forwards=self.forwards, reused=self.reused,
                   reused_fraction=round(self.reused / self.forwards, 4) if self.forwards else 0.0,
                   per_step=list(self.rows))
        return out


class Attached:
    """Context manager: the cache attached to every DiT of a call, detached after (also on error)."""

    def __init__(self, cache: FeatureCache, models) -> None:
        self.cache = cache
        self.models = list(models)

    def __enter__(self) -> FeatureCache:
        for m in self.models:
            m.__dict__["feature_cache"] = self.cache
        return self.cache

    def __exit__(self, *exc) -> bool:
        for m in self.models:
            m.__dict__.pop("feature_cache", None)
        return False


def _poly(coefficients: Sequence[float], x: float) -> float:
    """Horner's rule, highest power first (``numpy.poly1d``)."""
    out = 0.0
    for c in coefficients:
        out = out * x + c
    return out


__all__ = ["BranchState", "FeatureCache", "ShardSums", "Attached"]
