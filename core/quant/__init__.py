"""Quantized DiT Linears in a run: the recipe's checks before loading, quantization as the
weights load, and the report's list of quantized layers (docs/quantization.md). The schemes, the
kernel interface and the reference arithmetic are in :mod:`wanport.ops.quant`."""

from .plan import check_quant, quant_scheme, selected_linears
from .weights import LoadQuantizer, QuantWeights

__all__ = ["check_quant", "quant_scheme", "selected_linears", "LoadQuantizer", "QuantWeights"]
