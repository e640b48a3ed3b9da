#!/usr/bin/env bash
# Run a wanport recipe: ./run.sh [RECIPE.yaml] [key.path=value ...]
# No recipe: write the tiny checkpoint if it is missing, then run recipes/tiny-t2v.yaml on the CPU.
# When a recipe needs several processes, torchrun launches them (one per device).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v wanport >/dev/null 2>&1; then
  echo "run.sh: the wanport command is not installed; run: pip install -e ." >&2
  exit 127
fi

if [ $# -eq 0 ] || [[ "$1" == *=* ]]; then
  recipe=recipes/tiny-t2v.yaml
  # make-tiny writes its marker file last: present means complete
  [ -f ckpts/tiny-wan2.1-t2v/.wanport-tiny.json ] || wanport make-tiny ckpts/tiny-wan2.1-t2v --model wan2.1-t2v
else
  recipe=$1
  shift
  # recipes/tiny-<layout>.yaml runs a tiny checkpoint of that make-tiny layout: write it if missing
  case "$(basename "$recipe")" in
    tiny-t2v-distill-lora.yaml)  # the tiny checkpoint and its tiny LoRAs (make-tiny --lora), if missing
      wanport make-tiny ckpts/tiny-wan2.1-t2v --model wan2.1-t2v --lora --if-missing ;;
    tiny-wan*-distill-lora.yaml)
      layout=$(basename "$recipe" .yaml); layout=${layout#tiny-}; layout=${layout%-distill-lora}
      wanport make-tiny "ckpts/tiny-$layout" --model "$layout" --lora --if-missing ;;
    tiny-wan*.yaml)
      layout=$(basename "$recipe" .yaml); layout=${layout#tiny-}
      [ -f "ckpts/tiny-$layout/.wanport-tiny.json" ] || wanport make-tiny "ckpts/tiny-$layout" --model "$layout" ;;
  esac
fi

overrides=()
for a in "$@"; do [[ "$a" == *=* && "$a" != -* ]] && overrides+=("$a"); done
nproc=$(wanport nproc "$recipe" ${overrides[@]+"${overrides[@]}"})
if [ "$nproc" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="$nproc" -m wanport run "$recipe" "$@"
fi
exec wanport run "$recipe" "$@"
