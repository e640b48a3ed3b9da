# The GPU jobs of the benchmark sessions, one function each (sourced by queue.sh; $R is the results
# folder). Each writes STEM.json/STEM.md under $R. Times are rough H200 figures.
W="python3 -m wanport"
SIZE480="sample.size=832*480 sample.frame_num=81"

job_offload() {  # issue 15: block offload step time under a 24 GiB cap, plan vs measured peaks (~8 min)
  timeout 900 python3 benchmarks/offload_bench.py --out "$R/offload" --quant '{dit: fp8_rowwise}'
}
job_cache14() {  # issue 14: 14B 480p x 81, 50 steps: exact, TeaCache 0.2, the published skip counts (~16 min)
  timeout 1500 $W bench pipeline recipes/wan2.1-t2v-14b.yaml --weights random --steps 50 --warmup-steps 1 \
    --cache method=teacache,threshold=0.2 --cache published $SIZE480 backend=cuda --no-progress --out "$R/cache14"
}
job_vae21() {  # issue 16: Wan2.1 VAE 480p x 81 decode/encode variants with the fused channel RMS norm (~2 min)
  timeout 400 python3 benchmarks/vae_profile.py --vae wan2.1 --size 832*480 --frames 81 --encode \
    --profile fp32+cl+fused --variants fp32 fp32+cl fp32+cl+fused bf16+cl bf16+cl+fused --out "$R/vae21-fused.json"
}
job_vae22() {  # issue 16: Wan2.2 VAE 1280x704 x 121 decode variants (~3 min)
  timeout 500 python3 benchmarks/vae_profile.py --vae wan2.2 --size 1280*704 --frames 121 \
    --variants fp32 fp32+cl fp32+cl+fused bf16+cl+fused --out "$R/vae22-fused.json"
}
job_fa4check() {  # flash-attn-4 importable and chosen
  python3 -c "from flash_attn.cute import flash_attn_func; print('flash-attn-4 ok')" && $W backends
}
job_dit14fa4() {  # issue 16: 14B forward, flash-attn-4, beside diffusers (~3 min)
  timeout 400 $W bench dit --model wan2.1-t2v-14b --size 832*480 --frames 81 --backend cuda --peer diffusers \
    --repeats 5 --out "$R/dit14-fa4"
}
job_dit13fa4() {  # issue 16: 1.3B forward, flash-attn-4, beside diffusers (~1 min)
  timeout 300 $W bench dit --model wan2.1-t2v-1.3b --size 832*480 --frames 81 --backend cuda --peer diffusers \
    --repeats 5 --out "$R/dit13-fa4"
}
job_dit14compile() {  # issue 16: torch.compile re-measured with flash-attn-4 (~3 min)
  timeout 420 $W bench dit --model wan2.1-t2v-14b --size 832*480 --frames 81 --backend cuda --compile \
    --repeats 3 --out "$R/dit14-fa4-compile"
}
job_dit14fp8() {  # issue 13: FP8 linears with flash-attn-4 (~2 min)
  timeout 400 $W bench dit --model wan2.1-t2v-14b --size 832*480 --frames 81 --backend cuda --quant fp8_rowwise \
    --repeats 3 --out "$R/dit14-fp8-fa4"
}
job_distill4fp8() {  # issue 13: 4 steps, no CFG, FP8 linears, bf16 VAE: end-to-end compute (~2 min)
  timeout 400 $W bench pipeline recipes/wan2.1-t2v-14b-distill.yaml --weights random backend=cuda \
    quant.dit=fp8_rowwise precision.vae=bf16 --no-progress --out "$R/distill14-fp8"
}
job_profile14() {  # issue 16: where the 14B forward's time goes with flash-attn-4 (8 blocks, ~1 min)
  timeout 300 python3 benchmarks/profile_dit.py --model wan2.1-t2v-14b --layers 8 --out "$R/profile14-fa4.json"
}
job_pipe14() {  # issue 16: 14B 480p pipeline stage split after (flash-attn-4, fused VAE norm, channels-last) (~1.5 min)
  timeout 400 $W bench pipeline recipes/wan2.1-t2v-14b.yaml --weights random --steps 2 $SIZE480 backend=cuda \
    --no-progress --out "$R/pipe14-480p"
}
job_pipe14before() {  # the same with cuDNN attention and the plain-PyTorch VAE norm (~1.5 min)
  timeout 400 $W bench pipeline recipes/wan2.1-t2v-14b.yaml --weights random --steps 2 $SIZE480 backend=cuda \
    ops.attention=sdpa_cudnn ops.channel_rms_norm=composed --no-progress --out "$R/pipe14-480p-before"
}
job_pipe5b() {  # issue 16: TI2V-5B 1280x704 x 121 stage split, after (~2 min)
  timeout 500 $W bench pipeline recipes/wan2.2-ti2v-5b.yaml --weights random --steps 2 backend=cuda \
    --no-progress --out "$R/pipe5b"
}
job_opsq() {  # issues 13/16: quantized Linears and every attention implementation at the 14B 480p shapes (~3 min)
  timeout 500 $W bench ops --backend cuda --models wan2.1-t2v-14b --sizes 480p --kinds quant_linear attention \
    --out "$R/ops-quant-attn"
}

