"""What ``wanport dump`` records while the real pipeline runs: a :class:`LoopObserver` that puts
forward hooks on every DiT block of the model(s) it sees.

Per block, step and guidance branch: statistics of the block output (mean, std, abs-max, L2,
NaN and Inf counts) and a *fingerprint* -- the output's values at N fixed positions, drawn once
from a seeded host generator for that shape (the same positions on every machine), so the
relative error between two machines can be estimated for every block and step at almost no
cost. Full block outputs for the chosen blocks and steps, the latent after every step, and the
decoded video. Statistics of one forward stay on the device until the forward ends (one
transfer per forward, not per block). Hooks only read: nothing here modifies a tensor.

In a multi-process run (``layout``: a :class:`~.gather.GatherLayout`) every rank hooks its blocks
and takes part in gathering each block output to rank 0, which reassembles it in token order and
records exactly what a one-process run records (both guidance branches included); the other
ranks record nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..io.video import to_uint8_frames
from ..pipeline.sampling import Expert, LoopObserver
from .gather import GatherLayout, token_count

STAT_NAMES = ("mean", "std", "abs_max", "l2", "nan", "inf")
BRANCHES = ("cond", "uncond")
HOST = torch.device("cpu")
_RANGE = re.compile(r"^\s*(-?\d+)(?:\s*-\s*(\d+))?\s*$")


def parse_indices(text: Optional[str], what: str) -> Optional[Tuple[int, ...]]:
    """``"0,39"``, ``"0-3,-1"`` (negative: from the end), ``"all"``, or empty/None (none).
    Returns None for "all", else the (possibly negative) indices; ConfigError on bad syntax."""
    if text is None or not text.strip():
        return ()
    if text.strip().lower() == "all":
        return None
    out: List[int] = []
    for part in text.split(","):
        m = _RANGE.match(part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError("%s: %r is not a list of indices (e.g. 0,39 or 0-3,-1 or all)" % (what, text))
        a = int(m.group(1))
        out.extend(range(a, int(m.group(2)) + 1) if m.group(2) is not None else [a])
    return tuple(out)


def resolve_indices(indices: Optional[Sequence[int]], count: int, what: str) -> Tuple[int, ...]:
    """Indices (None: all) against ``count`` items; negative ones count from the end."""
    if indices is None:
        return tuple(range(count))
    bad = [i for i in indices if not -count <= i < count]
    if bad:
        raise ConfigError("%s: %s out of range; there are %d (0..%d, or -1 for the last)"
                          % (what, ", ".join(str(i) for i in bad), count, count - 1))
    return tuple(sorted({i % count for i in indices}))


@dataclass(frozen=True)
class DumpConfig:
    #: full block outputs are kept at these blocks x these steps
    blocks: Tuple[int, ...] = ()
    steps: Tuple[int, ...] = ()
    #: values per block output in the fingerprint
    fingerprint: int = 256
    fingerprint_seed: int = 0

    def to_json(self) -> Dict[str, Any]:
        return {"blocks": list(self.blocks), "steps": list(self.steps), "fingerprint": self.fingerprint,
                "fingerprint_seed": self.fingerprint_seed, "stats": list(STAT_NAMES)}


def fingerprint_index(numel: int, n: int, seed: int) -> torch.Tensor:
    """N positions in a flattened tensor of ``numel`` values, from a seeded host generator."""
    if n >= numel:
        return torch.arange(numel, dtype=torch.long)
    gen = torch.Generator()
    gen.manual_seed(seed * 1000003 + numel)
    return torch.randint(numel, (n,), generator=gen, dtype=torch.long)


class DumpObserver(LoopObserver):
    def __init__(self, config: DumpConfig, layout: Optional[GatherLayout] = None) -> None:
        self.config = config
        #: the rank layout of a multi-process run (None: one process)
        self.layout = layout if layout is not None and layout.world > 1 else None
        #: whether this process keeps records (one process, or rank 0)
        self.recording = self.layout is None or self.layout.is_main
        self.timesteps: Dict[int, int] = {}
        self.experts: Dict[int, str] = {}
        #: (step, branch) -> host [blocks, len(STAT_NAMES)] / [blocks, N]
        self.stats: Dict[Tuple[int, str], torch.Tensor] = {}
        self.fingerprints: Dict[Tuple[int, str], torch.Tensor] = {}
        self.full: Dict[str, torch.Tensor] = {}
        self.latents: Dict[int, torch.Tensor] = {}
        self.video: Optional[torch.Tensor] = None
        self.index: Dict[int, torch.Tensor] = {}  # numel -> host positions
        self.num_blocks = 0
        self.notes: List[str] = []
        self._device_index: Dict[Tuple[int, str], torch.Tensor] = {}
        self._hooks: List[Any] = []
        self._seen: set = set()
        self._pending: List[Tuple[str, int, torch.Tensor, torch.Tensor]] = []
        self._step = -1
        self._branch = "cond"
        self._rank_branches: List[str] = []
        self._tokens: Optional[int] = None

    # ------------------------------------------------------------------ loop hooks
    def step_start(self, index: int, t: int, expert: Expert) -> None:
        self._step = index
        self.timesteps[index] = int(t)
        self.experts[index] = expert.name
        self._attach(expert.model)

    def forward(self, index: int, branch: str) -> None:
        self._flush()
        self._branch = branch
        if self.layout is not None:
            self._rank_branches = self.layout.branches(branch)

    def step_end(self, index: int, latent: torch.Tensor) -> None:
        self._flush()
        if self.recording:
            self.latents[index] = latent.detach().to(HOST, torch.float32, copy=True)

    def video_decoded(self, video: torch.Tensor) -> None:
        if self.recording:
            self.video = torch.from_numpy(to_uint8_frames(video))

    def close(self) -> None:
        self._flush()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------------ block hooks
    def _attach(self, model: Any) -> None:
        if id(model) in self._seen:
            return
        self._seen.add(id(model))
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            self.notes.append("a model without .blocks (%s): no per-block records for it" % type(model).__name__)
            return
        self.num_blocks = max(self.num_blocks, len(blocks))
        if self.layout is not None and self.layout.sp > 1:
            self._hooks.append(model.register_forward_pre_hook(self._tokens_hook(model), with_kwargs=True))
        for i, block in enumerate(blocks):
            self._hooks.append(block.register_forward_hook(self._hook(i)))

    def _hook(self, block: int):
        def hook(module, inputs, output):
            self._record(block, output)
        return hook

    def _tokens_hook(self, model: Any):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("x")
            self._tokens = token_count(model, x) if isinstance(x, torch.Tensor) else None
            if self._tokens is None and "token count unknown" not in " ".join(self.notes):
                self.notes.append("token count unknown for %s: gathered block outputs keep the sequence padding"
                                  % type(model).__name__)
        return hook

    def _positions(self, numel: int, device: torch.device) -> torch.Tensor:
        key = (numel, str(device))
        if key not in self._device_index:
            if numel not in self.index:
                self.index[numel] = fingerprint_index(numel, self.config.fingerprint, self.config.fingerprint_seed)
            self._device_index[key] = self.index[numel].to(device)
        return self._device_index[key]

    def _record(self, block: int, output: torch.Tensor) -> None:
        x = output.detach()
        if self.layout is None:
            self._record_one(self._branch, block, x)
            return
        for branch, full in self.layout.reassemble(x, self._rank_branches, self._tokens):
            self._record_one(branch, block, full)

    def _record_one(self, branch: str, block: int, x: torch.Tensor) -> None:
        flat = x.reshape(-1).float()
        stats = torch.stack([flat.mean(), flat.std(), flat.abs().max(), flat.norm(),
                             torch.isnan(flat).sum().float(), torch.isinf(flat).sum().float()])
        self._pending.append((branch, block, stats, flat[self._positions(flat.numel(), flat.device)]))
        if self._step in self.config.steps and block in self.config.blocks:
            self.full[full_key(branch, self._step, block)] = x.to(HOST, copy=True)

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        n_blocks = max(self.num_blocks, 1 + max(p[1] for p in pending))
        width = pending[0][3].numel()
        host_stats = torch.stack([p[2] for p in pending]).to(HOST)  # one transfer per forward
        host_fps = torch.stack([p[3] for p in pending]).to(HOST)
        for branch in dict.fromkeys(p[0] for p in pending):  # execution order
            stats = torch.full((n_blocks, len(STAT_NAMES)), float("nan"))
            fps = torch.full((n_blocks, width), float("nan"))
            for row, (br, b, _, _) in enumerate(pending):
                if br == branch:
                    stats[b], fps[b] = host_stats[row], host_fps[row]
            key = (self._step, branch)
            self.stats[key], self.fingerprints[key] = stats, fps


def full_key(branch: str, step: int, block: int) -> str:
    return "%s.step%03d.block%03d" % (branch, step, block)


__all__ = ["DumpConfig", "DumpObserver", "STAT_NAMES", "BRANCHES", "parse_indices", "resolve_indices",
           "fingerprint_index", "full_key"]
