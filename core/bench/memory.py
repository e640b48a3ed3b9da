"""Running out of memory as one message that says what the recipe needs.

A benchmark of a real-size recipe on a machine too small for it fails deep inside an allocation
(``torch.OutOfMemoryError`` on an accelerator, ``MemoryError`` or a "can't allocate memory"
``RuntimeError`` on the host). :func:`out_of_memory_as_error` turns any of those into a
:class:`~wanport.errors.ResourceError` (exit 8) that states the weights' size under the recipe's
precision policy -- a lower bound of what the device must hold -- and the knobs that lower it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional

import torch

from ..errors import ResourceError

GIB = 2.0 ** 30
_PHRASES = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)  # torch >= 2.5; older: a RuntimeError subclass per device
    if isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom)):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _PHRASES)


def weight_gib(plan, ckpts) -> List[str]:
    """``["DiT 26.6 GiB x 2 experts", "text encoder 10.6 GiB", ...]`` for the plan's precision."""
    from ..models.t5.keymap import expected_wan_t5_shapes
    from ..pipeline.moe import expert_bytes

    parts = []
    dit = expert_bytes(ckpts.dit.config, plan.policy)
    n = len(ckpts.experts) if ckpts.experts else 1
    parts.append("DiT %.1f GiB%s" % (dit / GIB, " x %d experts" % n if n > 1 else ""))
    t5 = sum(_numel(s) for s in expected_wan_t5_shapes(ckpts.t5_config).values())
    parts.append("text encoder %.1f GiB" % (t5 * _itemsize(plan.policy.text_encoder) / GIB))
    total = dit * n + t5 * _itemsize(plan.policy.text_encoder)
    return ["%.1f GiB of weights (%s)" % (total / GIB, ", ".join(parts))]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@contextlib.contextmanager
def out_of_memory_as_error(plan, inspect: Optional[Callable[[], Any]] = None,
                           what: str = "bench pipeline") -> Iterator[None]:
    """Within the block, an out-of-memory error becomes one ResourceError naming the need
    (``inspect``: returns the run's CheckpointSet; called only then, for the estimate)."""
    try:
        yield
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        need: Optional[str] = None
        if inspect is not None:
            try:
                need = weight_gib(plan, inspect())[0]
            except Exception:  # the estimate is a courtesy; never hide the real error behind it
                need = None
        raise ResourceError(
            "%s: out of memory running %s at %dx%d x %d frames (%s)%s. This machine is too small for the "
            "recipe as it stands; to lower the need: parallel.t5_cpu=true (text encoder on the host), "
            "offload.park_inactive_expert=true (two-expert models), a smaller sample.size or sample.frame_num, "
            "or several devices with parallel.dit_fsdp=true / parallel.ulysses." % (
                what, plan.preset.name, plan.width, plan.height, plan.frame_num, first,
                "; it needs at least %s on the device, plus activations" % need if need else "")) from None


__all__ = ["is_out_of_memory", "out_of_memory_as_error", "weight_gib"]