# ---- two GPUs (queue GPUS=0,1)
TR="timeout 600 python3 -m torch.distributed.run --standalone --nproc_per_node 2"
job_scaling480() {  # issue 16: 14B 480p, CFG-parallel and Ulysses on 2 GPUs against one (~3 min)
  $TR -m wanport bench scaling --model wan2.1-t2v-14b --backend cuda --layouts u2 cfg2 --ulysses-overlap both \
    --warmup 1 --repeats 3 --out "$R/scaling14-480p"
}
job_scaling720() {  # issue 16: the same at 720p (~5 min)
  $TR -m wanport bench scaling --model wan2.1-t2v-14b --size 1280*720 --backend cuda --layouts cfg2 u2 \
    --out "$R/scaling14-720p"
}
job_plan2gpu() {  # issue 15: the memory plan against measured per-rank peaks under cfg2 and u2 (1 step each, ~3 min)
  for layout in "parallel.ulysses=2"; do
    $TR -m wanport bench pipeline recipes/wan2.1-t2v-14b.yaml --weights random --steps 1 --warmup-steps 0 \
      $SIZE480 backend=cuda $layout --no-progress --out "$R/plan2gpu-${layout#parallel.}"
  done
}
job_vaepar21() {  # issue 16: Wan2.1 VAE decode 480p x 81 split over 2 GPUs vs one, before/after (~1.5 min)
  timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/vae_parallel.py \
    --vae wan2.1 --size 832*480 --frames 81 --previous --out "$R/vae-par21.json"
}
job_fp8attn() {  # issue 13: the FP8 attention kernel: conformance, vs its emulation, Wan shapes vs bf16 cuDNN (~2.5 min)
  timeout 300 python3 benchmarks/fp8_attention_check.py --out "$R/fp8-attention"
}
job_dit14fp8all() {  # issue 13: FP8 Linears + FP8 self-attention beside the exact forward (~2 min)
  timeout 400 $W bench dit --model wan2.1-t2v-14b --size 832*480 --frames 81 --backend cuda \
    --quant fp8_rowwise+fp8_attention --repeats 3 --out "$R/dit14-fp8all"
}
job_distill4fp8all() {  # issue 13: 4 steps, no CFG, FP8 Linears and attention, bf16 VAE: end-to-end compute (~2 min)
  timeout 400 $W bench pipeline recipes/wan2.1-t2v-14b-distill.yaml --weights random backend=cuda \
    quant.dit=fp8_rowwise quant.attention=fp8 precision.vae=bf16 --no-progress --out "$R/distill14-fp8all"
}

# ---- session 2026-11-30 (fourth)
job_profile14full() {  # issue 16: all 40 blocks: kernel time vs the forward's wall time (idle gaps) (~2 min)
  timeout 400 python3 benchmarks/profile_dit.py --model wan2.1-t2v-14b --out "$R/profile14-full.json"
}
job_cudnnfp8() {  # issue 13: cuDNN FP8 attention (cudnn-frontend, carried in .whl2) at Wan shapes (~2 min)
  timeout 400 python3 benchmarks/cudnn_fp8_probe.py --out "$R/cudnn-fp8-probe.json"
}
job_gputests() {  # the CUDA backend's GPU tests (kernels vs the reference, the conformance kit) (~2 min)
  timeout 500 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_cuda_backend.py 2>&1 | tail -40
}
job_fa4tiles() {  # issue 16: flash-attn-4 Hopper tile shapes at Wan shapes (~3 min, JIT compiles)
  timeout 500 python3 benchmarks/fa4_tiles_probe.py --out "$R/fa4-tiles.json"
}
job_vae22prof() {  # issue 16: where the Wan2.2 VAE decode's time goes, bf16 + channels-last + fused norm (~2 min)
  timeout 400 python3 benchmarks/vae_profile.py --vae wan2.2 --size 1280*704 --frames 121 \
    --profile bf16+cl+fused --variants bf16+cl+fused --out "$R/vae22-prof.json"
}
job_fp8cudnn() {  # issue 13: cuda.fp8_cudnn (quant.attention: fp8_tensor) checked and timed at Wan shapes (~3 min)
  timeout 400 python3 benchmarks/fp8_cudnn_attention_check.py --out "$R/fp8-cudnn"
}
job_dit14fp8t() {  # issue 13: FP8 Linears + cuDNN FP8 attention, 14B forward (~2 min)
  timeout 400 $W bench dit --model wan2.1-t2v-14b --size 832*480 --frames 81 --backend cuda \
    --quant fp8_rowwise+fp8_tensor_attention --repeats 3 --out "$R/dit14-fp8tensor"
}
job_distill4fp8t() {  # issue 13: 4 steps, FP8 Linears + cuDNN FP8 attention, bf16 VAE (~2 min)
  timeout 400 $W bench pipeline recipes/wan2.1-t2v-14b-distill.yaml --weights random backend=cuda \
    quant.dit=fp8_rowwise quant.attention=fp8_tensor precision.vae=bf16 --no-progress --out "$R/distill14-fp8tensor"
}
job_fp8bias() {  # issue 13: is cuda.fp8_cudnn's error noise or bias? slope vs float64 per kernel and emulation (~1 min)
  timeout 300 python3 benchmarks/fp8_attention_bias_probe.py --out "$R/fp8-bias.json"
}

