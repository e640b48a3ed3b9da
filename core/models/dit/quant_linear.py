"""Quantized Linears of the DiT blocks: the module that holds them, which Linears are quantized
(``quant.keep``), and the swap from ``nn.Linear`` (docs/quantization.md).

A :class:`QuantLinear` holds the canonical layout of :mod:`wanport.ops.quant` under the official
key names (``weight`` 8-bit ``[N, K]``, ``weight_scale`` float32, ``bias``) and computes through
the kernels of the op table's ``quant_linear`` site, bound by :meth:`WanDiT.bind_ops`.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...ops.quant import QuantizedActivation, QuantKernels, QuantScheme

#: the Linears of a block that a scheme may quantize (everything else stays in the policy dtype)
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                 "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")


class QuantLinear(nn.Module):
    """A Linear stored quantized: ``weight`` [N, K] in the scheme's 8-bit dtype, ``weight_scale``
    float32 [N, 1] or [1, 1], ``bias`` [N] in ``out_dtype`` (the policy's matmul dtype)."""

    def __init__(self, in_features: int, out_features: int, scheme: QuantScheme, out_dtype: torch.dtype,
                 bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.out_dtype = out_dtype
        rows = out_features if scheme.weight_granularity == "channel" else 1
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=scheme.weight.storage_dtype,
                                               device=device), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(rows, 1, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=out_dtype, device=device),
                                 requires_grad=False) if bias else None
        self.kernels: Optional[QuantKernels] = None  # bound with the op table
        self.impl = ""  # qualified implementation name, for the report

    def forward(self, x) -> torch.Tensor:
        if self.kernels is None:
            raise RuntimeError("QuantLinear used before WanDiT.bind_ops(): resolve an op table with quant_linear")
        return self.kernels.linear(x, self.weight, self.weight_scale, self.bias, out_dtype=self.out_dtype)

    def extra_repr(self) -> str:
        return "in=%d, out=%d, scheme=%s" % (self.in_features, self.out_features, self.scheme.name)


def matmul_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype a Linear computes in and returns (a quantized one: its ``out_dtype``)."""
    return layer.out_dtype if isinstance(layer, QuantLinear) else layer.weight.dtype


def shared_input(x, *layers: nn.Module):
    """``x`` quantized once for several Linears that read it (q/k/v), when all of them are quantized
    by the same kernels; else ``x`` unchanged (each Linear quantizes what it needs)."""
    if isinstance(x, QuantizedActivation) or not layers:
        return x
    kernels = [l.kernels if isinstance(l, QuantLinear) else None for l in layers]
    if kernels[0] is None or any(k is not kernels[0] for k in kernels):
        return x
    return kernels[0].quantize_activation(x)


def shared_kernels(*layers: nn.Module) -> Optional[QuantKernels]:
    """The kernels that quantize every one of ``layers``, or None (one of them is not quantized)."""
    if not layers or not all(isinstance(l, QuantLinear) for l in layers):
        return None
    k = layers[0].kernels
    return k if all(l.kernels is k for l in layers) else None


# ---------------------------------------------------------------- which Linears


def candidate_linears(model: nn.Module) -> List[str]:
    """Module names of the blocks' Linears that a scheme may quantize, in model order."""
    out = []
    for name, module in model.named_modules():
        if not name.startswith("blocks.") or not isinstance(module, (nn.Linear, QuantLinear)):
            continue
        rest = name.split(".", 2)[2] if name.count(".") >= 2 else ""
        if rest in BLOCK_LINEARS:
            out.append(name)
    return out


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern) \
        or fnmatch.fnmatchcase(name, pattern + ".*")


def select_linears(model: nn.Module, keep: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(names of the Linears to quantize, problems): the block Linears not covered by a ``keep``
    entry; every entry must name (or match) a module of the model (the default entries, modules of
    some Wan family, may be absent)."""
    from ...ops.quant import DEFAULT_KEEP

    modules = [n for n, _ in model.named_modules() if n]
    problems = []
    for pattern in keep:
        # the default entries name modules of some Wan family (img_emb: Wan2.1 i2v only)
        if pattern not in DEFAULT_KEEP and not any(_matches(n, pattern) for n in modules):
            import difflib

            close = difflib.get_close_matches(pattern, modules, n=1)
            hint = " (did you mean %r?)" % close[0] if close else ""
            problems.append("quant.keep: %r names no module of this DiT%s; use module paths such as "
                            "time_projection, blocks.0 or blocks.*.ffn.2" % (pattern, hint))
    chosen = [n for n in candidate_linears(model) if not any(_matches(n, p) for p in keep)]
    return chosen, problems


def swap_in(model: nn.Module, names: Iterable[str], scheme: QuantScheme, out_dtype: torch.dtype) -> None:
    """Replace the named ``nn.Linear`` modules by empty :class:`QuantLinear` on the same device
    (on meta: free; the loader then assigns the quantized tensors)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child) if not child.isdigit() else parent[int(child)]
        if isinstance(old, QuantLinear):
            continue
        new = QuantLinear(old.in_features, old.out_features, scheme, out_dtype, bias=old.bias is not None,
                          device=old.weight.device)
        if child.isdigit():
            parent[int(child)] = new
        else:
            setattr(parent, child, new)


@torch.no_grad()
def quantize_in_place(model: nn.Module, names: Iterable[str], kernels: QuantKernels, out_dtype: torch.dtype) -> None:
    """Quantize loaded ``nn.Linear`` modules one by one (each float weight freed as soon as its
    quantized copy exists): for models built without a checkpoint (benchmarks' random weights)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = parent[int(child)] if child.isdigit() else getattr(parent, child)
        if isinstance(old, QuantLinear):
            continue
        new = QuantLinear(old.in_features, old.out_features, kernels.scheme, out_dtype,
                          bias=old.bias is not None, device="meta")
        data, scale = kernels.quantize_weight(old.weight.detach().float())
        new.weight = nn.Parameter(data, requires_grad=False)
        new.weight_scale = nn.Parameter(scale.float(), requires_grad=False)
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.detach().to(out_dtype), requires_grad=False)
        new.kernels = kernels
        if child.isdigit():
            parent[int(child)] = new
        else:
            setattr(parent, child, new)
        del old


def quantized_layers(model: nn.Module) -> List[Tuple[str, QuantLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]


__all__ = ["BLOCK_LINEARS", "QuantLinear", "candidate_linears", "matmul_dtype", "quantize_in_place",
           "quantized_layers", "select_linears", "shared_input", "shared_kernels", "swap_in"]
