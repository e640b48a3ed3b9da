"""``wanport bench dit``: one DiT forward at real size with random weights, timed with device
events (timings don't depend on weight values), optionally beside diffusers' WanTransformer3DModel
in the same process at the same config and input."""

from __future__ import annotations

import datetime
import statistics
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from ..checkpoints.tiny import TINY_DIT
from ..config.models import MODELS
from ..config.validate import parse_size
from ..errors import ConfigError
from ..models.dit import DiTConfig, WanDiT
from ..models.dit.requirements import dit_requirements
from ..pipeline.report import backend_versions, versions
from ..pipeline.session import choose_backend, start_session
from ..precision import is_auto, policy_from_config, resolve_policy
from ..registry import resolve_ops
from ..registry.backend import native_bf16
from .flops import dit_forward_flops

GIB = 2.0 ** 30


def dit_config_for(model: str, layers: Optional[int] = None) -> DiTConfig:
    preset = MODELS.get(model)
    if preset is None:
        raise ConfigError("bench dit: unknown model %r; known: %s" % (model, ", ".join(sorted(MODELS))))
    arch = dict(preset.arch) if preset.arch else dict(TINY_DIT)
    if layers is not None:
        if layers <= 0:
            raise ConfigError("bench dit: --layers must be > 0")
        arch["num_layers"] = layers
    return DiTConfig(**arch)


