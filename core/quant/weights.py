"""Quantization as the DiT loads: each selected Linear's weight is read, LoRA deltas merged in
float32 (the run's transform), then quantized by the resolved kernels; a pre-quantized
checkpoint's 8-bit weight and float32 scale are taken as they are."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..ops.quant import QuantKernels


class LoadQuantizer:
    """What ``checkpoints.dit_checkpoint.load_dit(quantize=...)`` uses for one DiT."""

    def __init__(self, names: List[str], kernels: QuantKernels, out_dtype: torch.dtype) -> None:
        self.names = list(names)
        self.kernels = kernels
        self.out_dtype = out_dtype
        self._weights = {n + ".weight": n for n in self.names}
        self._scales = {n + ".weight_scale": n for n in self.names}

    def prepare(self, model) -> None:
        from ..models.dit.quant_linear import swap_in

        swap_in(model, self.names, self.kernels.scheme, self.out_dtype)

    def handles(self, key: str) -> bool:
        return key in self._weights or key in self._scales

    @torch.no_grad()
    def load(self, key: str, tensor: torch.Tensor, device, transform=None) -> Dict[str, torch.Tensor]:
        if key in self._scales:  # pre-quantized checkpoint
            return {key: tensor.to(device=device, dtype=torch.float32).reshape(-1, 1)}
        if tensor.dtype == self.kernels.scheme.weight.storage_dtype:  # pre-quantized, checked at inspection
            return {key: tensor.to(device)}
        if transform is not None:
            w = transform(key, tensor, device, torch.float32)
        else:
            w = tensor.to(device=device, dtype=torch.float32)
        data, scale = self.kernels.quantize_weight(w)
        return {key: data, key + "_scale": scale}


def _innermost(weights):
    while hasattr(weights, "base") and weights.__dict__.get("base") is not None:
        weights = weights.base
    return weights


class QuantWeights:
    """A weight source whose DiTs come out with the selected Linears quantized (docs/quantization.md);
    keeps the list of quantized layers for the report."""

    def __init__(self, base, names: Dict[str, List[str]], kernels: QuantKernels, impl: str,
                 out_dtype: torch.dtype, directories: Optional[Dict[str, str]] = None) -> None:
        self.base = base
        self.names = names  # expert ("" for one DiT) -> Linears
        self.directories = directories or {}  # expert -> its DiT folder
        self.kernels = kernels
        self.impl = impl
        self.out_dtype = out_dtype
        self.loaded: List[str] = []  # expert names whose DiT is loaded (report)

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def describe(self):
        return self.base.describe()

    def _expert_names(self, ckpt) -> List[str]:
        if len(self.names) == 1:
            return next(iter(self.names.values()))
        directory = getattr(ckpt, "directory", None)
        for expert, names in self.names.items():
            if self.directories.get(expert) == directory:
                return names
        return next(iter(self.names.values()))  # the experts share one architecture

    def load_dit(self, ckpt, policy, device, *args, **kwargs):
        from ..pipeline.weights import CheckpointWeights
        from ..models.dit.quant_linear import quantize_in_place

        names = self._expert_names(ckpt)
        if isinstance(_innermost(self.base), CheckpointWeights):
            model = self.base.load_dit(ckpt, policy, device, *args,
                                       quantize=LoadQuantizer(names, self.kernels, self.out_dtype), **kwargs)
        else:  # weights made otherwise (benchmarks' random ones): quantized Linear by Linear
            model = self.base.load_dit(ckpt, policy, device, *args, **kwargs)
            quantize_in_place(model, names, self.kernels, self.out_dtype)
        self.loaded.append(getattr(ckpt, "directory", ""))
        return model

    def report(self) -> Optional[Dict[str, Any]]:
        return quant_report(self.names, self.kernels, self.impl)


def quant_report(names: Dict[str, List[str]], kernels: QuantKernels, impl: str) -> Dict[str, Any]:
    s = kernels.scheme
    return {
        "scheme": s.name,
        "impl": impl,
        "weights": "%s per %s" % (s.weight.name, s.weight_granularity),
        "activations": ("%s per %s (dynamic)" % (s.activation.name, s.activation_granularity)
                        if s.activation is not None else "unquantized"),
        "layers": {expert or "dit": [{"name": n, "scheme": s.name, "impl": impl} for n in layer_names]
                   for expert, layer_names in names.items()},
        "count": sum(len(v) for v in names.values()),
    }


__all__ = ["LoadQuantizer", "QuantWeights", "quant_report"]
