"""``wanport bench ops``: every op kind x every implementation a backend resolves, at Wan shapes.

For each case: median latency (backend timing events), achieved TFLOP/s (attention) or GB/s
(the memory-bound ops: every input read once, every output written once), the same against
ceilings measured in the same run (the faster of a large bf16 and fp32 matmul, a large device copy), and the error
against a float64 evaluation of the op's contract (attention: on a subset of query rows).
"""

from __future__ import annotations

import datetime
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..config.models import MODELS
from ..errors import ConfigError
from ..io.atomic import finite_or_none
from ..models.dit.rope import rope_tables
from ..ops.composites import COMPOSERS, with_out_dtype
from ..ops.contracts import COMPOSABLE, OUT_DTYPE_KINDS
from ..ops.impl import Requirements
from ..pipeline.report import backend_versions, versions
from ..pipeline.session import choose_backend, start_session
from ..registry.resolver import _pool, _usable
from .dit import time_forward

#: size label -> (width, height); the frame count is the model's default (81; TI2V-5B 121)
SIZES = {"480p": (832, 480), "720p": (1280, 720), "704p": (1280, 704)}
#: the sizes a model is benchmarked at when --sizes is not given
DEFAULT_SIZES = {"wan2.2-ti2v-5b": ("704p",)}
DEFAULT_MODELS = ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-ti2v-5b")
QUICK_TOKENS = 256
QUICK_GRID = (1, 16, 16)


def token_grid(model: str, size: str) -> Optional[Tuple[int, int, int]]:
    """(frames, height, width) of the DiT's token grid for the model at a size label; None when
    the size is not a multiple of the model's VAE stride x patch. 480p: 21x30x52 = 32760 tokens,
    720p: 21x45x80 = 75600; TI2V-5B 704p (121 frames): 31x22x40 = 27280."""
    preset = MODELS[model]
    width, height = SIZES[size]
    m = preset.spatial_multiple
    if width % m or height % m:
        return None
    return ((preset.frame_num - 1) // preset.vae_stride[0] + 1, height // m, width // m)


def model_sizes(models: Sequence[str], sizes: Optional[Sequence[str]]) -> List[Tuple[str, str]]:
    """The (model, size) pairs to run: each model at the given sizes it can take, or at its
    default sizes (480p and 720p; TI2V-5B 704p)."""
    for size in sizes or ():
        if size not in SIZES:
            raise ConfigError("bench ops: unknown size %r; known: %s" % (size, ", ".join(SIZES)))
    pairs = []
    for model in models:
        if model not in MODELS:
            raise ConfigError("bench ops: unknown model %r; known: %s" % (model, ", ".join(sorted(MODELS))))
        if not MODELS[model].arch:
            raise ConfigError("bench ops: model %s has no fixed architecture (a tiny preset); use --quick with "
                              "a real model for tiny shapes" % model)
        wanted = sizes or DEFAULT_SIZES.get(model, ("480p", "720p"))
        fits = [s for s in wanted if token_grid(model, s) is not None]
        if not fits:
            raise ConfigError("bench ops: %s takes none of the sizes %s (its sizes: %s)" % (
                model, ", ".join(wanted), ", ".join(s for s in SIZES if token_grid(model, s))))
        pairs.extend((model, s) for s in fits)
    return pairs


@dataclass
class Case:
    kind: str
    label: str
    make: Callable[[], Tuple[tuple, dict]]  # -> (args, kwargs) on the device
    flops: float = 0.0
    bytes: float = 0.0
    f64: Optional[Callable[[tuple, dict], torch.Tensor]] = None  # float64 reference of output 0
    subset: Optional[Callable[[Any], torch.Tensor]] = None  # which part of the output f64 covers


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _attn_f64(q, k, v, scale, rows):
    qs = q[:, :rows].double().transpose(1, 2)
    s = qs @ k.double().transpose(1, 2).transpose(-1, -2) * scale
    return (torch.softmax(s, -1) @ v.double().transpose(1, 2)).transpose(1, 2)


def _ln64(x, w=None, b=None, eps=1e-6):
    x = x.double()
    y = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    if w is not None:
        y = y * w.double() + b.double()
    return y


def _rms64(x, w, eps=1e-6):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def _rope64(x, cos, sin):
    x = x.double()
    c, s = cos[:, 0::2].double()[None, :, None], sin[:, 0::2].double()[None, :, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), -1).flatten(-2)


