"""FP8 attention through cuDNN's FP8 flash attention (``quant.attention: fp8_tensor``, lossy, opt-in,
sm90+): the scheme of ``wanport.ops.attention_quant`` (docs/quantization.md, "FP8 attention").

- Quantizers: Q's scale is one inf-norm per (sample, head) (``head_multipliers``: a reduction, no
  ``|x|`` temporary). K and V are smoothed (their mean over the keys taken away) inside the
  quantizer: the mean per (sample, head, channel) is a float32 reduction, :func:`centered_amax`
  (Triton) takes ``max |x - mean|`` per (sample, head) without a float32 copy of x, and
  :func:`scale_cast` (Triton) subtracts the mean, multiplies each head by its float32 multiplier
  ``448 / amax`` and stores e4m3 in the same [B, S, N, D] layout. The same kernel dequantizes cuDNN's
  e4m3 output to q's dtype (times the output's descale, plus V's mean).
- Attention: one cuDNN graph (nvidia-cudnn-frontend ``sdpa_fp8``) for ONE head, dims (1, 1, S, D)
  with the strides of the [B, S, N, D] layout (no transpose), built once per (S_q, S_kv, D, N,
  scale, device) and run once per (sample, head) on that head's place in the tensors. The
  per-head scalars (descale of q, k, v; the output's scale ``448 / (amax(V) * O_HEADROOM)``) are
  addresses into one small float32 tensor built from the [B, N] scales (each scalar on its own 16
  bytes); ``descale_s = 1/448``, ``scale_s = 448`` (P times 448 in e4m3). Hopper's FP8 SDPA writes
  its output in e4m3 only (bf16 output is Blackwell-only). The graph's ``amax_s`` / ``amax_o``
  outputs go to a scratch buffer nobody reads.
- The workspace and that scratch are cached per (device, stream), and the handle is pointed at
  the current stream before each call: the Ulysses path runs attention on side streams.

No log-sum-exp: ring attention cannot use this (the resolver refuses it by the ``lse`` constraint).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from wanport.ops.attention_quant import P_SCALE, head_multipliers, output_scales, per_sample_keys

#: rows of one (sample, head) per program of the scale-and-cast kernel
_ROWS = 64


#: ``scale_cast``'s per-(sample, head, channel) float32 shift: none, subtracted before the multiply
#: (a smoothing quantizer), added after it (the dequantizer adding V's mean back)
NO_SHIFT, SHIFT_IN, SHIFT_OUT = 0, 1, 2


@triton.jit
def _head_tile(X, S, N, D, sxb, sxs, sxh, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's tile of one (sample, head) of a [B, S, N, D] tensor: (values as float32, its
    sample, head, rows, columns and mask)."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // N).to(tl.int64)
    h = (pid_bh % N).to(tl.int64)
    rows = (tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < S) & (cols[None, :] < D)
    x = tl.load(X + b * sxb + h * sxh + rows[:, None] * sxs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return x, b, h, rows, cols, mask


@triton.jit
def _scale_cast_kernel(X, Y, MULT, SHIFT, S, N, D,
                       sxb, sxs, sxh, syb, sys_, syh,
                       SHIFT_MODE: tl.constexpr, SATURATE: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(1)
    x, b, h, rows, cols, mask = _head_tile(X, S, N, D, sxb, sxs, sxh, BLOCK_S, BLOCK_D)
    if SHIFT_MODE != 0:
        shift = tl.load(SHIFT + pid_bh.to(tl.int64) * D + cols, mask=cols < D, other=0.0)
    if SHIFT_MODE == 1:
        x = x - shift[None, :]
    y = x * tl.load(MULT + pid_bh)
    if SHIFT_MODE == 2:
        y = y + shift[None, :]
    if SATURATE:
        y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    tl.store(Y + b * syb + h * syh + rows[:, None] * sys_ + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _centered_amax_kernel(X, MEAN, AMAX, S, N, D, sxb, sxs, sxh,
                          BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(1)
    x, _, _, _, cols, mask = _head_tile(X, S, N, D, sxb, sxs, sxh, BLOCK_S, BLOCK_D)
    mean = tl.load(MEAN + pid_bh.to(tl.int64) * D + cols, mask=cols < D, other=0.0)
    dev = tl.where(mask, tl.abs(x - mean[None, :]), 0.0)
    tl.atomic_max(AMAX + pid_bh, tl.max(tl.max(dev, axis=1), axis=0))


def _rows_last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def scale_cast(x: torch.Tensor, mult: torch.Tensor, dtype: torch.dtype, *, saturate: bool,
               shift: Optional[torch.Tensor] = None, shift_mode: int = NO_SHIFT) -> torch.Tensor:
    """``x`` [B, S, N, D] (last dim contiguous) times ``mult`` [B, N] float32 (one per (sample, head)),
    stored as a new contiguous [B, S, N, D] tensor of ``dtype`` (round to nearest even);
    ``saturate`` clamps to e4m3's +-448 first (a quantizer's cast). ``shift`` [B, N, D] float32 with
    ``shift_mode`` SHIFT_IN: ``(x - shift) * mult``; SHIFT_OUT: ``x * mult + shift``."""
    x = _rows_last_contiguous(x)
    b, s, n, d = x.shape
    y = torch.empty((b, s, n, d), dtype=dtype, device=x.device)
    mult = mult.reshape(b * n).contiguous()
    if shift_mode != NO_SHIFT:
        shift = shift.reshape(b * n * d).float().contiguous()
    grid = (triton.cdiv(s, _ROWS), b * n)
    _scale_cast_kernel[grid](x, y, mult, shift if shift_mode != NO_SHIFT else mult, s, n, d,
                             x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
                             SHIFT_MODE=int(shift_mode), SATURATE=bool(saturate), BLOCK_S=_ROWS,
                             BLOCK_D=triton.next_power_of_2(d))
    return y


def centered_amax(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``max |x - mean|`` per (sample, head), [B, N] float32, for ``x`` [B, S, N, D] and ``mean`` [B, N, D]
    float32 -- one read of x, no float32 copy."""
    x = _rows_last_contiguous(x)
    b, s, n, d = x.shape
    amax = torch.zeros(b * n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(s, _ROWS), b * n)
    _centered_amax_kernel[grid](x, mean.reshape(b * n * d).contiguous(), amax, s, n, d,
                                x.stride(0), x.stride(1), x.stride(2),
                                BLOCK_S=_ROWS, BLOCK_D=triton.next_power_of_2(d))
    return amax.reshape(b, n)


