"""The op contracts: the typed signature and the exact semantics every backend honours.

Each op kind below is a ``Protocol``. An implementation is a plain callable with that
signature; the reference backend (``wanport.reference``) is the executable form of each
contract and the numerical ground truth. Tensors may live on any device; an implementation
must not move them.

Notation: B batch, S sequence (tokens), N heads, D head dim, C = N*D model dim.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

try:  # typing.Protocol is 3.8+; kept explicit for readers of older stacks
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore


class AttentionFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float,
        kv_lens: Optional[Sequence[int]] = None,
        return_lse: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Scaled dot-product attention, no causal mask, no dropout.

        q: [B, Sq, N, D]; k, v: [B, Skv, N, D]; q, k, v share one dtype (the caller casts).
            Only the last dim is guaranteed contiguous (the overlapped Ulysses path hands in
            strided views); an implementation that needs dense tensors makes them itself.
        scale: multiplies q·k (always passed explicitly; Wan uses D**-0.5).
        kv_lens: host-side ints, one per sample; keys at positions >= kv_lens[b] are masked out
            for every query of sample b (padding). ``None`` means all keys are valid. Host ints
            (not a tensor) so no implementation needs a device->host sync per call.
        return_lse: also return the natural-log sum-exp of the scaled, masked scores,
            shape [B, N, Sq], float32 (used to merge partial results in ring attention).

        Returns out [B, Sq, N, D] in q's dtype (and lse when asked). Softmax statistics are
        accumulated in at least float32.
        """