def time_forward(fn: Callable[[], Any], runtime, warmup: int, repeats: int) -> List[float]:
    """Seconds per call, measured with the backend's timing events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    runtime.synchronize()
    out = []
    for _ in range(repeats):
        start, end = runtime.event(), runtime.event()
        start.record()
        fn()
        end.record()
        out.append(start.elapsed_ms(end) / 1000.0)
    return out


def _summary(times: List[float], flops: float, peak: Optional[int]) -> Dict[str, Any]:
    med = statistics.median(times)
    return {"median_s": round(med, 4), "times_s": [round(t, 4) for t in times],
            "tflops": round(flops / med / 1e12, 1), "peak_memory_gib": round(peak / GIB, 2) if peak else None}


def _diffusers_model(cfg: DiTConfig, device: torch.device, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate the parameters directly in bf16 on the device
    try:
        with torch.device(device):
            model = WanTransformer3DModel(
                patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=cfg.eps)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def bench_dit(
    model: str,
    size: str,
    frames: int,
    backend: str = "auto",
    ops: Optional[Mapping[str, str]] = None,
    precision: Any = "official",
    peer: Optional[str] = None,
    warmup: int = 1,
    repeats: int = 3,
    layers: Optional[int] = None,
    seed: int = 0,
    env: Optional[Mapping[str, str]] = None,
    compile: bool = False,
    quant: Optional[str] = None,
    quant_keep: Optional[Sequence[str]] = None,
    quant_ops: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """``compile``: torch.compile each block (the warm-up absorbs the compilation).
    ``quant``: a scheme of ``quant.dit`` (docs/quantization.md), ``fp8_attention`` (``quant.attention:
    fp8``) or ``fp8_tensor_attention`` (``quant.attention: fp8_tensor``), or a Linear scheme and an
    attention one joined by ``+`` (``fp8_rowwise+fp8_attention``): the same random DiT is then also run
    with its blocks' Linears quantized (default ``keep``) and/or its self-attention in FP8, timed, and
    its output compared with the exact forward's (cosine, relative L2), peak memory of each. ``quant_keep``: the ``quant.keep``
    list (default: the peers' default, docs/quantization.md). ``quant_ops``: op overrides of the
    quantized run only, on top of ``ops`` (e.g. a scheme's float32 emulation in its kernel's place)."""
    cfg = dit_config_for(model, layers)
    preset = MODELS[model]
    try:
        width, height = parse_size(size)
    except ValueError as exc:
        raise ConfigError("bench dit: %s" % exc) from None
    m = preset.spatial_multiple
    if width % m or height % m or frames < 1 or (frames - 1) % 4:
        raise ConfigError("bench dit: size must be multiples of %d and frames 4n+1 (got %dx%d, %d)"
                          % (m, width, height, frames))
    if repeats < 1 or warmup < 0:
        raise ConfigError("bench dit: --repeats must be >= 1 and --warmup >= 0")
    if peer not in (None, "diffusers"):
        raise ConfigError("bench dit: --peer must be 'diffusers'")
    scheme, attention = parse_quant(quant)
    policy_from_config(precision)  # a bad value is a ConfigError before the runtime starts
    registry, spec = choose_backend(backend)
    session = start_session(registry, spec, env or {})
    runtime, device = session.runtime, session.device
    policy, _ = resolve_policy(precision, native_bf16(runtime, spec.name) if is_auto(precision) else None)
    table = resolve_ops(registry, spec, dit_requirements(cfg, policy, spec.device_type), ops or {})

    lat = (cfg.in_dim, (frames - 1) // 4 + 1, height // 8, width // 8)
    tokens = lat[1] * (lat[2] // 2) * (lat[3] // 2)
    flops = dit_forward_flops(cfg.dim, cfg.ffn_dim, cfg.num_layers, tokens, cfg.text_len)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1,) + lat, generator=gen).to(device)
    t = torch.tensor([999])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen).to(device=device, dtype=policy.text_encoder)

    result: Dict[str, Any] = {
        "kind": "wanport.bench.dit",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": model,
        "dit_config": dict(cfg.to_json(), text_dim=cfg.text_dim),
        "size": {"width": width, "height": height, "frames": frames, "latent": list(lat), "video_tokens": tokens},
        "flops": flops,
        "backend": spec.name,
        "device": runtime.describe(),
        "precision": policy.to_dict(),
        "ops": table.describe(),
        "warmup": warmup,
        "repeats": repeats,
        "compile": compile,
        "versions": versions(backend_versions(spec)),
    }

    runtime.empty_cache()
    runtime.reset_peak_memory()
    with torch.no_grad():
        dit = WanDiT.random(cfg, policy, device, seed=seed).bind_ops(table)
        if compile:
            from ..pipeline.compile import compile_blocks

            compile_blocks(dit)
        times = time_forward(lambda: dit(x, t, ctx), runtime, warmup, repeats)
        exact_out = dit(x, t, ctx).float() if quant else None
    result["wanport"] = _summary(times, flops["total"], runtime.peak_memory_bytes())
    del dit
    runtime.empty_cache()

    if quant:
        result["quant"] = _bench_quant(scheme, cfg, policy, registry, spec, {**(ops or {}), **(quant_ops or {})},
                                       runtime, device, seed,
                                       (x, t, ctx), exact_out, flops["total"], warmup, repeats, compile,
                                       quant_keep, attention)
        if scheme is not None:
            result["ops"]["quant_linear"] = result["quant"]["quant_linear_impl"]
        del exact_out
        runtime.empty_cache()

    if peer == "diffusers":
        runtime.reset_peak_memory()
        with torch.no_grad():
            ref = _diffusers_model(cfg, device, torch.bfloat16)
            xb, ctxb = x.to(torch.bfloat16), ctx.to(torch.bfloat16)
            tt = t.to(device)
            times = time_forward(lambda: ref(hidden_states=xb, timestep=tt, encoder_hidden_states=ctxb,
                                             return_dict=False), runtime, warmup, repeats)
        result["diffusers"] = _summary(times, flops["total"], runtime.peak_memory_bytes())
        result["versions"]["diffusers"] = _dist_version("diffusers")
        result["ratio_wanport_over_diffusers"] = round(
            result["wanport"]["median_s"] / result["diffusers"]["median_s"], 3)
        del ref
        runtime.empty_cache()
    return result


#: the ``--quant`` token for ``quant.attention: fp8``
FP8_ATTENTION = "fp8_attention"
#: ``--quant`` token -> ``quant.attention`` scheme (``<scheme>_attention``)
ATTENTION_TOKENS = {FP8_ATTENTION: "fp8", "fp8_tensor_attention": "fp8_tensor"}


def parse_quant(quant: Optional[str]):
    """``--quant`` -> (``quant.dit`` scheme or None, ``quant.attention`` scheme or None): a scheme, or
    an attention token (:data:`ATTENTION_TOKENS`), or one of each joined by ``+``."""
    from ..ops.quant import SCHEMES

    if quant is None:
        return None, None
    scheme, attention = None, None
    for part in quant.split("+"):
        if part in ATTENTION_TOKENS and attention is None:
            attention = ATTENTION_TOKENS[part]
        elif part in SCHEMES and scheme is None:
            scheme = part
        else:
            raise ConfigError("bench dit: --quant takes a scheme (%s), an attention scheme (%s), or one of each "
                              "joined by '+' (e.g. fp8_rowwise+%s); got %r"
                              % (", ".join(SCHEMES), ", ".join(ATTENTION_TOKENS), FP8_ATTENTION, quant))
    return scheme, attention


def _bench_quant(scheme, cfg, policy, registry, spec, ops, runtime, device, seed, inputs, exact_out, flops,
                 warmup, repeats, compile, keep=None, attention=None) -> Dict[str, Any]:
    """The same random DiT with its blocks' Linears quantized (``scheme``) and/or its self-attention
    in FP8 (``attention``): time, peak memory (quantized weights resident, measured after
    quantizing), output vs the exact forward's."""
    from ..models.dit.quant_linear import quantize_in_place, quantized_layers, select_linears
    from ..ops.quant import DEFAULT_KEEP

    keep = list(DEFAULT_KEEP) if keep is None else list(keep)
    table = resolve_ops(registry, spec, dit_requirements(cfg, policy, spec.device_type, quant_scheme=scheme,
                                                         attention_quant=attention), ops or {})
    with torch.no_grad():
        dit = WanDiT.random(cfg, policy, device, seed=seed)
        if scheme is not None:
            names, problems = select_linears(dit, keep)
            if problems:
                raise ConfigError("bench dit --quant-keep: %s" % problems[0])
            quantize_in_place(dit, names, table.quant_linear.fn, policy.matmul)
        dit.bind_ops(table)
        weight_bytes = sum(p.numel() * p.element_size() for p in dit.parameters())
        runtime.empty_cache()
        runtime.reset_peak_memory()
        if compile:
            from ..pipeline.compile import compile_blocks

            compile_blocks(dit)
        x, t, ctx = inputs
        times = time_forward(lambda: dit(x, t, ctx), runtime, warmup, repeats)
        out = dit(x, t, ctx).float()
    a, b = out.flatten().double(), exact_out.flatten().double()
    row = _summary(times, flops, runtime.peak_memory_bytes())
    row.update({
        "scheme": "+".join(x for x in (scheme, FP8_ATTENTION if attention else None) if x),
        "impl": "+".join(x for x in (table.quant_linear.impl if scheme is not None else None,
                                     table.self_attention.impl if attention else None) if x),
        "quant_linear_impl": table.quant_linear.impl if scheme is not None else None,
        "attention": attention or "none",
        "self_attention_impl": table.self_attention.impl,
        "layers_quantized": len(quantized_layers(dit)),
        "keep": keep,
        "weights_gib": round(weight_bytes / GIB, 2),
        "cosine_vs_exact": float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300)),
        "rel_l2_vs_exact": float((a - b).norm() / b.norm().clamp_min(1e-300)),
        "nonfinite": int((~torch.isfinite(out)).sum()),
    })
    del dit
    return row