def quantize_heads(x: torch.Tensor, fp8_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` [B, S, N, D] -> (e4m3 values [B, S, N, D], multiplier ``448 / amax``, descale ``amax /
    448``), the scales [B, N] float32: the ``fp8_tensor`` scheme's quantizer of Q."""
    mult, descale = head_multipliers(x)
    return scale_cast(x, mult, fp8_dtype, saturate=True), mult, descale


def quantize_smoothed(x: torch.Tensor, fp8_dtype: torch.dtype):
    """``x`` [B, S, N, D] -> (e4m3 values of ``x - mean`` [B, S, N, D], descale ``amax / 448`` [B, N],
    mean [B, N, D] float32): the scheme's K and V quantizer (mean over S per (sample, head,
    channel), amax of the smoothed head)."""
    x = _rows_last_contiguous(x)
    mean = torch.mean(x, dim=1, dtype=torch.float32)  # [B, N, D]; reduced in float32, no copy of x
    amax = centered_amax(x, mean).clamp(min=1e-12)
    mult = P_SCALE / amax
    return scale_cast(x, mult, fp8_dtype, saturate=True, shift=mean, shift_mode=SHIFT_IN), amax / P_SCALE, mean


class _CudnnFp8:
    """The cuDNN side: one handle per device, one graph per shape, workspaces per stream."""

    def __init__(self, cudnn):
        self.cudnn = cudnn
        self.handles: Dict[int, object] = {}
        self.graphs: Dict[tuple, tuple] = {}
        self.buffers: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
        self.consts: Dict[int, torch.Tensor] = {}

    def handle(self, device: torch.device):
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in self.handles:
            with torch.cuda.device(idx):
                self.handles[idx] = self.cudnn.create_handle()
        return idx, self.handles[idx]

    def graph(self, idx: int, handle, sq: int, skv: int, n: int, d: int, scale: float):
        key = (idx, sq, skv, n, d, float(scale))
        if key not in self.graphs:
            self.graphs[key] = self._build(handle, sq, skv, n, d, scale)
        return self.graphs[key]

    def _build(self, handle, sq, skv, n, d, scale):
        cudnn = self.cudnn
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)

        def head(name, s):  # one head of a contiguous [B, S, N, D]: dims (b, h, s, d)
            return g.tensor(name=name, dim=(1, 1, s, d), stride=(s * n * d, d, n * d, 1), data_type=e4m3)

        tq, tk, tv = head("q", sq), head("k", skv), head("v", skv)
        one = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
        dq, dk, dv, ds, ss, so = [g.tensor(name=name, **one) for name in ("dq", "dk", "dv", "ds", "ss", "so")]
        o, _, amax_s, amax_o = g.sdpa_fp8(q=tq, k=tk, v=tv, descale_q=dq, descale_k=dk, descale_v=dv, descale_s=ds,
                                          scale_s=ss, scale_o=so, attn_scale=float(scale), use_causal_mask=False,
                                          generate_stats=False)
        o.set_output(True).set_dim((1, 1, sq, d)).set_stride((sq * n * d, d, n * d, 1)).set_data_type(e4m3)
        for a in (amax_s, amax_o):
            a.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        return g, (tq, tk, tv, dq, dk, dv, ds, ss, so, o, amax_s, amax_o), g.get_workspace_size()

    def buffers_for(self, idx: int, stream, size: int):
        """(workspace, scratch for the amax outputs) of this device and stream, grown when needed."""
        key = (idx, stream.cuda_stream)
        ws, scratch = self.buffers.get(key, (None, None))
        if ws is None or ws.numel() < max(size, 1):
            ws = torch.empty(max(size, 1), dtype=torch.uint8, device=torch.device("cuda", idx))
            scratch = scratch if scratch is not None else torch.empty(8, dtype=torch.float32, device=ws.device)
            self.buffers[key] = (ws, scratch)
        return ws, scratch

    def p_scales(self, idx: int) -> torch.Tensor:
        """descale_s = 1/448 at byte 0, scale_s = 448 at byte 16, on the device (P is stored times 448)."""
        if idx not in self.consts:
            self.consts[idx] = torch.tensor([1.0 / P_SCALE, 0, 0, 0, P_SCALE, 0, 0, 0], dtype=torch.float32,
                                            device=torch.device("cuda", idx))
        return self.consts[idx]

    def quantize(self, q, k, v) -> "_Operands":
        """The e4m3 operands (K and V smoothed) and their [B, N] scales; the output's scale is the
        smoothed V's, widened by ``O_HEADROOM``."""
        fp8 = torch.float8_e4m3fn
        q8, _, q_desc = quantize_heads(q, fp8)
        k8, k_desc, _ = quantize_smoothed(k, fp8)  # K's mean: a shift of every score of a row, dropped
        v8, v_desc, v_mean = quantize_smoothed(v, fp8)
        o_mult, o_desc = output_scales(v_desc)
        return _Operands(q8, k8, v8, q_desc, k_desc, v_desc, o_mult, o_desc, v_mean)

    def run(self, ops: "_Operands", scale: float) -> torch.Tensor:
        """cuDNN's FP8 attention once per (sample, head): the e4m3 output [B, S_q, N, D] (of the
        smoothed V), times its head's output multiplier."""
        q8, k8 = ops.q8, ops.k8
        b, sq, n, d = q8.shape
        skv = k8.shape[1]
        o8 = torch.empty((b, sq, n, d), dtype=q8.dtype, device=q8.device)
        idx, handle = self.handle(q8.device)
        graph, (tq, tk, tv, dq, dk, dv, ds, ss, so, to, tas, tao), ws_size = self.graph(idx, handle, sq, skv, n, d, scale)
        stream = torch.cuda.current_stream(q8.device)
        self.cudnn.set_stream(handle=handle, stream=stream.cuda_stream)
        ws, scratch = self.buffers_for(idx, stream, ws_size)
        consts = self.p_scales(idx)
        # the per-head scalars, each on its own 16 bytes (cuDNN's alignment for any operand): rows
        # [q descale, k descale, v descale, output scale] x (sample, head), column 0
        scalars = torch.zeros((4, b * n, 4), dtype=torch.float32, device=q8.device)
        scalars[:, :, 0] = torch.stack([ops.q_desc, ops.k_desc, ops.v_desc, ops.o_mult]).reshape(4, b * n)
        # addresses: a head's place in the [B, S, N, D] e4m3 tensors (1 byte per element; D a multiple
        # of 16 keeps every head 16-byte aligned); cuDNN takes the geometry from the graph
        pq, pk, pv, po = q8.data_ptr(), k8.data_ptr(), ops.v8.data_ptr(), o8.data_ptr()
        s0, bn = scalars.data_ptr(), b * n
        c0, a0 = consts.data_ptr(), scratch.data_ptr()
        fixed = {ds: c0, ss: c0 + 16, tas: a0, tao: a0 + 16}
        for i in range(b):
            for h in range(n):
                j = i * n + h
                pack = dict(fixed)
                pack.update({tq: pq + (i * sq * n + h) * d, tk: pk + (i * skv * n + h) * d,
                             tv: pv + (i * skv * n + h) * d, to: po + (i * sq * n + h) * d,
                             dq: s0 + 16 * j, dk: s0 + 16 * (bn + j), dv: s0 + 16 * (2 * bn + j),
                             so: s0 + 16 * (3 * bn + j)})
                graph.execute(pack, ws, handle=handle)
        return o8

    @staticmethod
    def dequantize(o8: torch.Tensor, ops: "_Operands", dtype: torch.dtype) -> torch.Tensor:
        return scale_cast(o8, ops.o_desc, dtype, saturate=False, shift=ops.v_mean, shift_mode=SHIFT_OUT)

    def attention(self, q, k, v, scale: float) -> torch.Tensor:
        ops = self.quantize(q, k, v)
        return self.dequantize(self.run(ops, scale), ops, q.dtype)


class _Operands(NamedTuple):
    q8: torch.Tensor
    k8: torch.Tensor
    v8: torch.Tensor
    q_desc: torch.Tensor  # [B, N] float32: amax / 448
    k_desc: torch.Tensor
    v_desc: torch.Tensor  # of the smoothed V
    o_mult: torch.Tensor  # [B, N] float32: 448 / (amax(V) * O_HEADROOM), the output's scale
    o_desc: torch.Tensor  # its inverse
    v_mean: torch.Tensor  # [B, N, D] float32: V's mean over the keys, added back to the output


def make_cudnn_fp8_attention():
    """The attention contract through cuDNN's FP8 flash attention (``quant.attention: fp8_tensor``);
    imports the cuDNN frontend (``pip install nvidia-cudnn-frontend``) here, at load."""
    if not hasattr(torch, "float8_e4m3fn"):
        raise RuntimeError("torch %s has no float8_e4m3fn" % torch.__version__)
    import cudnn

    state = _CudnnFp8(cudnn)

    def core(q, k, v, scale, return_lse):
        if return_lse:
            raise ValueError("cuda.fp8_cudnn (quant.attention: fp8_tensor) has no log-sum-exp; ring attention "
                             "needs one: use quant.attention: fp8 or parallel.ring: 1")
        d = q.shape[-1]
        if d % 16 or d > 128:
            raise ValueError("cuda.fp8_cudnn takes head dims that are multiples of 16 up to 128, not %d" % d)
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError("cuda.fp8_cudnn takes float16/bfloat16 q, k, v, not %s" % q.dtype)
        return state.attention(q, k, v, scale)

    def attention(q, k, v, *, scale: float, kv_lens: Optional[Sequence[int]] = None, return_lse: bool = False):
        return per_sample_keys(core, q, k, v, scale, kv_lens, return_lse)

    attention.__name__ = "fp8_cudnn"
    attention.parts = state  # quantize / run / dequantize, for benchmarks/fp8_cudnn_attention_check.py
    return attention


__all__ = ["NO_SHIFT", "SHIFT_IN", "SHIFT_OUT", "centered_amax", "make_cudnn_fp8_attention", "quantize_heads",
           "quantize_smoothed", "scale_cast"]