# ---- session 2026-11-30 (fifth)
job_gputests2() {  # the CUDA backend's GPU tests and the fp8_tensor tests (Triton interpreter included) (~3 min)
  timeout 500 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_cuda_backend.py \
    tests/test_fp8_tensor_attention.py 2>&1 | tail -40
}
job_dit14fp8temu() {  # issue 13: FP8 Linears + fp8_tensor's float32 EMULATION in the 14B forward (kernel vs scheme) (~3 min)
  timeout 500 $W bench dit --model wan2.1-t2v-14b --size 832*480 --frames 81 --backend cuda --warmup 0 --repeats 1 \
    --quant fp8_rowwise+fp8_tensor_attention --quant-ops attention=reference.emulate_fp8_tensor --out "$R/dit14-fp8tensor-emu"
}
job_fp8temuif() {  # the emulation run above, only when the kernel's 14B cosine is under 0.995 (needs dit14fp8t first)
  c=$(python3 -c "import json; print(json.load(open('$R/dit14-fp8tensor.json'))['quant']['cosine_vs_exact'])" 2>/dev/null)
  echo "dit14fp8t cosine: ${c:-missing}"
  python3 -c "import sys; sys.exit(0 if float('${c:-0}') < 0.995 else 1)" && job_dit14fp8temu
}
job_u2ctas() {  # issue 16: u2 480p with NCCL held to fewer CTAs (SMs) while its all-to-alls overlap compute (~6 min)
  python3 -c "import torch; print('nccl', torch.cuda.nccl.version())"
  for setting in default NCCL_MAX_CTAS=16,NCCL_MAX_P2P_NCHANNELS=16 NCCL_MAX_CTAS=8,NCCL_MAX_P2P_NCHANNELS=8 \
      NCCL_MAX_CTAS=4,NCCL_MAX_P2P_NCHANNELS=4 NCCL_CTA_POLICY=1 NCCL_CTA_POLICY=2; do
    vars=${setting//,/ }; [ "$setting" = default ] && vars=
    tag=${setting%%,*}; tag=${tag//=/}
    echo "== $setting"
    env $vars $TR -m wanport bench scaling --model wan2.1-t2v-14b --backend cuda \
      --layouts u2 --warmup 1 --repeats 2 --out "$R/scaling14-480p-u2-$tag"
  done
}
job_vae22direct() {  # issue 16: Wan2.2 VAE decode 1280x704 x 121, bf16 + channels-last + fused norm, layout moves before/after (~3 min)
  timeout 500 python3 benchmarks/vae_profile.py --vae wan2.2 --size 1280*704 --frames 121 \
    --variants bf16+cl+fused+prev bf16+cl+fused --profile bf16+cl+fused --out "$R/vae22-direct.json"
}
job_vae21direct() {  # issue 16: Wan2.1 VAE decode 480p x 81 the same way, fp32 and bf16 (~2 min)
  timeout 400 python3 benchmarks/vae_profile.py --vae wan2.1 --size 832*480 --frames 81 \
    --variants fp32+cl+fused+prev fp32+cl+fused bf16+cl+fused+prev bf16+cl+fused --out "$R/vae21-direct.json"
}
job_gputests3() {  # GPU tests: the cuda backend, fp8_tensor, the VAE ops (~3 min)
  timeout 500 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_cuda_backend.py \
    tests/test_fp8_tensor_attention.py tests/test_vae_ops.py 2>&1 | tail -15
}
job_u2exchange() {  # issue 16: u2 480p: blocking, overlapped collective, overlapped copy engine (bits checked) (~3 min)
  $TR -m wanport bench scaling --model wan2.1-t2v-14b --backend cuda --layouts u2 --ulysses-overlap both \
    --ulysses-exchange both --warmup 1 --repeats 3 --out "$R/scaling14-480p-exchange"
}
job_scaling720x() {  # issue 16: 720p: cfg2 and u2 (both exchanges) against one GPU (~5 min)
  $TR -m wanport bench scaling --model wan2.1-t2v-14b --size 1280*720 --backend cuda --layouts cfg2 u2 \
    --ulysses-exchange both --warmup 1 --repeats 2 --out "$R/scaling14-720p"
}
job_vaepar22() {  # issue 16: Wan2.2 VAE decode 1280x704 x 121 split over 2 GPUs vs one (fp32) (~3 min)
  timeout 400 python3 -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/vae_parallel.py \
    --vae wan2.2 --size 1280*704 --frames 121 --repeats 2 --out "$R/vae-par22.json"
}
job_parvideo() {  # issue 16: the tiny checkpoint's video under cfg2 / u2 (both exchanges, blocking) / VAE split vs one GPU (~2 min)
  python3 -m wanport make-tiny /tmp/tinypv --if-missing >/dev/null
  timeout 300 python3 benchmarks/parallel_video_check.py --ckpt /tmp/tinypv --single --out "$R/parallel-video" \
    && $TR benchmarks/parallel_video_check.py --ckpt /tmp/tinypv --out "$R/parallel-video"
}
job_accuracyfa4() {  # issue 16: the DiT output with flash-attn-4 (the cuda op table) vs every op on its reference (~2 min)
  timeout 300 python3 benchmarks/accuracy_dit.py --model wan2.1-t2v-1.3b --out "$R/accuracy-1.3b-fa4.json"
  timeout 400 python3 benchmarks/accuracy_dit.py --model wan2.1-t2v-14b --out "$R/accuracy-14b-fa4.json"
}

# ---- session 2026-11-30 (sixth)
job_blockprobe() {  # issue 16: the 14B block's kernels alone vs in the block's order, SM clock and power (~2 min)
  timeout 300 python3 benchmarks/block_context_probe.py --out "$R/block-context.json"
}
job_profu2() {  # issue 16: kernel profile of one u2 forward per rank vs the one-GPU forward (both exchanges, ~4 min)
  for ex in collective copy_engine; do
    timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/profile_ulysses.py --exchange $ex --out "$R/profile-u2-$ex.json"
  done
}
job_profu2b() {  # issue 16: the u2 profile again after the 8-byte-word layout moves, then the u2 step (~5 min)
  timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/profile_ulysses.py \
    --exchange copy_engine --out "$R/profile-u2-copy_engine-words.json"
  timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/profile_ulysses.py \
    --exchange collective --out "$R/profile-u2-collective-words.json"
  $TR -m wanport bench scaling --model wan2.1-t2v-14b --backend cuda --layouts u2 --ulysses-overlap both \
    --ulysses-exchange both --warmup 1 --repeats 3 --out "$R/scaling14-480p-words"
}
job_scaling720w() {  # issue 16: 720p u2 (both exchanges) after the 8-byte-word layout moves, vs one GPU (~5 min)
  $TR -m wanport bench scaling --model wan2.1-t2v-14b --size 1280*720 --backend cuda --layouts u2 \
    --ulysses-exchange both --warmup 1 --repeats 2 --out "$R/scaling14-720p-words"
}
job_qkrows() {  # issue 16: the q/k norm + RoPE kernel with 1/2/4/8 rows per program at Wan shapes (~1 min)
  timeout 300 python3 benchmarks/qk_norm_rope_rows_probe.py --out "$R/qk-rows.json"
}
job_tinyfp8debug() {  # why the tiny fp8_tensor pipeline test fails under pytest on the device (full output)
  PYTHONPATH=$PYTHONPATH python3 -c "import ftfy, sys; print('ftfy', ftfy.__file__)"
  timeout 300 python3 -m pytest -x -q -o addopts="" -p no:cacheprovider tests/test_fp8_tensor_attention.py \
    -k tiny_pipeline 2>&1 | grep -v "^\s*$" | tail -60
}
job_chunks() {  # issue 16: u2 480p forward by head-chunk count (1, 2, 4, 5, 10) and exchange (~3 min)
  timeout 500 python3 -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/ulysses_chunks_probe.py \
    --out "$R/u2-chunks.json"
}
