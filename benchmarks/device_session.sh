#!/usr/bin/env bash
# One batched session on a lent GPU (see the device tool): install carried wheels, run the test
# suite there, the tiny pipeline on the cuda backend, and `wanport bench dit` beside diffusers.
# Usage (from the repo root on the device): bash benchmarks/device_session.sh [what ...]
#   what: tests tiny ops bench13 bench14 (default), gputests ops2 profile14 pipe13 pipe14 pipe5b
set -uo pipefail
OUT=${OUT:-/tmp/wanport-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
export PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
day=$(date -u +%Y-%m-%d)
what=${*:-tests tiny ops bench13 bench14}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
for w in $what; do
  case $w in
    tests) python3 -m pytest -q tests 2>&1 | tail -25 | tee "$OUT/tests.txt" ;;
    gputests) python3 -m pytest -q -rs tests/test_cuda_backend.py 2>&1 | tail -25 | tee "$OUT/gputests.txt" ;;
    ops)
      python3 -m wanport bench ops --backend cuda --out "$OUT/$day-$gpu-ops.json" > "$OUT/ops.md" 2>&1
      tail -60 "$OUT/ops.md" ;;
    tiny)
      python3 -m wanport make-tiny /tmp/tiny --model wan2.1-t2v --if-missing
      python3 -m wanport run recipes/tiny-t2v.yaml --no-progress checkpoint_dir=/tmp/tiny backend=cuda \
        output.dir="$OUT" output.name=tiny-cuda 2>&1 | tail -5 ;;
    ops2)
      python3 -m wanport bench ops --backend cuda --kinds linear_gelu gated_residual qk_norm_rope \
        --out "$OUT/$day-$gpu-ops2.json" > "$OUT/ops2.md" 2>&1
      tail -40 "$OUT/ops2.md" ;;
    pipe13|pipe14|pipe5b)  # the real pipeline with real-size random weights (no checkpoint on the device)
      case $w in
        pipe13) recipe=recipes/wan2.1-t2v-1.3b.yaml; extra="sample.size=832*480" ;;
        pipe14) recipe=recipes/wan2.1-t2v-14b.yaml; extra="sample.size=832*480" ;;
        pipe5b) recipe=recipes/wan2.2-ti2v-5b.yaml; extra="" ;;
      esac
      python3 -m wanport bench pipeline $recipe $extra backend=cuda --weights random --no-progress \
        --out "$OUT/$day-$gpu-$w" 2>&1 | tail -25 ;;
    profile14)
      python3 benchmarks/profile_dit.py --model wan2.1-t2v-14b --out "$OUT/profile-14b.json" 2>&1 | tail -30 ;;
    scaling14)
      python3 -m wanport bench scaling --model wan2.1-t2v-14b --backend cuda --layouts cfg2 u2 u4 u8 cfg2xu2 cfg2xu4 \
        --out "$OUT/$day-$gpu-scaling-14b" 2>&1 | tail -14 ;;
    bench13)
      python3 -m wanport bench dit --model wan2.1-t2v-1.3b --size 832*480 --frames 81 --backend cuda \
        --peer diffusers --repeats 5 --out "$OUT/$day-$gpu-dit-1.3b.json" 2>&1 | tail -12 ;;
    bench14)
      python3 -m wanport bench dit --model wan2.1-t2v-14b --size 832*480 --frames 81 --backend cuda \
        --peer diffusers --repeats 3 --out "$OUT/$day-$gpu-dit-14b.json" 2>&1 | tail -12 ;;
  esac
done
