"""Parameter holders and small helpers shared by the DiT modules.

Norm modules only hold parameters under the official key names; the math comes from the op
table, so a backend's fused kernel replaces it without touching the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def linear(x, layer: nn.Module) -> torch.Tensor:
    """A Linear computed in its weight's dtype (what autocast does for the official fp32 weights),
    plus the low-rank side path of unmerged LoRAs when the layer has one (``wanport.lora.side_path``).
    A quantized Linear (``quant_linear.QuantLinear``) computes through its scheme's kernels; ``x``
    may then be an activation already quantized for it (``wanport.ops.quant.QuantizedActivation``)."""
    if getattr(layer, "kernels", None) is not None or not isinstance(layer, nn.Linear):
        return layer(x)
    if not isinstance(x, torch.Tensor):  # quantized for a sibling Linear that this one is not
        x = x.dequantize()
    x = x.to(layer.weight.dtype)
    out = F.linear(x, layer.weight, layer.bias)
    side = layer.__dict__.get("lora_side")
    return out if side is None else side(x, out)


class RMSNormParams(nn.Module):
    """``WanRMSNorm``'s parameter: ``weight`` [C]."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class LayerNormParams(nn.Module):
    """An affine ``WanLayerNorm``'s parameters: ``weight``, ``bias`` [C]."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``cat(cos(t*w), sin(t*w))`` with ``w_j = 10000**(-j/(dim/2))``, in float64 on the host.

    Returns float32 [..., dim] on the host; the caller moves it to the compute device.
    """
    half = dim // 2
    pos = t.detach().cpu().to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    args = pos.reshape(-1, 1) * freqs[None, :]
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).float()
    return out.reshape(*pos.shape, dim)


def init_random_(module: nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter with random values of a sensible scale (all randomised: a zero
    head would hide errors in comparisons, and real-size benchmarks need finite activations)."""
    for name, p in module.named_parameters():
        with torch.no_grad():
            noise = torch.randn(p.shape, generator=generator, device=p.device, dtype=torch.float32)
            if name.endswith("modulation"):
                value = noise / math.sqrt(p.shape[-1])
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                value = noise / math.sqrt(fan_in)
            elif (name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or ".norm" in name and name.endswith("weight")
                  or name in ("img_emb.proj.0.weight", "img_emb.proj.4.weight")):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.02 * noise
            p.copy_(value.to(p.dtype))
