"""CPU kernels of the emulated torch_npu ops: strict validation, then float32 math, real return structures.

Each kernel gets the era and the call's arguments bound by name (the dispatcher already enforced
names, types and arity from the registered schema). Validation failures raise RuntimeError, as the
real ops do; things the emulation deliberately does not model (dropout, pse, quantisation, sparse
modes 2..8, fully-masked rows, int4/int64-packed quantisation, ...) raise :class:`NotEmulated` so no test can rely on them.

Math follows the kernels' documented formulas in float32 (the precision the hardware accumulates
in), results rounded to the documented output dtype.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
HALF = (torch.float16, torch.bfloat16)
INT32_MAX = 2147483647


class NotEmulated(NotImplementedError):
    """A valid call the emulation does not model (the message starts with 'emulation:')."""

    def __init__(self, what: str) -> None:
        super().__init__("emulation: %s is not modelled" % what)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


def _none(a: Dict, names: Sequence[str]) -> None:
    for name in names:
        if a.get(name) is not None:
            raise NotEmulated("argument %r" % name)


# ----------------------------------------------------------------------------- attention core


def _band(sq: int, skv: int, pre: int, nxt: int, device) -> torch.Tensor:
    """sparse_mode 0 band: (i, j) masked iff j - i > next_tokens or i - j > pre_tokens."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(skv, device=device)[None, :]
    return ((j - i) > nxt) | ((i - j) > pre)


