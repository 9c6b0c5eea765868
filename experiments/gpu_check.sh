#!/usr/bin/env bash
# featcirc's GPU check in one command (README, "GPU check"): the device tests, discover and compare on
# Gemma-3-270M (64 pairs, 1,000 candidates, --saes gemma-3-270m-local), torchrun over NCCL on the GPUs
# found, peak GPU memory and agreement with CPU scores, as one table on stdout and in OUT/gpu_check.md.
#
#   bash experiments/gpu_check.sh                       # on a machine with CUDA -> runs/gpu-check/
#   bash experiments/gpu_check.sh --device cpu          # the same stages, small, on a CPU (~2-3 min)
#   bash experiments/gpu_check.sh --out DIR [--model M --saes S --pairs N --max-nodes N --procs N ...]
#
# Options are experiments/gpu_check.py's (--help). Exit status 1 when a stage failed (its row says FAIL).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python experiments/gpu_check.py "$@"
