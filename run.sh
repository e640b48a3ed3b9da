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
  # make-tiny renames its folder into place when complete (marker inside, with its format): present
  # means complete; an older format is rewritten
  grep -qs '"tiny_format": 2' ckpts/tiny-wan2.1-t2v/.wanport-tiny.json || wanport make-tiny ckpts/tiny-wan2.1-t2v --model wan2.1-t2v --if-missing
else
  recipe=$1
  shift
  # recipes/tiny-<layout>.yaml runs a tiny checkpoint of that make-tiny layout: write it if missing
  case "$(basename "$recipe")" in
    tiny-wan*.yaml)
      layout=$(basename "$recipe" .yaml); layout=${layout#tiny-}
      grep -qs '"tiny_format": 2' "ckpts/tiny-$layout/.wanport-tiny.json" || wanport make-tiny "ckpts/tiny-$layout" --model "$layout" --if-missing ;;
  esac
fi

overrides=()
for a in "$@"; do [[ "$a" == *=* && "$a" != -* ]] && overrides+=("$a"); done
nproc=$(wanport nproc "$recipe" ${overrides[@]+"${overrides[@]}"})
if [ "$nproc" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="$nproc" -m wanport run "$recipe" "$@"
fi
exec wanport run "$recipe" "$@"