def _dist_version(name: str) -> Optional[str]:
    try:
        import importlib.metadata as md

        return md.version(name)
    except Exception:
        return None


def markdown(result: Mapping[str, Any]) -> str:
    rows = ["| impl | median s | TFLOP/s | peak GiB |", "|---|---|---|---|"]
    for name in ("wanport", "quant", "diffusers"):
        r = result.get(name)
        if r:
            label = "wanport %s (%s)" % (r["scheme"], r["impl"]) if name == "quant" else name
            rows.append("| %s | %.3f | %.0f | %s |" % (label, r["median_s"], r["tflops"], r["peak_memory_gib"]))
    head = "%s %dx%d x %d frames (%d tokens), backend %s on %s, precision %s" % (
        result["model"], result["size"]["width"], result["size"]["height"], result["size"]["frames"],
        result["size"]["video_tokens"], result["backend"], result["device"], result["precision"]["name"])
    tail = ""
    if "ratio_wanport_over_diffusers" in result:
        tail = "\nwanport / diffusers = %.3f" % result["ratio_wanport_over_diffusers"]
    q = result.get("quant")
    if q:
        tail += ("\n%s vs exact: cosine %.6f, rel L2 %.4g, %d Linears quantized, weights %.2f GiB, self-attention "
                 "%s, speed-up %.3fx"
                 % (q["scheme"], q["cosine_vs_exact"], q["rel_l2_vs_exact"], q["layers_quantized"], q["weights_gib"],
                    q.get("self_attention_impl", "?"), result["wanport"]["median_s"] / q["median_s"]))
    return head + "\n\n" + "\n".join(rows) + tail


def plots(result: Mapping[str, Any]):
    """Median forward time of wanport (and the peer, when measured)."""
    from ..io.plots import bar_chart

    names = [n for n in ("wanport", "quant", "diffusers") if result.get(n)]
    title = "wanport bench dit: %s %dx%d x %d frames, backend %s on %s" % (
        result["model"], result["size"]["width"], result["size"]["height"], result["size"]["frames"],
        result["backend"], result["device"])
    return [("", lambda path: bar_chart(path, title, names, {"median s": [result[n]["median_s"] for n in names]},
                                        "one DiT forward (s)", log=False))]
