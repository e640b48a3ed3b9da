#!/usr/bin/env bash
# Run a wanport recipe: ./run.sh [RECIPE.yaml] [key.path=value ...] [--no-progress] [--set key=value ...]
# Options and overrides may come before or after the recipe. No recipe: write the tiny checkpoint
# if it is missing, then run recipes/tiny-t2v.yaml on the CPU.
# When a recipe needs several processes, torchrun launches them (one per device).
#
# Paths: wanport runs in YOUR working directory, so every relative path -- the recipe, the
# checkpoint_dir= / image= / output.dir= overrides and the paths written inside a recipe --
# resolves from where you stand, exactly as with `wanport run`. The repository's own recipes
# (the default one and recipes/*.yaml) are the exception run.sh makes: their relative
# checkpoint_dir (ckpts/...) and image (assets/...) point into the repository wherever you
# stand (your own checkpoint_dir= / image= still win); their video goes to out/ under your folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")" && pwd)"

if ! command -v wanport >/dev/null 2>&1; then
  echo "run.sh: the wanport command is not installed; run: pip install -e ." >&2
  exit 127
fi

recipe=""
opts=()        # options and overrides for `wanport run`, in the order given
overrides=()   # the KEY=VALUE overrides alone (for `wanport nproc`)
want_value=""
for a in "$@"; do
  if [ -n "$want_value" ]; then opts+=("$a"); overrides+=("$a"); want_value=""; continue; fi
  case "$a" in
    -h|--help) exec wanport run --help ;;
    --set) opts+=("$a"); want_value=1 ;;
    --set=*) opts+=("$a"); overrides+=("${a#--set=}") ;;
    -*) opts+=("$a") ;;
    *.yaml|*.yml)
      if [ -n "$recipe" ]; then echo "run.sh: two recipes given: $recipe and $a" >&2; exit 2; fi
      recipe=$a ;;
    *=*) opts+=("$a"); overrides+=("$a") ;;
    *)
      if [ -n "$recipe" ]; then echo "run.sh: two recipes given: $recipe and $a" >&2; exit 2; fi
      recipe=$a ;;
  esac
done
if [ -n "$want_value" ]; then echo "run.sh: --set needs KEY=VALUE after it" >&2; exit 2; fi

# the repository's own recipes (the default and recipes/*.yaml): relative to the repository root
in_repo=""
if [ -z "$recipe" ]; then
  recipe="$repo/recipes/tiny-t2v.yaml"
  in_repo=1
  ( cd "$repo"
    # make-tiny renames its folder into place when complete (marker inside, with its format):
    # present means complete; an older format is rewritten
    grep -qs '"tiny_format": 2' ckpts/tiny-wan2.1-t2v/.wanport-tiny.json || wanport make-tiny ckpts/tiny-wan2.1-t2v --model wan2.1-t2v --if-missing )
elif [ -f "$recipe" ] && [ "$(cd "$(dirname "$recipe")" && pwd -P)" = "$(cd "$repo/recipes" && pwd -P)" ]; then
  in_repo=1
  # recipes/tiny-<layout>.yaml runs a tiny checkpoint of that make-tiny layout: write it if missing
  case "$(basename "$recipe")" in
    tiny-t2v-distill-lora.yaml)  # the tiny checkpoint and its tiny LoRAs (make-tiny --lora), if missing
      wanport make-tiny ckpts/tiny-wan2.1-t2v --model wan2.1-t2v --lora --if-missing ;;
    tiny-wan*-distill-lora.yaml)
      layout=$(basename "$recipe" .yaml); layout=${layout#tiny-}; layout=${layout%-distill-lora}
      wanport make-tiny "ckpts/tiny-$layout" --model "$layout" --lora --if-missing ;;
    tiny-wan*.yaml)
      layout=$(basename "$recipe" .yaml); layout=${layout#tiny-}
      ( cd "$repo"
        grep -qs '"tiny_format": 2' "ckpts/tiny-$layout/.wanport-tiny.json" || wanport make-tiny "ckpts/tiny-$layout" --model "$layout" --if-missing ) ;;
  esac
fi
# a repository recipe's relative checkpoint_dir and image point into the repository
repo_paths=()
if [ -n "$in_repo" ]; then
  for key in checkpoint_dir image; do
    value=$(sed -n -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//' -e "s/^$key:[[:space:]]*//p" "$recipe" \
            | head -n 1 | sed -e "s/^[\"']//" -e "s/[\"']\$//")
    if [ -n "$value" ] && [ "${value#/}" = "$value" ]; then repo_paths+=("$key=$repo/$value"); fi
  done
fi

# the repository's paths first: overrides given later (yours) win
all=(${repo_paths[@]+"${repo_paths[@]}"} ${overrides[@]+"${overrides[@]}"})
nproc=$(wanport nproc "$recipe" ${all[@]+"${all[@]}"})
if [ "$nproc" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="$nproc" -m wanport run "$recipe" \
    ${repo_paths[@]+"${repo_paths[@]}"} ${opts[@]+"${opts[@]}"}
fi
exec wanport run "$recipe" ${repo_paths[@]+"${repo_paths[@]}"} ${opts[@]+"${opts[@]}"}
