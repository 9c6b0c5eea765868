#!/usr/bin/env bash
# Train the Gemma-3-270M SAE set (saes/recipes/gemma-3-270m.json) into ~/.cache/featcirc/saes/gemma-3-270m-local
# and copy its card (README.md + metrics.json, never weights) to experiments/results/gemma-saes/.
#
#   bash experiments/train_gemma_saes.sh            # needs the gemma extra and the default corpus pieces
#
# One torch thread, so the other core of a shared 2-core machine stays usable; the log goes to
# ~/.cache/featcirc/saes/gemma-3-270m-local.log.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FEATCIRC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/featcirc}"
mkdir -p "$cache/saes"
export OMP_NUM_THREADS=1
python -m featcirc train-saes --recipe gemma-3-270m --threads 1 "$@" 2>&1 | tee "$cache/saes/gemma-3-270m-local.log"
mkdir -p experiments/results/gemma-saes
cp "$cache/saes/gemma-3-270m-local/README.md" "$cache/saes/gemma-3-270m-local/metrics.json" experiments/results/gemma-saes/
