#!/usr/bin/env bash
# Train the Gemma-3-270M SAE sets and copy their cards (README.md + metrics.json, never weights) to
# experiments/results/gemma-saes/. Needs the gemma extra and the default corpus pieces.
#
#   bash experiments/train_gemma_saes.sh          # the recipe (saes/recipes/gemma-3-270m.json): embed + resid.0..17,
#                                                 # width 1024, k 48 -> ~/.cache/featcirc/saes/gemma-3-270m-local
#   bash experiments/train_gemma_saes.sh scope    # the Gemma Scope 2 layout (resid, mlp, z at layers 5, 9, 12, 15),
#                                                 # 12 SAEs -> ~/.cache/featcirc/saes/gemma-3-270m-scope-layout (--saes DIR)
#   bash experiments/train_gemma_saes.sh late     # retrain of the sites below FVE 0.8: resid.10..17, width 2048,
#                                                 # k 64 -> ~/.cache/featcirc/saes/gemma-3-270m-late-w2048
#
# One torch thread, so the other core of a shared 2-core machine stays usable; logs go beside the sets.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FEATCIRC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/featcirc}"
mkdir -p "$cache/saes"
export OMP_NUM_THREADS=1
case "${1:-recipe}" in
  recipe)
    name=gemma-3-270m-local; results=experiments/results/gemma-saes
    python -m featcirc --threads 1 train-saes --recipe gemma-3-270m 2>&1 | tee "$cache/saes/$name.log" ;;
  late)
    name=gemma-3-270m-late-w2048; results=experiments/results/gemma-saes/late-w2048
    python -m featcirc --threads 1 train-saes --model gemma-3-270m \
      --sites resid.10,resid.11,resid.12,resid.13,resid.14,resid.15,resid.16,resid.17 --corpus default \
      --width 2048 --k 64 --tokens 128000 --batch-tokens 256 --lr 0.002 --ce-eval-tokens 512 --eval-tokens 4096 \
      --out "$cache/saes/$name" 2>&1 | tee "$cache/saes/$name.log" ;;
  scope)  # the Gemma Scope 2 layout: residual, MLP-out and attention-z SAEs at layers 5, 9, 12, 15 (~10 min training)
    name=gemma-3-270m-scope-layout; results=experiments/results/gemma-saes/scope-layout
    python -m featcirc --threads 1 train-saes --model gemma-3-270m \
      --sites resid.5,resid.9,resid.12,resid.15,mlp.5,mlp.9,mlp.12,mlp.15,z.5,z.9,z.12,z.15 --corpus default \
      --width 1024 --k 48 --tokens 128000 --batch-tokens 256 --lr 0.002 --ce-eval-tokens 512 --eval-tokens 4096 \
      --out "$cache/saes/$name" --force 2>&1 | tee "$cache/saes/$name.log" ;;
  *) echo "usage: $0 [recipe|late|scope]" >&2; exit 2 ;;
esac
mkdir -p "$results"
cp "$cache/saes/$name/README.md" "$cache/saes/$name/metrics.json" "$results/"
