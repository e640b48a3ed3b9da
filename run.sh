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

# tiny LAYOUT [--lora]: write the repository's ckpts/tiny-LAYOUT when it is missing (make-tiny renames
# a complete folder into place, the marker inside with its format: present means complete; an older
# format is rewritten); --lora: its tiny LoRA files too (make-tiny writes only the missing ones)
tiny() {
  ( cd "$repo" && { [ -z "${2:-}" ] && grep -qs '"tiny_format": 2' "ckpts/tiny-$1/.wanport-tiny.json"; } \
      || wanport make-tiny "ckpts/tiny-$1" --model "$1" ${2:+"$2"} --if-missing )
}

# the repository's own recipes (the default and recipes/*.yaml): relative to the repository root
in_repo=""
if [ -z "$recipe" ]; then
  recipe="$repo/recipes/tiny-t2v.yaml"
  in_repo=1
  tiny wan2.1-t2v
elif [ -f "$recipe" ] && [ "$(cd "$(dirname "$recipe")" && pwd -P)" = "$(cd "$repo/recipes" && pwd -P)" ]; then
  in_repo=1
  # recipes/tiny-<layout>.yaml runs a tiny checkpoint of that make-tiny layout: write it if missing
  case "$(basename "$recipe")" in
    tiny-t2v-distill-lora.yaml) tiny wan2.1-t2v --lora ;;
    tiny-wan*-distill-lora.yaml)
      layout=$(basename "$recipe" .yaml); layout=${layout#tiny-}; tiny "${layout%-distill-lora}" --lora ;;
    tiny-wan*.yaml)
      layout=$(basename "$recipe" .yaml); tiny "${layout#tiny-}" ;;
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
  # and so do the paths of its lora: entries (the list is passed again with absolute paths)
  loras=""
  if grep -q '^lora:' "$recipe"; then
    # the interpreter wanport runs under (its console script's #! line) has PyYAML; else python3
    py=$(head -n 1 "$(command -v wanport)" | sed -e 's/^#![[:space:]]*//')
    case "$py" in */python*) ;; *) py=python3 ;; esac
    loras=$("$py" -c '
import json, os, sys, yaml
entries = (yaml.safe_load(open(sys.argv[1], encoding="utf-8")) or {}).get("lora") or []
fix = lambda e: dict(e, path=os.path.join(sys.argv[2], e["path"])) if isinstance(e, dict) and isinstance(e.get("path"), str) and not os.path.isabs(e["path"]) else e
print("lora=" + json.dumps([fix(e) for e in entries]) if isinstance(entries, list) and entries else "")
' "$recipe" "$repo")
  fi
  if [ -n "$loras" ]; then repo_paths+=("$loras"); fi
fi

# the repository's paths first: overrides given later (yours) win
all=(${repo_paths[@]+"${repo_paths[@]}"} ${overrides[@]+"${overrides[@]}"})
nproc=$(wanport nproc "$recipe" ${all[@]+"${all[@]}"})
if [ "$nproc" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="$nproc" -m wanport run "$recipe" \
    ${repo_paths[@]+"${repo_paths[@]}"} ${opts[@]+"${opts[@]}"}
fi
exec wanport run "$recipe" ${repo_paths[@]+"${repo_paths[@]}"} ${opts[@]+"${opts[@]}"}