class RotaryFn(Protocol):
    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Wan's 3D rotary embedding on q and k, interleaved-pair convention, real tables.

        q, k: [B, S, N, D]. cos, sin: [S, D] float32 with each angle repeated for both members
        of a pair (cos[s, 2i] == cos[s, 2i+1] == cos(theta_{s,i})). For every pair i:
            out[..., 2i]   = x[2i] * cos - x[2i+1] * sin
            out[..., 2i+1] = x[2i] * sin + x[2i+1] * cos
        which equals Wan's complex product (x[2i] + j x[2i+1]) * e^{j theta}. Rows for padding
        tokens carry cos=1, sin=0 (identity). Math in at least float32; each output keeps its
        input's dtype. No complex dtypes.
        """


class RMSNormFn(Protocol):
    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, *, out_dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        """Wan's RMSNorm over the last dim (the q/k norm spans the full model dim C).

        y = (x_f32 * rsqrt(mean(x_f32**2, -1) + eps)) rounded to x.dtype, then * weight.
        Output dtype: torch.promote_types(x.dtype, weight.dtype) (bf16 x with float32 weight
        gives float32, as in the official code), or ``out_dtype`` when given: the result is
        then rounded once to ``out_dtype`` (what the consumer would cast it to anyway).
        Fused kernels may skip the intermediate rounding within their declared tolerance.
        """


class LayerNormFn(Protocol):
    def __call__(
        self,
        x: torch.Tensor,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        eps: float,
        *,
        out_dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """LayerNorm over the last dim, statistics in float32, with or without affine.

        y = layer_norm(x_f32, weight_f32, bias_f32, eps), returned in x.dtype (Wan's
        ``WanLayerNorm``: ``F.layer_norm(x.float()).type_as(x)``), then rounded to
        ``out_dtype`` when given. weight/bias may be None.
        """


class LayerNormModulateFn(Protocol):
    def __call__(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, *,
        out_dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """Affine-free LayerNorm fused with adaLN modulation: norm(x) * (1 + scale) + shift.

        x: [B, S, C]; shift, scale broadcast against x ([B, 1, C] for one timestep per sample,
        [B, S, C] for per-token timesteps). norm(x) is computed in float32 and rounded to
        x.dtype (as the official code does), then the modulation is computed in
        promote_types(x.dtype, scale.dtype), which is also the output dtype unless
        ``out_dtype`` is given (the result is then rounded once to it).
        """


class AddLayerNormModulateFn(Protocol):
    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, *,
        out_dtype: Optional[torch.dtype] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """A residual add and the adaLN norm that reads its sum, in one pass (the block's
        cross-attention residual and the FFN's norm): returns ``(s, h)`` with

            s = x + y                      in promote_types(x.dtype, y.dtype)
            h = layer_norm_modulate(s, shift, scale, eps, out_dtype=out_dtype)

        x, y: [B, S, C] (the float32 residual stream and a branch output under the official
        policy: one float32 add, as ``x = x + cross_attn(...)`` does); shift, scale as for
        ``layer_norm_modulate``. An implementation may write ``s`` into x's storage when the dtypes
        allow; the caller never reads x afterwards. A backend without a fused kernel gets the
        composition: ``s = x + y``, then its ``layer_norm_modulate``.
        """


class QKNormRopeFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        q_weight: torch.Tensor,
        k_weight: torch.Tensor,
        eps: float,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_heads: int,
        out_dtype: torch.dtype,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Self-attention's q/k path: RMSNorm over the full dim C, split heads, rotary, cast.

        q, k: [B, S, C] (Linear outputs); weights [C]. Equals
        ``rotary(rms_norm(q, q_weight, eps).view(B, S, N, D), ..., cos, sin)`` (same for k)
        rounded to ``out_dtype``: returns two [B, S, N, D] tensors in ``out_dtype``. A backend
        without a fused kernel gets this composed from its rms_norm and rotary.
        """


class LinearGeluFn(Protocol):
    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The FFN's first half: gelu_tanh(x @ weight.T + bias), computed in weight's dtype.

        x: [..., K] (cast to weight's dtype), weight [N, K], bias [N]. Returns [..., N] in
        weight's dtype. The official code rounds the Linear output to bf16 before the GELU; a
        kernel applying the GELU to the float32 accumulator (a GEMM epilogue) is within bf16
        rounding of it.
        """


class GatedResidualFn(Protocol):
    def __call__(self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The gated residual add of a Wan block: x + y * gate.

        x: [B, S, C] residual stream; y: [B, S, C] branch output; gate [B, 1 or S, C].
        Computed and returned in promote_types(x, y, gate) (float32 under the official
        policy: the residual stream becomes float32 at the first block). An implementation
        may write the result into x's storage when the dtypes allow; the caller never reads
        x afterwards.
        """


class QuantLinearFn(Protocol):
    """A quantized Linear: what ``load()`` of a ``quant_linear`` implementation returns is a
    ``wanport.ops.quant.QuantKernels`` (callable as the matmul below, plus the weight/activation
    quantizers and the fused producers; docs/quantization.md).

    One implementation implements the schemes it declares in ``Constraints(schemes=...)``; the
    recipe's ``quant.dit`` picks the scheme. The call:
    """

    def __call__(self, x, weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor], *,
                 out_dtype: torch.dtype) -> torch.Tensor:
        """y = dequant(x) @ dequant(weight).T + bias, returned in ``out_dtype``.

        x: [..., K] tensor (quantized inside per the scheme) or a ``QuantizedActivation`` of
        the same scheme; weight [N, K] in the scheme's storage dtype, weight_scale float32
        [N, 1] or [1, 1]; bias [N] (any float dtype) or None. Products accumulated in at least
        float32; the only error vs float64 beyond the scheme's own rounding (the reference
        emulation, ``wanport.reference.quant_linear``) is the rounding of the output.
        """


class ChannelRMSNormFn(Protocol):
    def __call__(self, x: torch.Tensor, gamma: torch.Tensor, *, silu: bool = False) -> torch.Tensor:
        """The Wan VAE's RMS norm over the channel dim (dim 1), optionally followed by SiLU.

        x: [B, C, T, H, W] (video) or [N, C, H, W] (images), in any memory format (channels-last
        keeps C innermost). gamma: C elements shaped to broadcast over dim 1 ([C, 1, 1, 1] or
        [C, 1, 1], the official parameter), in x's dtype. Per position:
            y = x / max(||x||_C, 1e-12) * sqrt(C) * gamma,    then silu(y) = y * sigmoid(y) if silu
        with ||x||_C the L2 norm over the C channels of that position, computed in at least
        float32; a position whose channels are all zero gives zeros (0 / 1e-12). Output: x's
        shape and dtype. The reference rounds to x's dtype after the division, after each product
        and after the SiLU (what the official module-by-module code does for bf16); fused kernels
        and the composed form keep float32 to the end and round once (within bf16 rounding of it;
        identical arithmetic for float32 inputs up to the order of the channel sum).
        """


#: Op kinds in the order the registry reports them.
OP_KINDS = ("attention", "rotary", "rms_norm", "layer_norm", "layer_norm_modulate", "add_layer_norm_modulate",
            "qk_norm_rope", "gated_residual", "linear_gelu", "quant_linear", "channel_rms_norm")

#: Op kinds chosen by the recipe's scheme, not by exactness: the resolver takes only the active
#: backend's own implementations that declare the scheme (no fallback to another backend's), and
#: resolves the site only when the recipe asks for quantization.
SCHEME_KINDS = ("quant_linear",)

#: Op kinds that a backend need not implement: the resolver composes them from other kinds (no
#: kinds: pure PyTorch). A backend without its own implementation gets the composition, not another
#: backend's implementation.
COMPOSABLE = {"qk_norm_rope": ("rms_norm", "rotary"), "add_layer_norm_modulate": ("layer_norm_modulate",),
              "channel_rms_norm": ()}


def composed_from(kind: str) -> str:
    """How a backend without an implementation of a composable kind gets it, for the listings."""
    parts = COMPOSABLE[kind]
    return "composed from %s" % (" + ".join(parts) if parts else "plain PyTorch ops")

#: Op kinds with an optional ``out_dtype`` keyword; implementations that don't declare
#: ``Constraints(out_dtype=True)`` are wrapped with a cast.
OUT_DTYPE_KINDS = ("rms_norm", "layer_norm", "layer_norm_modulate")

#: Call sites of the DiT and the op kind each one uses. Recipes override by kind
#: (``ops: {attention: ...}`` sets both attention sites) or by site.
CALL_SITES = {
    "self_attention": "attention",
    "cross_attention": "attention",
    "rotary": "rotary",
    "rms_norm": "rms_norm",
    "layer_norm": "layer_norm",
    "layer_norm_modulate": "layer_norm_modulate",
    "add_layer_norm_modulate": "add_layer_norm_modulate",
    "qk_norm_rope": "qk_norm_rope",
    "gated_residual": "gated_residual",
    "linear_gelu": "linear_gelu",
    # every quantized Linear of the blocks (the report lists each layer; docs/quantization.md)
    "quant_linear": "quant_linear",
}

#: Call sites resolved only when the call-site requirements name them (quantization asked for).
OPTIONAL_SITES = ("quant_linear",)
#: Call sites of the VAEs (``models/vae``), resolved when the requirements name them (the pipeline
#: does; a DiT-only table leaves them None and the VAE keeps its reference math).
VAE_CALL_SITES = {"channel_rms_norm": "channel_rms_norm"}

CONTRACTS = {
    "attention": AttentionFn,
    "rotary": RotaryFn,
    "rms_norm": RMSNormFn,
    "layer_norm": LayerNormFn,
    "layer_norm_modulate": LayerNormModulateFn,
    "add_layer_norm_modulate": AddLayerNormModulateFn,
    "qk_norm_rope": QKNormRopeFn,
    "gated_residual": GatedResidualFn,
    "linear_gelu": LinearGeluFn,
    "quant_linear": QuantLinearFn,
    "channel_rms_norm": ChannelRMSNormFn,
}
