"""Linear + tanh GELU as one cuBLASLt GEMM with a GELU epilogue (torch._addmm_activation).

Saves a full pass over the FFN's widest activation ([S, ffn_dim]) and its second buffer; the
GELU is applied to the float32 accumulator before the one rounding to bf16.
"""

from __future__ import annotations

from typing import Optional

import torch


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if weight.dtype not in (torch.float16, torch.bfloat16):  # float32 would run the epilogue on TF32
        raise ValueError("cuda.cublaslt_epilogue takes float16/bfloat16 weights, not %s" % weight.dtype)
    x2 = x.to(weight.dtype).reshape(-1, x.shape[-1])
    if bias is None:
        bias = torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype)
    out = torch._addmm_activation(bias, x2, weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])
