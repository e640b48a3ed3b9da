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
#: the conv output). TO CALIBRATE against a GPU decode.
VAE_WORK_FACTOR = 5.0

#: Text encoder / CLIP activations: live hidden-state copies of one layer (residual, normalised,
#: q/k/v, attention output) besides the FFN intermediates and the attention scores. TO CALIBRATE.
ENCODER_HIDDEN_COPIES = 6

# ----------------------------------------------------------------------- step-time model
#: Nominal dense throughput of one device (FLOP/s) for predicted step times; only the ORDER of
#: the suggested layouts depends on it being right relative to the bandwidths below. TO CALIBRATE.
NOMINAL_FLOPS = 400e12

#: Parallel efficiency per layout knob (the share of ideal speed-up kept): CFG parallel splits two
#: independent forwards (one all-gather of the prediction per step); Ulysses costs four all-to-alls
#: per block; ring overlaps K/V passing with compute but merges partials in float32; FSDP gathers
#: each block's weights once per forward. TO CALIBRATE with `wanport bench scaling`.
EFFICIENCY = {"cfg": 0.98, "ulysses": 0.92, "ring": 0.85, "dit_fsdp": 0.95}

#: Host<->device copy bandwidth (bytes/s) for parking an expert (pinned memory). TO CALIBRATE.
HOST_DEVICE_BANDWIDTH = 20e9

#: Host throughput (FLOP/s) of the text encoder on the CPU (``parallel.t5_cpu``). TO CALIBRATE.
HOST_FLOPS = 1e12