def _attend(q, k, v, scale: float, masked: Optional[torch.Tensor]):
    """q [B, N, Sq, D], k/v [B, Nkv, Skv, D]; masked broadcastable to [B, N, Sq, Skv] (True = drop).
    Returns out [B, N, Sq, Dv] float32, row max and row sum-exp [B, N, Sq] float32."""
    n, nkv = q.shape[1], k.shape[1]
    if nkv != n:
        k = k.repeat_interleave(n // nkv, dim=1)
        v = v.repeat_interleave(n // nkv, dim=1)
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if masked is not None:
        masked = masked.bool().expand_as(s)
        if bool(masked.all(dim=-1).any()):
            raise NotEmulated("a fully masked query row (hardware output unconfirmed)")
        s = s.masked_fill(masked, float("-inf"))
    row_max = s.amax(dim=-1)
    p = torch.exp(s - row_max[..., None])
    row_sum = p.sum(dim=-1)
    out = torch.matmul(p / row_sum[..., None], v.float())
    return out, row_max, row_sum


def _mask_shapes(b, n, sq, skv):
    return {(b, n, sq, skv): "BNSS", (b, 1, sq, skv): "B1SS", (1, 1, sq, skv): "11SS", (sq, skv): "SS"}


# ----------------------------------------------------------------------------- npu_fusion_attention


def fusion_attention(era, a: Dict, first: str):
    q, k, v = a["query"], a["key"], a["value"]
    layout = a["input_layout"].upper() if era.layout_case_insensitive else a["input_layout"]
    check(layout in ("BSH", "SBH", "BSND", "BNSD", "TND"),
          "The input_layout should be BSH/SBH/BNSD/BSND/TND(case-insensitive), but got %r" % a["input_layout"])
    head_num = a["head_num"]
    check(head_num > 0, "head_num must be greater than 0, but got %d" % head_num)
    keep_prob = a["keep_prob"]
    check(0 < keep_prob <= 1, "The keep_prob value must be in range of (0, 1], but got %s" % keep_prob)
    check(q.dtype in FLOATS, "query dtype must be float16, bfloat16 or float32, got %s" % q.dtype)
    check(k.dtype == q.dtype and v.dtype == q.dtype, "query, key and value must have the same dtype")
    check(tuple(k.shape) == tuple(v.shape), "key and value must have the same shape: %s vs %s"
          % (tuple(k.shape), tuple(v.shape)))
    rank = 3 if layout in ("BSH", "SBH", "TND") else 4
    check(q.dim() == rank and k.dim() == rank, "%s layout needs %d-D query/key/value, got %d-D" % (layout, rank, q.dim()))
    check(a["padding_mask"] is None, "padding_mask is not supported yet")
    _none(a, ("pse", "prefix"))
    if "softmax_layout" in a:
        check(a["softmax_layout"] in ("", "TND"), "softmax_layout must be '' or 'TND'")
        check(a["softmax_layout"] == "" or layout == "TND", "softmax_layout 'TND' needs input_layout TND")
        _none(a, ("sink", "dropout_mask"))
    sparse = a["sparse_mode"]
    allowed = (0, 1, 2, 3, 4, 6, 7, 8) if layout == "TND" else tuple(range(0, 7))
    check(sparse in allowed, "sparse_mode %d is not supported for layout %s" % (sparse, layout))
    if keep_prob < 1:
        raise NotEmulated("dropout (keep_prob < 1)")
    if layout == "TND":
        return _fa_tnd(era, a, q, k, v, head_num)

    # to [B, N, S, D]
    if layout == "BSND":
        qc, kc, vc = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    elif layout == "BNSD":
        qc, kc, vc = q, k, v
    else:
        check(q.shape[-1] % head_num == 0, "H %d is not divisible by head_num %d" % (q.shape[-1], head_num))
        d = q.shape[-1] // head_num
        check(k.shape[-1] % d == 0, "key H %d is not a multiple of D %d" % (k.shape[-1], d))
        if layout == "SBH":
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        qc = q.reshape(q.shape[0], q.shape[1], head_num, d).permute(0, 2, 1, 3)
        kc, vc = (t.reshape(t.shape[0], t.shape[1], -1, d).permute(0, 2, 1, 3) for t in (k, v))
    b, n, sq, dq = qc.shape
    nkv, skv, dk, dv = kc.shape[1], kc.shape[2], kc.shape[3], vc.shape[3]
    check(kc.shape[0] == b, "query, key and value must have the same batch size")
    check(head_num == n, "head_num %d does not match the query's N %d" % (head_num, n))
    check(1 <= n <= 256, "N must be in [1, 256], got %d" % n)
    check(n % nkv == 0, "query N %d must be a multiple of key/value N %d" % (n, nkv))
    check(dq == dk and dk >= dv, "need Dq == Dk >= Dv, got %d, %d, %d" % (dq, dk, dv))
    if era.fa_head_dims is None:
        check(1 <= dq <= 768, "head dim must be in [1, 768], got %d" % dq)
    else:
        check(dq in era.fa_head_dims, "head dim must be one of %s, got %d" % (sorted(era.fa_head_dims), dq))

    mask = a["atten_mask"]
    masked = None
    if mask is not None:
        check(mask.dtype in (torch.bool, torch.uint8), "atten_mask dtype must be bool or uint8, got %s" % mask.dtype)
        shapes = _mask_shapes(b, n, sq, skv)
        check(tuple(mask.shape) in shapes, "atten_mask shape %s is not BNSS/B1SS/11SS/SS for B=%d N=%d Sq=%d Skv=%d"
              % (tuple(mask.shape), b, n, sq, skv))
        masked = mask.bool()
        if sparse == 0:
            masked = masked | _band(sq, skv, a["pre_tockens"], a["next_tockens"], q.device)
        elif sparse != 1:
            raise NotEmulated("sparse_mode %d (compressed masks)" % sparse)
    # without a mask, sparse_mode / pre_tockens / next_tockens are ignored: full attention
    out, row_max, row_sum = _attend(qc, kc, vc, float(a["scale"]), masked)
    out = out.to(q.dtype)
    if layout == "BSND":
        out = out.permute(0, 2, 1, 3)
    elif layout in ("BSH", "SBH"):
        out = out.permute(0, 2, 1, 3).reshape(b, sq, n * dv)
        if layout == "SBH":
            out = out.transpose(0, 1)
    smax = row_max[..., None].expand(b, head_num, sq, 8).contiguous()
    ssum = row_sum[..., None].expand(b, head_num, sq, 8).contiguous()
    return out.contiguous(), smax, ssum, q.new_empty(0), 0, 0, b * n * sq * skv


def _fa_tnd(era, a, q, k, v, head_num):
    qlen, kvlen = a["actual_seq_qlen"], a["actual_seq_kvlen"]
    check(qlen is not None and kvlen is not None, "TND layout needs actual_seq_qlen and actual_seq_kvlen")
    check(len(qlen) == len(kvlen), "actual_seq_qlen and actual_seq_kvlen must have the same length")
    for name, cum, total in (("actual_seq_qlen", qlen, q.shape[0]), ("actual_seq_kvlen", kvlen, k.shape[0])):
        check(all(x >= 0 for x in cum) and all(b >= a_ for a_, b in zip(cum, cum[1:])),
              "%s must be non-decreasing cumulative lengths" % name)
        check(cum[-1] <= total, "%s ends at %d beyond T=%d" % (name, cum[-1], total))
    n = q.shape[1]
    check(head_num == n, "head_num %d does not match the query's N %d" % (head_num, n))
    check(n % k.shape[1] == 0, "query N must be a multiple of key/value N")
    if a["atten_mask"] is not None:
        raise NotEmulated("atten_mask with TND")
    out = torch.zeros(q.shape[0], n, v.shape[-1], dtype=torch.float32)
    smax = torch.zeros(q.shape[0], n, 8)
    ssum = torch.zeros(q.shape[0], n, 8)
    numels = 0
    q0 = kv0 = 0
    for q1, kv1 in zip(qlen, kvlen):
        if q1 > q0:
            check(kv1 > kv0, "a query segment with no keys")
            seg = (t.permute(1, 0, 2)[None] for t in (q[q0:q1], k[kv0:kv1], v[kv0:kv1]))
            o, m, s = _attend(*seg, float(a["scale"]), None)
            out[q0:q1] = o[0].permute(1, 0, 2)
            smax[q0:q1] = m[0].t()[..., None]
            ssum[q0:q1] = s[0].t()[..., None]
        numels += n * (q1 - q0) * (kv1 - kv0)
        q0, kv0 = q1, kv1
    return out.to(q.dtype), smax, ssum, q.new_empty(0), 0, 0, numels


# ----------------------------------------------------------------------------- npu_fused_infer_attention_score

_FIA_UNMODELLED = ("pse_shift", "actual_seq_lengths", "dequant_scale1", "quant_scale1", "dequant_scale2",
                   "quant_scale2", "quant_offset2", "antiquant_scale", "antiquant_offset", "key_antiquant_scale",
                   "key_antiquant_offset", "value_antiquant_scale", "value_antiquant_offset", "block_table",
                   "query_padding_size", "kv_padding_size", "key_shared_prefix", "value_shared_prefix",
                   "actual_shared_prefix_len", "query_rope", "key_rope", "key_rope_antiquant_scale")
_FIA_LAYOUTS = ("BSH", "BSND", "BNSD", "BNSD_BSND")
_FIA_OTHER_LAYOUTS = ("TND", "NTD", "BSH_BNSD", "BSND_BNSD", "BSH_NBSD", "BSND_NBSD", "BNSD_NBSD", "TND_NTD", "NTD_TND")


def fused_infer_attention(era, a: Dict, first: str):
    q, k, v = a["query"], a["key"], a["value"]
    layout = a["input_layout"]
    if layout in _FIA_OTHER_LAYOUTS:
        raise NotEmulated("FIA layout %s" % layout)
    check(layout in _FIA_LAYOUTS, "input_layout %r is not supported" % layout)
    _none(a, _FIA_UNMODELLED)
    check(q.dtype in HALF, "query dtype must be float16 or bfloat16, got %s" % q.dtype)
    check(k.dtype == q.dtype and v.dtype == q.dtype, "key/value dtype must equal query's (no quantised KV here)")
    check(all(t.is_contiguous() for t in (q, k, v)), "non-contiguous query/key/value are not supported")
    check(tuple(k.shape) == tuple(v.shape), "key and value must have the same shape")
    rank = 3 if layout == "BSH" else 4
    check(q.dim() == rank and k.dim() == rank, "input_layout %s needs %d-D tensors" % (layout, rank))
    heads = a["num_heads"]
    check(heads >= 1, "num_heads must be positive")
    nkv_arg = a["num_key_value_heads"] or heads
    if layout == "BSH":
        check(q.shape[-1] % heads == 0, "H %d not divisible by num_heads %d" % (q.shape[-1], heads))
        d = q.shape[-1] // heads
        qc = q.reshape(q.shape[0], q.shape[1], heads, d).permute(0, 2, 1, 3)
        kc, vc = (t.reshape(t.shape[0], t.shape[1], nkv_arg, -1).permute(0, 2, 1, 3) for t in (k, v))
    elif layout == "BSND":
        qc, kc, vc = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    else:
        qc, kc, vc = q, k, v
    b, n, sq, d = qc.shape
    nkv, skv = kc.shape[1], kc.shape[2]
    check(n == heads, "num_heads %d must equal the query's N %d" % (heads, n))
    check(nkv == nkv_arg, "num_key_value_heads %d must equal key/value N %d" % (nkv_arg, nkv))
    check(heads % nkv == 0 and heads // nkv <= 64, "num_heads must be a multiple of num_key_value_heads (ratio <= 64)")
    check(n <= 256, "N must be <= 256")
    check(d <= 512 and d % 8 == 0, "D must be <= 512 and 16-byte aligned for fp16/bf16, got %d" % d)
    check(kc.shape[0] == b, "batch sizes differ")
    sparse = a["sparse_mode"]
    check(sparse in (0, 1, 2, 3, 4), "sparse_mode %d is not supported" % sparse)
    check(a["inner_precise"] in (0, 1, 2, 3), "inner_precise must be 0..3")

    masked = None
    mask = a["atten_mask"]
    if mask is not None:
        check(mask.dtype in (torch.bool, torch.int8, torch.uint8), "atten_mask dtype must be bool/int8/uint8")
        shapes = {(sq, skv), (1, sq, skv), (b, 1, sq, skv), (1, 1, sq, skv)}
        check(tuple(mask.shape) in shapes, "atten_mask shape %s not accepted" % (tuple(mask.shape),))
        if sparse not in (0, 1):
            raise NotEmulated("sparse_mode %d" % sparse)
        masked = mask.bool().reshape(-1, 1, sq, skv) if mask.dim() == 4 else mask.bool().reshape(1, 1, sq, skv)
        if sparse == 0:
            masked = masked | _band(sq, skv, a["pre_tokens"], a["next_tokens"], q.device)
    lens = a["actual_seq_lengths_kv"]
    if lens is not None:
        lens = list(lens)
        check(len(lens) == 1 or len(lens) >= b, "actual_seq_lengths_kv needs 1 or >= B entries")
        lens = lens * b if len(lens) == 1 else lens[:b]
        check(all(0 <= x <= skv for x in lens), "actual_seq_lengths_kv %s outside [0, %d]" % (lens, skv))
        if min(lens) == 0:
            raise NotEmulated("empty key/value rows")
        pad = torch.arange(skv)[None, :] >= torch.tensor(lens)[:, None]
        pad = pad[:, None, None, :]
        masked = pad if masked is None else masked | pad
    out, row_max, row_sum = _attend(qc, kc, vc, float(a["scale"]), masked)
    out = out.to(q.dtype)
    if layout in ("BSND", "BNSD_BSND"):
        out = out.permute(0, 2, 1, 3)
    elif layout == "BSH":
        out = out.permute(0, 2, 1, 3).reshape(b, sq, -1)
    if a["softmax_lse_flag"]:
        lse = (row_max + torch.log(row_sum))[..., None]  # [B, N, Sq, 1]
    else:
        lse = torch.empty(0, dtype=torch.float32)  # placeholder (C++ allocates [0]; the doc says (1,))
    return out.contiguous(), lse


# ----------------------------------------------------------------------------- npu_rotary_mul


def _rotary_patterns(x_shape, mode: str):
    """(r1 shape, (B, N)) pairs accepted for x, per the jit_compile=False rules."""
    if len(x_shape) == 3:  # TND
        t, n, d = x_shape
        shapes = [(t, 1, d)] + ([(t, n, d)] if mode == "half" else [])
        return [(s, (1, n)) for s in shapes]
    a0, a1, a2, d = x_shape
    if mode == "interleave":
        return [((1, 1, a2, d), (a0, a1)),  # x BNSD: 11SD
                ((1, a1, 1, d), (a0, a2)),  # x BSND: 1S1D
                ((a0, 1, 1, d), (a1, a2))]  # x SBND: S11D
    return [((1, 1, a2, d), (a0, a1)), ((a0, 1, a2, d), (a0, a1)), ((a0, a1, a2, d), (a0, a1)),
            ((1, a1, 1, d), (a0, a2)), ((a0, a1, 1, d), (a0, a2)), ((a0, a1, a2, d), (a0, a2)),
            ((a0, 1, 1, d), (a1, a2)), ((a0, a1, 1, d), (a1, a2)), ((a0, a1, a2, d), (a1, a2))]


def rotary_mul(era, a: Dict, first: str):
    x, r1, r2 = a[first], a["r1"], a["r2"]
    mode = a.get("rotary_mode", "half")
    check(mode in ("half", "interleave"), "The rotary_mode of npu_rotary_mul should be half or interleave")
    for name, t in ((first, x), ("r1", r1), ("r2", r2)):
        check(t.dtype in FLOATS, "%s dtype must be float16, bfloat16 or float32, got %s" % (name, t.dtype))
    check(x.dim() in era.rotary_ndims, "x must be %s-D, got %d-D" % ("/".join(map(str, era.rotary_ndims)), x.dim()))
    check(tuple(r1.shape) == tuple(r2.shape), "r1 and r2 must have the same shape")
    d = x.shape[-1]
    check(d % 2 == 0 and d < 896, "D must be even and < 896, got %d" % d)
    check(d % era.rotary_d_multiple == 0, "D must be a multiple of %d, got %d" % (era.rotary_d_multiple, d))
    check(r1.dim() == x.dim() and r1.shape[-1] == d, "r1/r2 must be %d-D with last dim D" % x.dim())
    rotate = a.get("rotate")
    if era.rotary_any_broadcast:
        try:
            torch.broadcast_shapes(tuple(r1.shape), tuple(x.shape))
        except RuntimeError:
            check(False, "r1 %s does not broadcast to x %s" % (tuple(r1.shape), tuple(x.shape)))
    else:
        matches = [bn for shape, bn in _rotary_patterns(tuple(x.shape), mode) if tuple(r1.shape) == shape]
        check(bool(matches), "%s mode: r1/r2 shape %s is not an accepted layout for x %s"
              % (mode, tuple(r1.shape), tuple(x.shape)))
        if mode == "interleave":
            check(any(b * n < 1000 for b, n in matches), "interleave mode needs B * N < 1000")
        else:
            check(any(b < 1000 and n < 1000 for b, n in matches), "half mode needs B, N < 1000")
    c = r1.to(x.dtype).float()  # the kernel casts r1/r2 to x's dtype
    s = r2.to(x.dtype).float()
    xf = x.float()
    if rotate is not None:
        check(tuple(rotate.shape) == (d, d), "rotate must be [D, D]")
        turned = torch.matmul(xf, rotate.float())
    elif mode == "half":
        x1, x2 = xf.chunk(2, dim=-1)
        turned = torch.cat((-x2, x1), dim=-1)
    else:
        turned = torch.stack((-xf[..., 1::2], xf[..., 0::2]), dim=-1).flatten(-2)
    return (xf * c + turned * s).to(x.dtype)


# ----------------------------------------------------------------------------- npu_rms_norm

_RMS_PAIRS = {(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float16),
              (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)}


def rms_norm(era, a: Dict, first: str):
    x, g, eps = a[first], a["gamma"], a["epsilon"]
    # the dispatcher lets None through for `Tensor gamma` (an undefined tensor); the real kernel then
    # fails (diffusers #14380), the emulation says so
    check(g is not None, "gamma is undefined: npu_rms_norm needs a weight tensor")
    check(x.dtype in FLOATS, "x dtype must be float16, bfloat16 or float32, got %s" % x.dtype)
    check(2 <= x.dim() <= 8, "x must have 2..8 dims, got %d" % x.dim())
    check(g.dim() <= x.dim(), "gamma has more dims than x")
    check(tuple(g.shape) == tuple(x.shape[x.dim() - g.dim():]), "gamma shape %s must match x's trailing dims %s"
          % (tuple(g.shape), tuple(x.shape)))
    if era.rms_mixed_gamma:
        check((x.dtype, g.dtype) in _RMS_PAIRS, "unsupported (x, gamma) dtypes (%s, %s)" % (x.dtype, g.dtype))
    else:
        check(g.dtype == x.dtype, "gamma dtype %s must equal x dtype %s" % (g.dtype, x.dtype))
    dims = tuple(range(x.dim() - g.dim(), x.dim()))
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + eps)
    y = (xf * rstd * g.float()).to(x.dtype)
    return y, rstd


# ----------------------------------------------------------------------------- npu_layer_norm_eval


def _resized(t: Optional[torch.Tensor], shape) -> Optional[torch.Tensor]:
    """LayerNormEvalKernelNpu: weight/bias are cloned and resize_'d to normalized_shape when their
    shape differs. resize_ keeps the first numel elements in memory order (for [B, 1, C] with B > 1:
    sample 0); growing leaves memory uninitialised, shown here as NaN."""
    if t is None or tuple(t.shape) == tuple(shape):
        return t
    n = math.prod(shape)
    flat = t.contiguous().reshape(-1)
    if flat.numel() >= n:
        return flat[:n].reshape(shape).clone()
    grown = torch.full((n,), float("nan"), dtype=t.dtype)
    grown[: flat.numel()] = flat
    return grown.reshape(shape)


def layer_norm_eval(era, a: Dict, first: str):
    x, shape, w, b, eps = a[first], list(a["normalized_shape"]), a["weight"], a["bias"], a["eps"]
    check(x.dtype in FLOATS, "input dtype must be float16, bfloat16 or float32, got %s" % x.dtype)
    check(1 <= len(shape) <= x.dim() and tuple(x.shape[x.dim() - len(shape):]) == tuple(shape),
          "normalized_shape %s does not match input %s" % (shape, tuple(x.shape)))
    for name, t in (("weight", w), ("bias", b)):
        check(t is None or t.dtype == x.dtype, "%s dtype %s must equal input dtype %s (strict: unconfirmed on hardware)"
              % (name, None if t is None else t.dtype, x.dtype))
    w, b = _resized(w, shape), _resized(b, shape)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    xf = x.float()
    mean = xf.mean(dim=dims, keepdim=True)
    var = (xf - mean).pow(2).mean(dim=dims, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if w is not None:
        y = y * w.float()
    if b is not None:
        y = y + b.float()
    return y.to(x.dtype)


# ----------------------------------------------------------------------------- quantisation (Atlas A2)

#: ScalarType codes: a schema's `int? output_dtype` (op-plugin 26.0.0) receives the dtype's code
_SCALAR_TYPES = {0: torch.uint8, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.int64, 5: torch.float16,
                 6: torch.float32, 7: torch.float64, 11: torch.bool, 15: torch.bfloat16}


def _dtype(value) -> Optional[torch.dtype]:
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in _SCALAR_TYPES:
        raise NotEmulated("ScalarType code %r (torch_npu's own dtypes)" % (value,))
    return _SCALAR_TYPES[value]


def _transposed_last_two(t: torch.Tensor) -> bool:
    """QuantMatmulKernelNpuOpApi.cpp ``is_transpose_last_two_dims``: a contiguous [..., N, K] viewed as
    [..., K, N] (batch dims contiguous over the swapped pair)."""
    if not 2 <= t.dim() <= 6:
        return False
    d1, d2 = t.dim() - 1, t.dim() - 2
    if not (t.stride(d2) == 1 and t.stride(d1) == t.size(d2)):
        return False
    span = t.size(d1) * t.size(d2)
    for b in range(t.dim() - 3, -1, -1):
        if t.stride(b) != span:
            return False
        span *= t.size(b)
    return not (t.size(d1) == 1 and t.size(d2) == 1)


def _nd_or_transposed(t: torch.Tensor, name: str) -> None:
    check(t.is_contiguous() or _transposed_last_two(t),
          "%s must be contiguous or a transpose of its last two dims of a contiguous tensor "
          "(strict: other strided views unconfirmed on hardware)" % name)


def dynamic_quant(era, a: Dict, first: str):
    """y = round(x / s), s = rowMax(|x|) / 127 per row (every dim but the last); returns (int8 y, float32 s)."""
    x = a[first]
    check(x.dtype in HALF, "npu_dynamic_quant: x dtype must be float16 or bfloat16, got %s" % x.dtype)
    check(x.dim() > 1, "npu_dynamic_quant: x must have more than 1 dim, got %d" % x.dim())
    check(x.numel() > 0, "npu_dynamic_quant: empty x is not supported")
    if a.get("group_index") is not None:
        raise NotEmulated("npu_dynamic_quant group_index (MoE smooth scales)")
    dst = _dtype(a.get("dst_type"))
    if dst is torch.quint4x2:
        raise NotEmulated("npu_dynamic_quant int4 output")
    check(dst in (None, torch.int8), "npu_dynamic_quant: dst_type on Atlas A2 is int8 or quint4x2, got %s" % dst)
    if a.get("quant_mode", "pertoken") != "pertoken" or a.get("dst_type_max", 0.0) != 0.0:
        raise NotEmulated("npu_dynamic_quant quant_mode %r / dst_type_max" % a.get("quant_mode"))
    xf = x.float()
    smooth = a["smooth_scales"]
    if smooth is not None:
        check(smooth.dtype == x.dtype, "npu_dynamic_quant: smooth_scales dtype must equal x's")
        check(smooth.dim() == 1 and smooth.numel() == x.shape[-1],
              "npu_dynamic_quant: smooth_scales must be 1-D with x's last dim (%d)" % x.shape[-1])
        xf = xf * smooth.float()
    amax = xf.abs().amax(dim=-1)
    if bool((amax == 0).any()):
        raise NotEmulated("an all-zero row (scale 0; hardware output unconfirmed)")
    if not bool(torch.isfinite(amax).all()):
        raise NotEmulated("a non-finite row")
    scale = amax / 127.0
    y = torch.round(xf / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return y, scale


def quant_matmul(era, a: Dict, first: str):
    """out = (x1 @ x2 [+ int32 bias]) * scale [* pertoken_scale] [+ float bias], int8 x int8 on Atlas A2."""
    x1, x2, scale = a["x1"], a["x2"], a["scale"]
    offset, pertoken, bias = a["offset"], a["pertoken_scale"], a["bias"]
    for name in ("x1_dtype", "x2_dtype", "pertoken_scale_dtype", "scale_dtype", "group_sizes", "y_scale"):
        if a.get(name) is not None:
            raise NotEmulated("npu_quant_matmul %s" % name)
    if x1.dtype == torch.int32 and x2.dtype == torch.int32:
        raise NotEmulated("int4 (int32-packed) npu_quant_matmul")
    check(x1.dtype == torch.int8 and x2.dtype == torch.int8,
          "npu_quant_matmul: x1 and x2 must both be int8 (or both int32 = int4) on Atlas A2, got %s and %s"
          % (x1.dtype, x2.dtype))
    check(2 <= x1.dim() <= 6 and 2 <= x2.dim() <= 6, "npu_quant_matmul: x1/x2 must have 2..6 dims")
    check(all(t.numel() > 0 for t in (x1, x2, scale)), "npu_quant_matmul: x1, x2 and scale must not be empty")
    check(x1.is_contiguous(), "npu_quant_matmul: x1 must be contiguous (strict: unconfirmed on hardware)")
    _nd_or_transposed(x2, "npu_quant_matmul: x2")
    m, k, n = x1.shape[-2], x1.shape[-1], x2.shape[-1]
    check(x2.shape[-2] == k, "npu_quant_matmul: K of x1 (%d) and x2 (%d) differ" % (k, x2.shape[-2]))
    check(k <= 65535 and n <= 65535, "npu_quant_matmul: the last dims of x1 and x2 must be <= 65535")
    try:
        batch = torch.broadcast_shapes(tuple(x1.shape[:-2]), tuple(x2.shape[:-2]))
    except RuntimeError:
        check(False, "the x1 shape and x2 shape not supported for broadcast")
    out_dtype = _dtype(a["output_dtype"]) or torch.int8
    check(out_dtype in (torch.int8, torch.float16, torch.bfloat16, torch.int32),
          "npu_quant_matmul: output_dtype on Atlas A2 is int8, float16, bfloat16 or int32, got %s" % out_dtype)
    check(scale.dim() == 1 and scale.numel() in (1, n), "npu_quant_matmul: scale must be 1-D of size 1 or n=%d, got %s"
          % (n, tuple(scale.shape)))
    check(scale.dtype in (torch.float32, torch.int64, torch.bfloat16),
          "npu_quant_matmul: scale dtype must be float32, int64 or bfloat16, got %s" % scale.dtype)
    check(offset is None or out_dtype == torch.int8, "npu_quant_matmul: offset is supported with an int8 output only")
    if pertoken is not None:
        check(out_dtype in HALF, "npu_quant_matmul: pertoken_scale is supported only with a float16 or bfloat16 "
              "output_dtype, got %s" % out_dtype)
        check(pertoken.dtype == torch.float32, "npu_quant_matmul: pertoken_scale must be float32, got %s" % pertoken.dtype)
        check(pertoken.dim() == 1 and pertoken.numel() == m,
              "npu_quant_matmul: pertoken_scale must be 1-D (m,) with m=%d, got %s" % (m, tuple(pertoken.shape)))
        if x1.dim() > 2:
            raise NotEmulated("pertoken_scale with a batched x1")
    if out_dtype in (torch.int8, torch.int32):
        raise NotEmulated("npu_quant_matmul %s output (requantisation rounding)" % out_dtype)
    if scale.dtype == torch.int64:
        raise NotEmulated("an int64 (npu_trans_quant_param) scale")
    out_shape = tuple(batch) + (m, n)
    bias_dtypes = {torch.int32}
    if out_dtype == torch.bfloat16:
        if era.qmm_bf16_scale_only:
            check(scale.dtype == torch.bfloat16, "npu_quant_matmul: a bfloat16 output needs a bfloat16 scale (this "
                  "torch_npu); got %s" % scale.dtype)
            bias_dtypes |= {torch.bfloat16}
        else:
            check(scale.dtype in (torch.float32, torch.bfloat16),
                  "npu_quant_matmul: a bfloat16 output needs a float32 or bfloat16 scale, got %s" % scale.dtype)
            bias_dtypes |= {torch.bfloat16, torch.float32}
    else:  # float16
        if pertoken is not None:
            check(scale.dtype == torch.float32, "npu_quant_matmul: float16 output with pertoken_scale needs a float32 "
                  "scale, got %s" % scale.dtype)
            if not era.qmm_bf16_scale_only:
                bias_dtypes |= {torch.float32}  # 7.0.0 docs add float16, 26.0.0 bfloat16: only the common one here
        else:
            check(scale.dtype in (torch.float32, torch.int64),
                  "npu_quant_matmul: float16 output without pertoken_scale needs a float32/int64 scale, got %s"
                  % scale.dtype)
    if bias is not None:
        check(bias.dtype in bias_dtypes, "npu_quant_matmul: bias dtype %s is not supported for output %s with "
              "scale %s%s (allowed: %s)" % (bias.dtype, out_dtype, scale.dtype,
                                            " and pertoken_scale" if pertoken is not None else "",
                                            sorted(str(d) for d in bias_dtypes)))
        shapes = {(n,)} | ({(out_shape[0], 1, n)} if len(out_shape) == 3 else set())
        check(tuple(bias.shape) in shapes, "npu_quant_matmul: bias shape %s must be (n,)%s"
              % (tuple(bias.shape), " or (batch, 1, n)" if len(out_shape) == 3 else ""))
    acc = torch.matmul(x1.double(), x2.double())  # exact: |acc| <= 65535 * 128 * 128 < 2^53
    if bias is not None and bias.dtype == torch.int32:
        acc = acc + bias.double()
    y = acc.float() * scale.float()
    if pertoken is not None:
        y = y * pertoken[:, None]
    if bias is not None and bias.dtype != torch.int32:
        y = y + bias.float()
    return y.to(out_dtype).expand(out_shape).contiguous()


def _row_or_vector(t: torch.Tensor, n: int) -> bool:
    return tuple(t.shape) in ((n,), (1, n))


def weight_quant_batchmatmul(era, a: Dict, first: str):
    """W8A16: out = x @ ((weight + antiquant_offset) * antiquant_scale) + bias, in x's dtype."""
    x, w, s, off = a["x"], a["weight"], a["antiquant_scale"], a["antiquant_offset"]
    bias, group = a["bias"], a["antiquant_group_size"]
    if a.get("weight_dtype") is not None:
        raise NotEmulated("npu_weight_quant_batchmatmul weight_dtype")
    check(a["quant_offset"] is None or a["quant_scale"] is not None,
          "npu_weight_quant_batchmatmul: quant_offset needs quant_scale")
    if a["quant_scale"] is not None:
        raise NotEmulated("npu_weight_quant_batchmatmul int8 output (quant_scale)")
    check(a.get("inner_precise", 0) in (0, 1), "npu_weight_quant_batchmatmul: inner_precise must be 0 or 1")
    check(x.dtype in HALF, "npu_weight_quant_batchmatmul: x dtype must be float16 or bfloat16 on Atlas A2, got %s"
          % x.dtype)
    if w.dtype == torch.int32:
        raise NotEmulated("int4 (int32-packed) weight")
    check(w.dtype == torch.int8, "npu_weight_quant_batchmatmul: weight must be int8 (or int32 = int4), got %s" % w.dtype)
    check(x.dim() == 2 and w.dim() == 2, "npu_weight_quant_batchmatmul: x (M, K) and weight (K, N) must be 2-D, "
          "got %d-D and %d-D" % (x.dim(), w.dim()))
    check(x.numel() > 0 and w.numel() > 0, "npu_weight_quant_batchmatmul: empty inputs are not supported")
    _nd_or_transposed(x, "npu_weight_quant_batchmatmul: x")
    _nd_or_transposed(w, "npu_weight_quant_batchmatmul: weight")
    k, n = x.shape[1], w.shape[1]
    check(w.shape[0] == k, "npu_weight_quant_batchmatmul: K of x (%d) and weight (%d) differ" % (k, w.shape[0]))
    check(1 <= k <= 65535 and 1 <= n <= 65535, "npu_weight_quant_batchmatmul: K and N must be in [1, 65535]")
    if s.dtype == torch.int64:
        raise NotEmulated("an int64 antiquant_scale")
    check(s.dtype == x.dtype, "npu_weight_quant_batchmatmul: antiquant_scale dtype %s must equal x's %s"
          % (s.dtype, x.dtype))
    if group:
        check(group % 32 == 0 and 32 <= group <= k - 1,
              "npu_weight_quant_batchmatmul: antiquant_group_size must be a multiple of 32 in [32, K-1], got %d" % group)
        raise NotEmulated("per-group antiquantisation")
    check(tuple(s.shape) in ((1,), (1, 1)) or _row_or_vector(s, n),
          "npu_weight_quant_batchmatmul: antiquant_scale must be (1,), (1, 1), (N,) or (1, N) with N=%d, got %s"
          % (n, tuple(s.shape)))
    if off is not None:
        if off.dtype == torch.int32:
            raise NotEmulated("an int32 antiquant_offset")
        check(off.dtype == s.dtype, "npu_weight_quant_batchmatmul: antiquant_offset dtype must equal antiquant_scale's")
        check(tuple(off.shape) == tuple(s.shape), "npu_weight_quant_batchmatmul: antiquant_offset shape %s must equal "
              "antiquant_scale's %s" % (tuple(off.shape), tuple(s.shape)))
    if bias is not None:
        want = torch.float32 if x.dtype == torch.bfloat16 else torch.float16
        check(bias.dtype == want, "npu_weight_quant_batchmatmul: bias must be %s for %s x, got %s"
              % (want, x.dtype, bias.dtype))
        check(_row_or_vector(bias, n), "npu_weight_quant_batchmatmul: bias must be (N,) or (1, N), got %s"
              % (tuple(bias.shape),))
        check(bias.is_contiguous(), "npu_weight_quant_batchmatmul: a non-contiguous bias is not supported")
    # antiquantisation in x's dtype (as a bf16/fp16 weight), float32 accumulation, one rounding of the output
    wd = w.to(x.dtype)
    if off is not None:
        wd = wd + off.reshape(-1)
    wd = wd * s.reshape(-1)
    y = torch.matmul(x.float(), wd.float())
    if bias is not None:
        y = y + bias.float().reshape(-1)
    return y.to(x.dtype)


KERNELS = {
    "npu_fusion_attention": fusion_attention,
    "npu_fused_infer_attention_score": fused_infer_attention,
    "npu_rotary_mul": rotary_mul,
    "npu_rms_norm": rms_norm,
    "npu_layer_norm_eval": layer_norm_eval,
    "npu_dynamic_quant": dynamic_quant,
    "npu_quant_matmul": quant_matmul,
    "npu_weight_quant_batchmatmul": weight_quant_batchmatmul,
}
