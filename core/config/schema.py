"""The recipe as dataclasses, and the embedded tiny default recipe.

Every field carries its type and help text in ``metadata``; :mod:`wanport.config.loader`
builds and validates instances from YAML + command-line overrides before anything loads.
Sampling fields left null take the model preset's official defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..cache.config import CacheConfig
from ..recipe_fields import _f

REQUIRED = "<required>"

#: The main job when no recipe is given; ``recipes/tiny-t2v.yaml`` holds the same (a test checks).
TINY_RECIPE = {
    "model": "wan2.1-t2v-tiny",
    "checkpoint_dir": "ckpts/tiny-wan2.1-t2v",
    "task": "t2v",
    "prompt": "A red panda rides a skateboard through a rainy neon city at night, cinematic lighting",
    "negative_prompt": "",
    "sample": {"size": "256*256", "frame_num": 17, "steps": 8, "shift": 5.0, "guide_scale": 5.0,
               "solver": "unipc", "seed": 42, "noise": "cpu"},
    "backend": "reference",
    "ops": {},
    "precision": "auto",
    "output": {"dir": "out", "name": "tiny-t2v"},
}


@dataclass
class SampleConfig:
    size: Optional[str] = _f(None, type="size?",
                               help="W*H (or WxH) in pixels, multiple of VAE stride x patch (model default when null)")
    frame_num: Optional[int] = _f(None, type="int?", help="frames, 4n+1 (model default when null)")
    steps: Optional[int] = _f(None, type="int?", help="denoising steps (model default when null)")
    shift: Optional[float] = _f(None, type="float?", help="flow shift of the sigma schedule (model default when null)")
    guide_scale: Optional[Any] = _f(None, type="guide?",
                                    help="classifier-free guidance scale; 1.0 skips the unconditional pass; two-expert "
                                         "models: one number for both or [low_noise, high_noise] (official order)")
    boundary: Optional[float] = _f(None, type="float?",
                                   help="two-expert models: switch to the low-noise expert below boundary*1000 "
                                        "(model default when null: 0.875 t2v, 0.900 i2v)")
    solver: str = _f("unipc", type="str",
                     help="unipc (official default), euler, or distill (the sampler of the step-distilled models: "
                          "sample.denoising_step_list, no re-noising; use guide_scale 1.0)",
                     choices=("unipc", "euler", "distill"))
    denoising_step_list: Optional[List[int]] = _f(None, type="int_list?",
                                                  help="distill only: the training timesteps the distilled model "
                                                       "was trained for, e.g. [1000, 750, 500, 250]")
    timesteps: Optional[List[int]] = _f(None, type="int_list?",
                                        help="euler only: explicit decreasing timesteps in (0, 1000]")
    seed: int = _f(42, type="int", help="seed of the initial noise")
    noise: str = _f("cpu", type="str", choices=("cpu", "device"),
                    help="cpu: drawn on the host from the seed, same video on every backend; "
                         "device: drawn on the compute device as the official code does")


@dataclass
class OffloadConfig:
    park_inactive_expert: Any = _f("auto", type="auto_bool",
                                   help="two-expert models: keep only the active expert on the device, the other "
                                        "parked in host memory (auto: when both do not fit in free device memory)")
    dit: str = _f("none", type="str", choices=("none", "model", "block"),
                  help="none: the DiT on the device; model: in host memory, on the device only while denoising; "
                       "block: blocks in host memory, streamed through the device one at a time (docs/plan.md)")
    prefetch: int = _f(1, type="int", help="dit: block -- blocks copied ahead of the running one (0..8)")
    text_encoder: str = _f("device", type="str", choices=("device", "host"),
                           help="where the T5 runs: device, or host (like the official --t5_cpu)")
    vae: str = _f("device", type="str", choices=("device", "host_until_decode"),
                  help="device, or host_until_decode: VAE weights in host memory until the decode "
                       "(and an image task's encode) needs them")


@dataclass
class ParallelConfig:
    cfg: int = _f(1, type="int", help="1, or 2: the conditional and unconditional branches on two rank groups",
                  choices=(1, 2))
    ulysses: int = _f(1, type="int", help="Ulysses sequence-parallel degree (all-to-all; divides the head count)")
    ring: int = _f(1, type="int", help="ring-attention sequence-parallel degree (K/V passed around, LSE merge)")
    ulysses_overlap: bool = _f(True, type="bool",
                               help="Ulysses all-to-alls asynchronous, overlapped with the v projection and "
                                    "the attention of other head chunks (bit-identical); false: one blocking "
                                    "all-to-all each for q, k, v and the output")
    ulysses_exchange: str = _f("collective", type="str", choices=("collective", "copy_engine"),
                               help="how the overlapped Ulysses all-to-alls move: collective (torch.distributed, the "
                                    "collective library's kernels on SMs) or copy_engine (the backend's copy engines, "
                                    "leaving the SMs to compute; cuda: peer-mapped symmetric memory); bit-identical")
    vae: bool = _f(False, type="bool", help="split the VAE decode/encode spatially across all ranks (exact, halo exchange)")
    dit_fsdp: bool = _f(False, type="bool", help="shard the DiT weights across ranks (FSDP, per block)")
    t5_fsdp: bool = _f(False, type="bool", help="shard the T5 weights across ranks (FSDP)")
    t5_cpu: bool = _f(False, type="bool", help="keep the text encoder on the CPU")
    timeout_s: int = _f(600, type="int",
                        help="bound on every collective: a rank that fails makes all ranks exit within it")


@dataclass
class QuantConfig:
    dit: str = _f("none", type="str", choices=("none", "fp8_rowwise", "fp8_tensor", "int8_w8a8", "int8_w8a16"),
                  help="quantize the DiT blocks' Linears (lossy, opt-in; docs/quantization.md): fp8_rowwise "
                       "(FP8 e4m3, per-channel weight / per-token activation scales), fp8_tensor (one scale per "
                       "tensor), int8_w8a8 (INT8 per-channel / per-token), int8_w8a16 (INT8 weights only), none")
    attention: str = _f("none", type="str", choices=("none", "fp8", "fp8_tensor"),
                        help="FP8 self-attention (lossy; docs/quantization.md): fp8 (Q/K per 128-row block, V per "
                             "channel, with LSE; cuda sm90+ Triton), fp8_tensor (Q/K/V/O per (sample, head), no LSE "
                             "so no ring attention; cuda sm90+ cuDNN), or none; the reference backend emulates both")
    keep: List[str] = _f(type="str_list", factory=lambda: ["patch_embedding", "text_embedding", "time_embedding",
                                                           "time_projection", "head", "img_emb"],
                         help="DiT modules whose Linears stay in the precision policy's dtype: module paths "
                              "(official key prefixes, e.g. blocks.0 or blocks.39.ffn) or fnmatch patterns "
                              "(blocks.*.cross_attn.k); each must name a module of the model")


@dataclass
class OutputConfig:
    dir: str = _f("out", type="str", help="output folder (created if missing)")
    name: Optional[str] = _f(None, type="str?", help="file stem; default <model>_<task>_seed<seed>")
    fps: Optional[int] = _f(None, type="int?", help="frames per second of the mp4 (model default when null)")


@dataclass
class RunConfig:
    model: str = _f(REQUIRED, type="str", help="model preset (see `wanport models`)")
    checkpoint_dir: str = _f(REQUIRED, type="str",
                             help="official checkpoint folder (relative paths: from the working directory)")
    task: str = _f("t2v", type="str", help="t2v | i2v | ti2v (must match the model)", choices=("t2v", "i2v", "ti2v"))
    prompt: str = _f(REQUIRED, type="str", help="text prompt")
    image: Optional[str] = _f(None, type="str?",
                              help="input image, a local file (i2v: required; ti2v: image-to-video when set)")
    negative_prompt: str = _f("", type="str", help="negative prompt; empty: the official default")
    sample: SampleConfig = _f(type="section", help="sampling", factory=SampleConfig)
    backend: str = _f("auto", type="str", help="auto | reference | cuda | ascend | <plugin>")
    ops: Dict[str, str] = _f(type="str_map", help="per-op overrides, e.g. {attention: reference.math}", factory=dict)
    precision: Any = _f("auto", type="precision",
                        help="auto (official where the device has native bf16 matmuls, else fp32) | official | "
                             "bf16 | fp32, or {preset: ..., <part>: dtype}")
    compile: bool = _f(False, type="bool",
                       help="torch.compile each DiT block (in place); measure with `wanport bench dit --compile` "
                            "against the backend's kernels before turning it on")
    env: Dict[str, str] = _f(type="str_map", help="environment for the backend runtime (wins over plugin defaults)",
                             factory=dict)
    offload: OffloadConfig = _f(type="section", help="device memory policy", factory=OffloadConfig)
    memory_check: bool = _f(True, type="bool",
                            help="refuse to start when the memory plan (`wanport plan`) predicts the recipe does "
                                 "not fit the device; `wanport run --force` sets false")
    parallel: ParallelConfig = _f(type="section", help="multi-device layout (world = cfg x ulysses x ring)",
                                  factory=ParallelConfig)
    output: OutputConfig = _f(type="section", help="where the video and report go", factory=OutputConfig)
    lora: List[Any] = _f(type="lora_list", factory=list,
                         help="LoRA adapters applied in order: [{path, strength: 1.0, expert: high|low|both "
                              "(two-expert models), merge: true}] (merge false: an unmerged side path)")
    quant: QuantConfig = _f(type="section", help="quantized DiT Linears (opt-in, lossy; docs/quantization.md)",
                            factory=QuantConfig)
    cache: CacheConfig = _f(type="section", factory=CacheConfig,
                            help="feature caching across steps (lossy, opt-in; docs/caching.md): "
                                 "{method: none | teacache | magcache | first_block, threshold, ...}")
    lora_strict: bool = _f(True, type="bool",
                           help="a LoRA key that matches no layer is an error (false: a warning, listed in the report)")
