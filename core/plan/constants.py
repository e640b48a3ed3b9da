"""The constants of the memory and step-time model, in one place (docs/plan.md).

Everything here is an estimate that the GPU measurements calibrate: the byte counts of weights
are exact (counted on the meta device), the activation and VAE terms follow the code's tensor
lifetimes, and the factors below absorb what a formula cannot see (allocator rounding, kernel
workspaces, temporaries of a backend's kernels). Each constant says what it stands for and
whether it is calibrated yet.
"""

from __future__ import annotations

GIB = float(2 ** 30)

#: Share of the predicted allocated peak added for the caching allocator's block rounding and
#: fragmentation (what ``mem_get_info`` sees above ``max_memory_allocated``). TO CALIBRATE.
ALLOCATOR_SLACK = 0.10

#: Device memory the runtime takes before the first tensor: driver/runtime context, math
#: library and communication workspaces. Subtracted from the device's total. TO CALIBRATE.
RUNTIME_RESERVE_BYTES = int(1.0 * GIB)

#: Host memory of one wanport process before any model: the Python interpreter, torch and the
#: vendor libraries. TO CALIBRATE (per backend).
HOST_BASE_BYTES = int(1.0 * GIB)

#: Intermediates of shape [S, ffn_dim] alive in the FFN up-projection: 1 for a GEMM with a GELU
#: epilogue (the accelerator backends), 2 when the GELU is a separate op (the reference backend).
FFN_INTERMEDIATES = 1

#: VAE: live activations at the widest layer of a chunk, in units of that layer's input
#: (input, normalised copy, SiLU output, the conv's input with its two cached frames in front,
#: the conv output). Fitted with VAE_CACHE_FACTOR below: 5.09.
VAE_WORK_FACTOR = 5.0

#: VAE: the causal convs' frame cache at its peak, in units of the cache after a chunk. Each conv
#: builds its new cache entry (the last frames of its input) while the previous one is still
#: referenced, so part of the cache exists twice during a chunk. Calibrated: fitting
#: ``work * VAE_WORK_FACTOR + cache * VAE_CACHE_FACTOR + video`` to the three H200 decodes of
#: benchmarks/results/2026-11-30-h200-plan-calibration.json (Wan2.1 VAE at 480p and 720p: the
#: two share one cache/work ratio, so they fix one equation; the Wan2.2 VAE at 704p the other)
#: gives 5.09 and 1.56; with the work factor kept at 5.0 and 1.57 here every decode is predicted
#: within 1 % (1.002, 1.001, 1.005 measured/predicted, against 1.30, 1.30, 1.22 before).
VAE_CACHE_FACTOR = 1.57

#: VAE_WORK_FACTOR when the backend fuses the norm + SiLU (its own ``channel_rms_norm``: no
#: normalised copy and no separate SiLU output) and runs the convs channels-last. Calibrated on the
#: H200 pipeline peaks of benchmarks/results/2026-11-30-h200-r2-offload.json (cuda, Triton norm),
#: with the cache factor kept at 1.57: the Wan2.1 VAE at 720p (17.71 GiB measured) asks 3.15, the
#: Wan2.2 VAE at 1280x704 (17.70 GiB) 3.06; with 3.1 those are predicted at 0.997 and 1.005 of the
#: measurement and the 480p resident decodes 1.4 % high. With 5.0 the plan said 20.16 and 21.04
#: GiB for the first two (14 % and 19 % above the measurement).
VAE_WORK_FACTOR_FUSED = 3.1

#: Text encoder / CLIP activations: live hidden-state copies of one layer (residual, normalised,
#: q/k/v, attention output) besides the FFN intermediates and the attention scores.
ENCODER_HIDDEN_COPIES = 6

#: Wan T5 attention (``models/t5/attention.py``): [heads, L, L] tensors alive at the float32
#: softmax besides its float32 input and output, in the compute dtype: the relative position bias
#: (computed once, kept for every layer), the bias with the key mask, the scores. Calibrated: with
#: 3 the 512-token encode is predicted at 291.6 MB against 293.6 MB measured (1.007; the earlier
#: count, float32 scores only, said 190.8 MB: 1.54).
T5_SCORE_COPIES = 3

# ----------------------------------------------------------------------- step-time model
#: Nominal dense throughput of one device (FLOP/s) for predicted step times; only the ORDER of
#: the suggested layouts depends on it being right relative to the bandwidths below. TO CALIBRATE.
NOMINAL_FLOPS = 400e12

#: Parallel efficiency per layout knob (the share of ideal speed-up kept): CFG parallel splits two
#: independent forwards (one all-gather of the prediction per step); Ulysses costs four all-to-alls
#: per block; ring overlaps K/V passing with compute but merges partials in float32; FSDP gathers
#: each block's weights once per forward. TO CALIBRATE with `wanport bench scaling`.
EFFICIENCY = {"cfg": 0.98, "ulysses": 0.92, "ring": 0.85, "dit_fsdp": 0.95}

#: Host<->device copy bandwidth (bytes/s) from page-locked memory: parking an expert, streaming
#: DiT blocks (``offload.dit: block``), moving a host-kept model in. TO CALIBRATE
#: (benchmarks/plan_calibrate.py --offload measures it).
HOST_DEVICE_BANDWIDTH = 20e9

#: Per block and forward, the host-side cost of streaming it (the hooks, one event wait), in seconds.
BLOCK_STREAM_OVERHEAD_S = 2e-4

#: Host throughput (FLOP/s) of the text encoder on the CPU (``parallel.t5_cpu``). TO CALIBRATE.
HOST_FLOPS = 1e12