def build_cases(device: torch.device, pairs: Sequence[Tuple[str, str]], quick: bool) -> List[Case]:
    cases: List[Case] = []
    bf16, f32 = torch.bfloat16, torch.float32
    for model, size in pairs:
        arch = MODELS[model].arch
        c, n = arch["dim"], arch["num_heads"]
        d = c // n
        grid = QUICK_GRID if quick else token_grid(model, size)
        s = grid[0] * grid[1] * grid[2]
        tag = "%s %s S=%d" % (model.rsplit("-", 1)[-1], size, s)

        def gen(*shape, dtype=bf16, scale=1.0, offset=0.0):
            return (torch.randn(*shape, device=device) * scale + offset).to(dtype)

        def attn(_s=s, _n=n, _d=d):
            return (gen(1, _s, _n, _d), gen(1, _s, _n, _d), gen(1, _s, _n, _d)), {"scale": _d ** -0.5}

        cases.append(Case("attention", "self %s N=%d" % (tag, n), attn, flops=4.0 * s * s * d * n,
                          f64=lambda a, k: _attn_f64(a[0], a[1], a[2], k["scale"], 64),
                          subset=lambda out: out[:, :64]))

        def cross(_s=s, _n=n, _d=d):
            return (gen(1, _s, _n, _d), gen(1, 512, _n, _d), gen(1, 512, _n, _d)), {"scale": _d ** -0.5}

        cases.append(Case("attention", "cross %s Skv=512" % tag, cross, flops=4.0 * s * 512 * d * n,
                          f64=lambda a, k: _attn_f64(a[0], a[1], a[2], k["scale"], 64),
                          subset=lambda out: out[:, :64]))

        def qkr(_s=s, _c=c, _n=n, _g=grid):
            cos, sin = (t.to(device) for t in rope_tables(_g, _c // _n, _s))
            return (gen(1, _s, _c, scale=2.0), gen(1, _s, _c, scale=2.0), gen(_c, dtype=f32, scale=0.1, offset=1.0),
                    gen(_c, dtype=f32, scale=0.1, offset=1.0), 1e-6, cos, sin, _n, bf16), {}

        cases.append(Case("qk_norm_rope", "q+k %s C=%d" % (tag, c), qkr, bytes=4.0 * s * c * 2,
                          f64=lambda a, k: _rope64(_rms64(a[0], a[2]).view(1, a[0].shape[1], a[7], -1),
                                                   a[5], a[6])))

        def rot(_s=s, _c=c, _n=n, _g=grid):
            cos, sin = (t.to(device) for t in rope_tables(_g, _c // _n, _s))
            x = gen(1, _s, _n, _c // _n, dtype=f32)
            return (x, x.clone(), cos, sin), {}

        cases.append(Case("rotary", "q+k fp32 %s" % tag, rot, bytes=4.0 * s * c * 4,
                          f64=lambda a, k: _rope64(a[0], a[2], a[3])))

        def rms(_s=s, _c=c):
            return (gen(1, _s, _c, scale=2.0), gen(_c, dtype=f32, scale=0.1, offset=1.0), 1e-6), \
                   {"out_dtype": bf16}

        cases.append(Case("rms_norm", "bf16->bf16 %s" % tag, rms, bytes=2.0 * s * c * 2,
                          f64=lambda a, k: _rms64(a[0], a[1])))

        def lnm(_s=s, _c=c):
            return (gen(1, _s, _c, dtype=f32, scale=3.0, offset=1.0), gen(1, 1, _c, dtype=f32),
                    gen(1, 1, _c, dtype=f32, scale=0.3), 1e-6), {"out_dtype": bf16}

        cases.append(Case("layer_norm_modulate", "fp32->bf16 %s" % tag, lnm, bytes=s * c * (4 + 2.0),
                          f64=lambda a, k: _ln64(a[0]) * (1 + a[2].double()) + a[1].double()))

        def addlnm(_s=s, _c=c):
            return (gen(1, _s, _c, dtype=f32, scale=3.0, offset=1.0), gen(1, _s, _c, scale=0.5), gen(1, 1, _c, dtype=f32),
                    gen(1, 1, _c, dtype=f32, scale=0.3), 1e-6), {"out_dtype": bf16}

        # float32 stream + bf16 branch in, the float32 sum and the bf16 norm out; the error is the sum's
        cases.append(Case("add_layer_norm_modulate", "fp32+bf16->fp32,bf16 %s" % tag, addlnm,
                          bytes=s * c * (4 + 2 + 4 + 2.0), f64=lambda a, k: a[0].double() + a[1].double()))

        def ln(_s=s, _c=c):
            return (gen(1, _s, _c, dtype=f32, scale=3.0, offset=1.0), gen(_c, dtype=f32, scale=0.1, offset=1.0),
                    gen(_c, dtype=f32, scale=0.1), 1e-6), {"out_dtype": bf16}

        cases.append(Case("layer_norm", "affine fp32->bf16 %s" % tag, ln, bytes=s * c * (4 + 2.0),
                          f64=lambda a, k: _ln64(a[0], a[1], a[2])))

        f = arch["ffn_dim"]

        def lg(_s=s, _c=c, _f=f):
            return (gen(1, _s, _c), gen(_f, _c, scale=_c ** -0.5), gen(_f, scale=0.1)), {}

        cases.append(Case("linear_gelu", "ffn up %s %dx%d" % (tag, c, f), lg, flops=2.0 * s * c * f,
                          f64=lambda a, k: torch.nn.functional.gelu(
                              a[0].double() @ a[1].double().t() + a[2].double(), approximate="tanh")))

        def res(_s=s, _c=c):
            return (gen(1, _s, _c, dtype=f32), gen(1, _s, _c), gen(1, 1, _c, dtype=f32)), {}

        cases.append(Case("gated_residual", "fp32+bf16*g %s" % tag, res, bytes=s * c * (4 + 2 + 4.0),
                          f64=lambda a, k: a[0].double() + a[1].double() * a[2].double()))
    return cases


#: the dtypes whose dense matmul is timed for the TFLOP/s ceiling: the ops compute in these, and
#: which one is fastest depends on the device (a CPU without native bf16 runs bf16 ~80x slower
#: than fp32; a GPU the other way round), so the ceiling is the fastest of them
CEILING_DTYPES = (("bf16", torch.bfloat16), ("fp32", torch.float32))


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to significant digits (a CPU's 0.0421 TFLOP/s must not print as 0.0)."""
    return float("%.*g" % (digits, x))


def measure_ceilings(device: torch.device, runtime, quick: bool, n: Optional[int] = None,
                     copy_elements: Optional[int] = None) -> Dict[str, Any]:
    """TFLOP/s of an n x n matmul in each of :data:`CEILING_DTYPES` (the ceiling: the fastest),
    GB/s of a device copy."""
    # quick (a smoke run): 256^3 -- a 1024^3 bf16 matmul takes seconds on a CPU that emulates bf16
    n = n or (256 if quick else 8192)
    out: Dict[str, Any] = {}
    for name, dtype in CEILING_DTYPES:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        t = statistics.median(time_forward(lambda: a @ b, runtime, 2, 5))
        out["%s_matmul_tflops" % name] = _sig(2.0 * n ** 3 / t / 1e12)
        del a, b
    best = max(CEILING_DTYPES, key=lambda nd: out["%s_matmul_tflops" % nd[0]])[0]
    out["matmul_tflops"] = out["%s_matmul_tflops" % best]
    out["matmul_dtype"] = best
    size = copy_elements or (2**22 if quick else 2**28)
    src = torch.randn(size, device=device)
    dst = torch.empty_like(src)
    tc = statistics.median(time_forward(lambda: dst.copy_(src), runtime, 2, 5))
    out.update({"copy_gbps": _sig(2.0 * src.numel() * 4 / tc / 1e9), "matmul_n": n, "copy_bytes": src.numel() * 4})
    return out


def matmul_ceiling(ceilings: Mapping[str, Any]) -> float:
    """The TFLOP/s ceiling of a result (older results only measured bf16)."""
    return float(ceilings.get("matmul_tflops", ceilings.get("bf16_matmul_tflops", 0.0)) or 0.0)


def _implementations(registry, backend: str, kind: str, device_type: str, case_dtypes):
    """(name, fn) for every usable implementation of ``kind`` on the backend, the reference
    ones, and the composed form of composable kinds. A backend's lossy kernels are measured (marked
    lossy); the reference's lossy emulations (FP8 attention) are not: float32 ground truth, not kernels."""
    req = Requirements(device_type=device_type)
    out = []
    for impl in _pool(registry, backend, kind):
        if not impl.exact and impl.backend == "reference":
            continue
        ok, why = _usable(impl, req)
        if not ok:
            continue
        fn = impl.load()
        if kind in OUT_DTYPE_KINDS and not impl.constraints.out_dtype:
            fn = with_out_dtype(fn)
        out.append((impl.qualified_name + ("" if impl.exact else " (lossy)"), fn))
    if kind in COMPOSABLE:
        parts = []
        for part in COMPOSABLE[kind]:
            impls = _implementations(registry, backend, part, device_type, case_dtypes)
            if impls:
                parts.append(impls[0])
        if len(parts) == len(COMPOSABLE[kind]):
            out.append(("composed(%s)" % ", ".join(p[0] for p in parts), COMPOSERS[kind](*(p[1] for p in parts))))
    return out


def _tokens(grid) -> int:
    return grid[0] * grid[1] * grid[2]


def bench_ops(backend: str = "auto", models: Sequence[str] = DEFAULT_MODELS,
              sizes: Optional[Sequence[str]] = None, kinds: Optional[Sequence[str]] = None,
              warmup: int = 2, repeats: int = 10, quick: bool = False, skip_slow_reference: bool = True,
              env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """``sizes`` None: each model at its default sizes (see :func:`model_sizes`)."""
    pairs = model_sizes(models, sizes)
    registry, spec = choose_backend(backend)
    session = start_session(registry, spec, env or {})
    runtime, device = session.runtime, session.device
    torch.manual_seed(0)
    rows = []
    for case in build_cases(device, pairs, quick):
        if kinds and case.kind not in kinds:
            continue
        args, kwargs = case.make()
        # the float64 answer from pristine inputs; every implementation then gets its own copy
        # (some write into their input: the gated residual updates the stream in place)
        ref = case.f64(args, kwargs) if case.f64 is not None else None
        mine = None
        for name, fn in _implementations(registry, spec.name, case.kind, spec.device_type, ()):
            if skip_slow_reference and name.startswith("reference.math") and case.flops > 5e13:
                continue  # float32 explicit softmax at full size: minutes, adds nothing
            mine = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
            try:
                out = fn(*mine, **kwargs)
                out0 = (out[0] if isinstance(out, tuple) else out).clone()  # before timing reuses the inputs
                times = time_forward(lambda: fn(*mine, **kwargs), runtime, warmup, repeats)
            except Exception as exc:
                rows.append({"kind": case.kind, "case": case.label, "impl": name,
                             "error": "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:200])})
                continue
            got = case.subset(out0) if case.subset else out0
            med = statistics.median(times)
            err = _rel(got, ref) if ref is not None else None
            row = {"kind": case.kind, "case": case.label, "impl": name, "median_ms": _sig(med * 1e3),
                   "rel_err_vs_f64": finite_or_none(float("%.3g" % err)) if err is not None else None}
            if err is not None and row["rel_err_vs_f64"] is None:
                row["nonfinite_output"] = True  # NaN/Inf in the output: no error figure, flagged instead
            if case.flops:
                row["tflops"] = _sig(case.flops / med / 1e12, 3)
            if case.bytes:
                row["gbps"] = _sig(case.bytes / med / 1e9, 3)
            rows.append(row)
        del args, kwargs, ref, mine
        runtime.empty_cache()
    ceilings = measure_ceilings(device, runtime, quick)
    # the quantized Linears (docs/quantization.md); the reference backend's float32 emulations only
    # when asked for by --kinds (they are ground truth, not kernels worth timing)
    if (kinds and "quant_linear" in kinds) or (not kinds and spec.name != "reference"):
        from .quant_ops import bench_quant_linears

        tokens = [QUICK_TOKENS if quick else _tokens(token_grid(m, z)) for m, z in pairs]
        qrows, qceil = bench_quant_linears(registry, spec, runtime, device, pairs, tokens, warmup, repeats, quick)
        rows.extend(qrows)
        if qceil:
            ceilings["quant_gemm_tflops"] = qceil
    for row in rows:
        if "tflops" in row and matmul_ceiling(ceilings) > 0:
            row["pct_of_matmul_ceiling"] = round(100 * row["tflops"] / matmul_ceiling(ceilings), 1)
        elif "gbps" in row and ceilings["copy_gbps"] > 0:
            row["pct_of_copy_ceiling"] = round(100 * row["gbps"] / ceilings["copy_gbps"], 1)
    return {
        "kind": "wanport.bench.ops",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "backend": spec.name,
        "device": runtime.describe(),
        "quick": quick,
        "cases": [{"model": m, "size": z, "grid": list(QUICK_GRID if quick else token_grid(m, z))} for m, z in pairs],
        "ceilings": ceilings,
        "rows": rows,
        "versions": versions(backend_versions(spec)),
    }


def markdown(result: Mapping[str, Any]) -> str:
    c = result["ceilings"]
    measured = ", ".join("%s %.4g" % (name, c["%s_matmul_tflops" % name]) for name, _ in CEILING_DTYPES
                         if "%s_matmul_tflops" % name in c)
    lines = ["backend %s on %s; ceilings: matmul %.4g TFLOP/s (the fastest of: %s), copy %.4g GB/s; a %% above "
             "100 means the case ran from cache or in a dtype faster than the ceiling's"
             % (result["backend"], result["device"], matmul_ceiling(c), measured, c["copy_gbps"]), "",
             ] + (["8-bit GEMM ceilings (TFLOP/s, same run): %s" % ", ".join(
                 "%s %.4g" % kv for kv in sorted(c["quant_gemm_tflops"].items())), ""]
                  if c.get("quant_gemm_tflops") else []) + [
             "| op | case | impl | ms | TFLOP/s | GB/s | % ceiling | rel err vs fp64 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append("| %s | %s | %s | failed: %s | | | | |" % (r["kind"], r["case"], r["impl"], r["error"]))
            continue
        pct = r.get("pct_of_matmul_ceiling", r.get("pct_of_copy_ceiling", ""))
        if r.get("pct_of_8bit_ceiling") is not None:
            pct = "%s (8-bit: %s)" % (pct, r["pct_of_8bit_ceiling"])
        lines.append("| %s | %s | %s | %.3f | %s | %s | %s | %s |" % (
            r["kind"], r["case"], r["impl"], r["median_ms"], r.get("tflops", ""), r.get("gbps", ""), pct,
            ("non-finite output" if r.get("nonfinite_output") else "n/a") if r.get("rel_err_vs_f64") is None
            else r["rel_err_vs_f64"]))
    return "\n".join(lines)



def plots(result: Mapping[str, Any]) -> List[Tuple[str, Callable[[str], None]]]:
    """The latency of every (op, case, implementation) of one backend: one bar each."""
    from ..io.plots import bar_chart

    rows = [r for r in result["rows"] if "median_ms" in r]
    if not rows:
        return []
    title = "wanport bench ops: backend %s on %s" % (result["backend"], result["device"])
    return [("", lambda path: bar_chart(path, title, ["%s | %s | %s" % (r["kind"], r["case"], r["impl"]) for r in rows],
                                        {"ms": [r["median_ms"] for r in rows]}, "median latency (ms, log scale)"))]
