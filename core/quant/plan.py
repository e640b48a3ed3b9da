"""The recipe's ``quant`` section checked against the model, before any weight loads."""

from __future__ import annotations

from typing import Dict, List, Optional

from ..errors import ConfigError
from ..ops.quant import QuantScheme, get_scheme


def quant_scheme(plan) -> Optional[QuantScheme]:
    """The scheme the plan asks for (None: ``quant.dit: none`` or no quant section)."""
    q = getattr(plan, "quant", None)
    if q is None or q.dit == "none":
        return None
    return get_scheme(q.dit)


def selected_linears(cfg, policy, keep) -> List[str]:
    """Module names of the Linears a scheme quantizes in a DiT of config ``cfg``; ConfigError when a
    ``keep`` entry names no module."""
    from ..models.dit import WanDiT
    from ..models.dit.quant_linear import select_linears

    names, problems = select_linears(WanDiT.on_meta(cfg, policy), list(keep))
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else
                          "quant.keep has %d problems:\n  - %s" % (len(problems), "\n  - ".join(problems)))
    return names


def attention_scheme(plan) -> Optional[str]:
    """The ``quant.attention`` scheme the plan asks for (None: ``none`` or no quant section). The
    resolver then takes only the backend's own self-attention implementations that declare it and
    refuses, before any weight loads, when there is none (docs/quantization.md, "FP8 attention")."""
    q = getattr(plan, "quant", None)
    if q is None or q.attention == "none":
        return None
    return q.attention


def check_quant(plan, ckpts) -> Dict[str, List[str]]:
    """expert name ("" for one DiT) -> the Linears to quantize; every problem of the recipe's
    ``quant`` section as one error, before loading: ``keep`` names, ``attention: fp8`` (checked at
    resolution: :func:`attention_scheme`), a pre-quantized checkpoint that disagrees with the scheme, LoRAs on it."""
    scheme = quant_scheme(plan)
    experts = dict(ckpts.experts) if ckpts.experts else {"": ckpts.dit}
    out: Dict[str, List[str]] = {}
    for name, ckpt in experts.items():
        pre = getattr(ckpt, "prequantized", None) or {}
        if scheme is None:
            if pre:
                raise ConfigError("%s holds quantized Linears (%d, e.g. %s: %s); set quant.dit to the scheme they "
                                  "were made for (fp8_rowwise for LightX2V's FP8 files, int8_w8a8 or int8_w8a16 for "
                                  "its INT8 ones)" % (ckpt.directory, len(pre), next(iter(pre)),
                                                      pre[next(iter(pre))]))
            continue
        names = selected_linears(ckpt.config, plan.policy, plan.quant.keep)
        if pre:
            _check_prequantized(ckpt, pre, names, scheme, plan)
        out[name] = names
    return out


def _check_prequantized(ckpt, pre: Dict[str, str], names: List[str], scheme: QuantScheme, plan) -> None:
    wanted = {"fp8_e4m3": "F8_E4M3", "int8": "I8"}[scheme.weight.name]
    problems = []
    for module, desc in pre.items():
        dtype, granularity = desc.split(":")
        if dtype != wanted:
            problems.append("%s.weight is %s; quant.dit %s stores %s" % (module, dtype, scheme.name, wanted))
            break
        if granularity != scheme.weight_granularity:
            problems.append("%s.weight_scale is per %s; quant.dit %s scales per %s"
                            % (module, granularity, scheme.name, scheme.weight_granularity))
            break
    missing = sorted(set(names) - set(pre))
    extra = sorted(set(pre) - set(names))
    if missing:
        problems.append("quant.keep leaves %d Linear(s) quantized that the checkpoint holds unquantized (e.g. %s): "
                        "add them to quant.keep" % (len(missing), missing[0]))
    if extra:
        problems.append("the checkpoint holds %d quantized Linear(s) that quant.keep keeps (e.g. %s): remove that "
                        "keep entry" % (len(extra), extra[0]))
    if getattr(plan, "loras", ()):
        problems.append("LoRAs cannot be merged into a pre-quantized checkpoint; quantize the bf16 checkpoint at "
                        "load instead (the LoRA is merged first)")
    if problems:
        raise ConfigError("pre-quantized DiT in %s: %s" % (ckpt.directory, "; ".join(problems)))


__all__ = ["attention_scheme", "check_quant", "quant_scheme", "selected_linears"]
