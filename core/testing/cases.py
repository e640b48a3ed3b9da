"""The inputs the conformance kit calls an implementation with, per op kind.

Each :class:`Case` is one call in the contract's shape/dtype space (small shapes, the Wan head dim
where the implementation takes it), restricted to what the implementation declares it supports;
each :class:`Probe` is one call just outside a declared limit (a dtype it does not take, the
log-sum-exp it cannot return, kv lengths it cannot mask, ...). Tensors are built on the host from a
fixed seed and moved to the device under test by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch

from ..ops.impl import Constraints

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
#: the float dtypes the kit exercises (float64 is the reference's own precision)
KIT_DTYPES = (F32, BF16, F16)
#: the Wan head dim: used wherever an implementation takes it
WAN_HEAD_DIM = 128


@dataclass
class Case:
    """One call: ``fn(*args, **kwargs)``. ``dtypes`` are the activation dtypes (what a call site's
    ``Requirements.dtypes`` would name); ``terms`` the length of the longest sum behind one output
    element (sets the float32 bound)."""

    kind: str
    label: str
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    dtypes: FrozenSet[torch.dtype] = frozenset()
    terms: int = 1


@dataclass
class Probe:
    """A call outside one declared limit; ``limit`` names the declaration it tests."""

    limit: str
    case: Case


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype: torch.dtype = F32, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed)) * scale + shift).to(dtype)


def rotary_tables(tokens: int, head_dim: int, padding: int = 2, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real ``[S, D]`` float32 tables in the contract's layout (each angle repeated for both members
    of a pair), the last ``padding`` rows identity (cos 1, sin 0) as for padding tokens."""
    theta = torch.rand(tokens, head_dim // 2, generator=_gen(seed), dtype=torch.float64) * 2 * math.pi
    theta[tokens - padding:] = 0.0
    cos = theta.cos().repeat_interleave(2, dim=-1).float()
    sin = theta.sin().repeat_interleave(2, dim=-1).float()
    return cos, sin


def accepted_dtypes(c: Constraints) -> Tuple[torch.dtype, ...]:
    return tuple(d for d in KIT_DTYPES if c.dtypes is None or d in c.dtypes)


def refused_dtypes(c: Constraints) -> Tuple[torch.dtype, ...]:
    return tuple(d for d in KIT_DTYPES if c.dtypes is not None and d not in c.dtypes)


def _head_dim_ok(c: Constraints, d: int) -> bool:
    return (c.head_dims is None or d in c.head_dims) and (c.max_head_dim is None or d <= c.max_head_dim)


def head_dim(c: Constraints) -> Optional[int]:
    """The head dim to test with: Wan's 128 where accepted, else the one closest to it (even, >= 8)."""
    for d in sorted(range(8, 1025, 2), key=lambda d: (abs(d - WAN_HEAD_DIM), d)):
        if _head_dim_ok(c, d):
            return d
    return None


def refused_head_dim(c: Constraints) -> Optional[int]:
    """An even head dim the implementation declares it does not take (None: it takes them all)."""
    for d in (136, 72, 40, 24, 16, 8, 264, 520):
        if not _head_dim_ok(c, d):
            return d
    return None


# ------------------------------------------------------------------ builders, one per kind
# Each builder returns one Case for the given dtype and options; ``cases`` and ``probes`` below pick
# the options inside and just outside what the implementation declares.


def attention_case(dtype, d: int, b: int = 1, skv: int = 24, kv_lens=None, lse: bool = False, seed: int = 1,
                   strided: bool = False) -> Case:
    """``strided``: q and k are views into one ``[B, S, 2, N, D]`` tensor (token stride 2*N*D), as
    the overlapped Ulysses path hands them in (the contract guarantees only a contiguous last dim)."""
    sq, n = 24, 2
    q = randn(b, sq, n, d, dtype=dtype, seed=seed)
    k = randn(b, skv, n, d, dtype=dtype, seed=seed + 1)
    v = randn(b, skv, n, d, dtype=dtype, seed=seed + 2)
    if strided:
        both = torch.stack([q, k], dim=2)
        q, k = both[:, :, 0], both[:, :, 1]
    kw = dict(scale=d ** -0.5)
    if kv_lens is not None:
        kw["kv_lens"] = list(kv_lens)
    if lse:
        kw["return_lse"] = True
    label = "%s b%d sq%d skv%d d%d kv_lens=%s%s%s" % (_n(dtype), b, sq, skv, d, kv_lens, " lse" if lse else "",
                                                    " strided q/k" if strided else "")
    return Case("attention", label, (q, k, v), kw, frozenset({dtype}), terms=d + 2 * skv)


def rotary_case(dtype, d: int, b: int = 1, seed: int = 4) -> Case:
    s, n = 26, 2  # 24 tokens + 2 identity padding rows
    cos, sin = rotary_tables(s, d, seed=seed)
    q = randn(b, s, n, d, dtype=dtype, seed=seed + 1)
    k = randn(b, s, n, d, dtype=dtype, seed=seed + 2)
    return Case("rotary", "%s b%d s%d d%d" % (_n(dtype), b, s, d), (q, k, cos, sin), {}, frozenset({dtype}), terms=2)


def rms_norm_case(dtype, b: int = 1, weight_dtype=F32, out_dtype=None, c: int = 256, seed: int = 8) -> Case:
    x = randn(b, 20, c, dtype=dtype, seed=seed, scale=3.0)
    w = randn(c, dtype=weight_dtype, seed=seed + 1, scale=0.2, shift=1.0)
    kw = {} if out_dtype is None else {"out_dtype": out_dtype}
    return Case("rms_norm", "%s b%d weight %s out %s" % (_n(dtype), b, _n(weight_dtype), _n(out_dtype)), (x, w, 1e-6), kw,
                frozenset({dtype}), terms=c)


def layer_norm_case(dtype, b: int = 1, affine: bool = True, param_dtype=F32, out_dtype=None, c: int = 256,
                    seed: int = 10) -> Case:
    x = randn(b, 20, c, dtype=dtype, seed=seed, shift=0.5)
    w = randn(c, dtype=param_dtype, seed=seed + 1, scale=0.2, shift=1.0) if affine else None
    bias = randn(c, dtype=param_dtype, seed=seed + 2, scale=0.1) if affine else None
    kw = {} if out_dtype is None else {"out_dtype": out_dtype}
    label = "%s b%d %s out %s" % (_n(dtype), b, "affine %s" % _n(param_dtype) if affine else "no affine", _n(out_dtype))
    return Case("layer_norm", label, (x, w, bias, 1e-6), kw, frozenset({dtype}), terms=2 * c)


def layer_norm_modulate_case(dtype, b: int = 1, per_token: bool = False, out_dtype=None, c: int = 256,
                             seed: int = 13) -> Case:
    s = 20
    x = randn(b, s, c, dtype=dtype, seed=seed)
    rows = (b, s, c) if per_token else (b, 1, c)
    shift = randn(*rows, seed=seed + 1, scale=0.3)  # the modulation stream: float32
    scale = randn(*rows, seed=seed + 2, scale=0.3)
    kw = {} if out_dtype is None else {"out_dtype": out_dtype}
    label = "%s b%d %s out %s" % (_n(dtype), b, "per-token" if per_token else "per-sample", _n(out_dtype))
    return Case("layer_norm_modulate", label, (x, shift, scale, 1e-6), kw, frozenset({dtype}), terms=2 * c)


def add_layer_norm_modulate_case(dtype, b: int = 1, per_token: bool = False, out_dtype=None, c: int = 256,
                                 seed: int = 16) -> Case:
    """The residual stream in float32 plus a branch output in ``dtype`` (as in the block), or both in
    float32 for the float32 case."""
    base = layer_norm_modulate_case(F32, b, per_token, out_dtype, c, seed)
    x, shift, scale, eps = base.args
    y = randn(b, x.shape[1], c, dtype=dtype, seed=seed + 5, scale=0.5)
    label = "f32 + %s b%d %s out %s" % (_n(dtype), b, "per-token" if per_token else "per-sample", _n(out_dtype))
    return Case("add_layer_norm_modulate", label, (x, y, shift, scale, eps), base.kwargs, frozenset({dtype}),
                terms=2 * c)


def qk_norm_rope_case(dtype, d: int, b: int = 1, out_dtype=None, seed: int = 20) -> Case:
    s, n = 26, 2
    c = n * d
    q = randn(b, s, c, dtype=dtype, seed=seed, scale=2.0)
    k = randn(b, s, c, dtype=dtype, seed=seed + 1, scale=2.0)
    wq = randn(c, seed=seed + 2, scale=0.1, shift=1.0)
    wk = randn(c, seed=seed + 3, scale=0.1, shift=1.0)
    cos, sin = rotary_tables(s, d, seed=seed + 4)
    out = out_dtype or dtype
    return Case("qk_norm_rope", "%s b%d d%d out %s" % (_n(dtype), b, d, _n(out)), (q, k, wq, wk, 1e-6, cos, sin, n, out), {},
                frozenset({dtype}), terms=c + 2)


def gated_residual_case(dtype, b: int = 1, per_token: bool = False, c: int = 256, seed: int = 30) -> Case:
    s = 20
    x = randn(b, s, c, seed=seed)  # the residual stream: float32 under the official policy
    y = randn(b, s, c, dtype=dtype, seed=seed + 1)
    gate = randn(b, s if per_token else 1, c, seed=seed + 2, scale=0.5)
    label = "%s b%d %s gate" % (_n(dtype), b, "per-token" if per_token else "per-sample")
    return Case("gated_residual", label, (x, y, gate), {}, frozenset({dtype}), terms=1)


def linear_gelu_case(dtype, b: int = 1, bias: bool = True, k: int = 64, n: int = 96, seed: int = 40) -> Case:
    x = randn(b, 20, k, dtype=dtype, seed=seed)
    w = randn(n, k, dtype=dtype, seed=seed + 1, scale=k ** -0.5)
    bb = randn(n, dtype=dtype, seed=seed + 2, scale=0.1) if bias else None
    return Case("linear_gelu", "%s b%d %s" % (_n(dtype), b, "bias" if bias else "no bias"), (x, w, bb), {}, frozenset({dtype}),
                terms=k)


def _n(dtype) -> str:
    return "-" if dtype is None else str(dtype).replace("torch.", "")


# ------------------------------------------------------------------ the space, per kind


def _batches(c: Constraints) -> Tuple[int, ...]:
    return (1, 2) if c.batch_gt1 else (1,)


def _outs(c: Constraints, dtype) -> Tuple[Optional[torch.dtype], ...]:
    """``out_dtype`` values to try: none, and (when declared) a half and float32 rounding."""
    if not c.out_dtype:
        return (None,)
    return (None, BF16 if dtype != BF16 else F32)


def cases(kind: str, c: Constraints) -> List[Case]:
    """Calls inside everything ``c`` declares, covering the contract's variants for ``kind``."""
    out: List[Case] = []
    d = head_dim(c)
    for dt in accepted_dtypes(c):
        for b in _batches(c):
            start = len(out)
            if kind == "attention" and d is not None:
                out.append(attention_case(dt, d, b))
                out.append(attention_case(dt, d, b, strided=True))
                if c.kv_lens:
                    if b == 1:
                        out.append(attention_case(dt, d, b, kv_lens=[24]))
                        out.append(attention_case(dt, d, b, kv_lens=[17]))
                    out.append(attention_case(dt, d, b, skv=40, kv_lens=[40, 29][:b]))
                if c.lse:
                    lens = [24, 9][:b] if c.kv_lens else None
                    out.append(attention_case(dt, d, b, kv_lens=lens, lse=True))
            elif kind == "rotary" and d is not None:
                out.append(rotary_case(dt, d, b))
            elif kind == "rms_norm":
                for wdt in (F32, dt):
                    for o in _outs(c, dt):
                        out.append(rms_norm_case(dt, b, wdt, o))
            elif kind == "layer_norm":
                for o in _outs(c, dt):
                    out.append(layer_norm_case(dt, b, True, F32, o))
                out.append(layer_norm_case(dt, b, False))
            elif kind == "layer_norm_modulate":
                for o in _outs(c, dt):
                    out.append(layer_norm_modulate_case(dt, b, False, o))
                if c.per_token_modulation:
                    out.append(layer_norm_modulate_case(dt, b, True))
            elif kind == "add_layer_norm_modulate":
                for o in (None, BF16) if dt != BF16 else (BF16,):
                    out.append(add_layer_norm_modulate_case(dt, b, False, o))
                if c.per_token_modulation:
                    out.append(add_layer_norm_modulate_case(dt, b, True))
            elif kind == "qk_norm_rope" and d is not None:
                out.append(qk_norm_rope_case(dt, d, b))
                if dt != BF16:
                    out.append(qk_norm_rope_case(dt, d, b, out_dtype=BF16))
            elif kind == "gated_residual":
                out.append(gated_residual_case(dt, b))
                if c.per_token_modulation:
                    out.append(gated_residual_case(dt, b, per_token=True))
            elif kind == "linear_gelu":
                out.append(linear_gelu_case(dt, b))
                out.append(linear_gelu_case(dt, b, bias=False))
            if dt == F16:
                del out[start + 1:]  # float16: one call per batch size (its code path is bfloat16's)
    return out


def _base(kind: str, dtype, d: int, b: int = 1) -> Case:
    return {
        "attention": lambda: attention_case(dtype, d, b),
        "rotary": lambda: rotary_case(dtype, d, b),
        "rms_norm": lambda: rms_norm_case(dtype, b),
        "layer_norm": lambda: layer_norm_case(dtype, b),
        "layer_norm_modulate": lambda: layer_norm_modulate_case(dtype, b),
        "add_layer_norm_modulate": lambda: add_layer_norm_modulate_case(dtype, b),
        "qk_norm_rope": lambda: qk_norm_rope_case(dtype, d, b),
        "gated_residual": lambda: gated_residual_case(dtype, b),
        "linear_gelu": lambda: linear_gelu_case(dtype, b),
    }[kind]()


HEAD_DIM_KINDS = ("attention", "rotary", "qk_norm_rope")
#: the op kinds the kit has cases for; a new kind gets its builder, its branch in ``cases``, ``_base``
#: and ``reference_fn`` here (until then its implementations' outputs are reported as untested)
KINDS_WITH_CASES = ("attention", "rotary", "rms_norm", "layer_norm", "layer_norm_modulate", "add_layer_norm_modulate",
                    "qk_norm_rope", "gated_residual", "linear_gelu")


def probes(kind: str, c: Constraints) -> List[Probe]:
    """One call just outside each limit ``c`` declares (nothing for a limit it does not declare)."""
    if kind not in KINDS_WITH_CASES:
        return []
    accepted = accepted_dtypes(c)
    dt = F32 if F32 in accepted else (accepted[0] if accepted else F32)
    d = head_dim(c) or WAN_HEAD_DIM
    out: List[Probe] = []
    for bad in refused_dtypes(c):
        out.append(Probe("dtypes (does not take %s)" % _n(bad), _base(kind, bad, d)))
    if kind in HEAD_DIM_KINDS:
        bad_d = refused_head_dim(c)
        if bad_d is not None:
            out.append(Probe("head dims (does not take %d)" % bad_d, _base(kind, dt, bad_d)))
    if not c.batch_gt1:
        out.append(Probe("batch_gt1=False", _base(kind, dt, d, b=2)))
    if kind == "attention":
        if not c.lse:
            out.append(Probe("lse=False", attention_case(dt, d, 1, lse=True)))
        if not c.kv_lens:
            out.append(Probe("kv_lens=False", attention_case(dt, d, 1, kv_lens=[17])))
    if not c.per_token_modulation:
        if kind == "layer_norm_modulate":
            out.append(Probe("per_token_modulation=False", layer_norm_modulate_case(dt, 1, per_token=True)))
        elif kind == "add_layer_norm_modulate":
            out.append(Probe("per_token_modulation=False", add_layer_norm_modulate_case(dt, 1, per_token=True)))
        elif kind == "gated_residual":
            out.append(Probe("per_token_modulation=False", gated_residual_case(dt, 1, per_token=True)))
    return out


def bad_arguments(kind: str, c: Constraints) -> List[Probe]:
    """Calls the contract itself rules out, which every implementation refuses with ``ValueError``
    (through the shared checks in ``wanport.ops.checks``)."""
    d = head_dim(c)
    dt = accepted_dtypes(c)[0] if accepted_dtypes(c) else F32
    out: List[Probe] = []
    if kind == "attention" and d is not None:
        out.append(Probe("kv_lens outside [1, keys]", attention_case(dt, d, 1, kv_lens=[0])))
        out.append(Probe("kv_lens longer than the batch", attention_case(dt, d, 1, kv_lens=[24, 24])))
    if kind == "rotary" and d is not None:
        case = rotary_case(dt, d, 1)
        q, k, cos, sin = case.args
        out.append(Probe("rotary tables with fewer rows than tokens",
                         Case("rotary", case.label + " tables[:20]", (q, k, cos[:20], sin[:20]), {}, case.dtypes)))
    return out


# ------------------------------------------------------------------ the reference, in float64


def reference_fn(kind: str) -> Callable:
    """The reference backend's implementation of ``kind`` (the executable contract)."""
    from ..ops.composites import compose_add_layer_norm_modulate, compose_qk_norm_rope
    from ..reference.attention import attention_math
    from ..reference.gated_residual import gated_residual
    from ..reference.layer_norm import layer_norm
    from ..reference.layer_norm_modulate import layer_norm_modulate
    from ..reference.linear_gelu import linear_gelu
    from ..reference.rms_norm import rms_norm
    from ..reference.rotary import rotary

    return {"attention": attention_math, "rotary": rotary, "rms_norm": rms_norm, "layer_norm": layer_norm,
            "layer_norm_modulate": layer_norm_modulate,
            "add_layer_norm_modulate": compose_add_layer_norm_modulate(layer_norm_modulate),
            "qk_norm_rope": compose_qk_norm_rope(rms_norm, rotary),
            "gated_residual": gated_residual, "linear_gelu": linear_gelu}[kind]


def to_float64(case: Case) -> Tuple[tuple, dict]:
    """The case's arguments with every floating tensor in float64 and no output rounding: the
    contract evaluated (nearly) exactly."""
    def up(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.double()
        if isinstance(a, torch.dtype):  # qk_norm_rope's positional out_dtype
            return torch.float64
        return a

    kwargs = {k: up(v) for k, v in case.kwargs.items() if k != "out_dtype"}
    return tuple(up(a) for a in case.args), kwargs


def clone_to(case: Case, device) -> Tuple[tuple, dict]:
    """Fresh copies of the case's arguments on ``device`` (an implementation may write into its inputs)."""
    def mv(a):
        return a.clone().to(device) if isinstance(a, torch.Tensor) else a

    return tuple(mv(a) for a in case.args), {k: mv(v) for k, v in case.kwargs.items()}


# ------------------------------------------------------------------ tolerance

EPS32 = 2.0 ** -24  # float32 unit roundoff
HALF = (BF16, F16)


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def tolerance(declared: float, case: Case, out_dtypes: Sequence[torch.dtype], lossy: bool = False) -> Tuple[float, str]:
    """The relative L2 bound for one case against the float64 reference, and where it comes from.

    With a half-precision tensor anywhere in the call (input, output, ``out_dtype``): the
    implementation's declared tolerance, or, when it declares none, 8 unit roundoffs of the widest
    such dtype (a few roundings of inputs, intermediates and output). All float32: the float32
    arithmetic bound ``4·√K·2⁻²⁴`` for the longest sum K behind one output element
    (docs/adding-a-backend.md, "Tolerance"). A lossy implementation (``exact=False``: FP8
    attention) is held to its declared tolerance whatever the dtypes: its error is its scheme's.
    """
    if lossy and declared > 0:
        return declared, "declared tolerance (lossy)"
    dts = set(case.dtypes) | set(out_dtypes)
    for a in list(case.args) + list(case.kwargs.values()):
        if isinstance(a, torch.Tensor):
            dts.add(a.dtype)
        elif isinstance(a, torch.dtype):
            dts.add(a)
    half = [d for d in dts if d in HALF]
    if half:
        if declared > 0:
            return declared, "declared tolerance"
        return 8 * max(unit_roundoff(d) for d in half), "8 unit roundoffs of %s" % _n(max(half, key=unit_roundoff))
    return 4 * math.sqrt(max(case.terms, 1)) * EPS32, "float32 bound 4*sqrt(%d)*2^-24" % case.terms


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(out).all():
        return math.inf
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)
