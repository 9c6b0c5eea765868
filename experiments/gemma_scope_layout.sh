#!/usr/bin/env bash
# Gemma-3-270M feature circuits on SAEs in the Gemma Scope 2 layout trained here, and with transcoders in
# the MLPs' place (issues 19 and 20; README, "Gemma Scope 2 layout"). Needs the gemma extra (~8 GB RAM) and:
#
#   featcirc train-saes --recipe gemma-3-270m-scope          # -> gemma-3-270m-scope-local (~45 min)
#   featcirc train-saes --model gemma-3-270m --transcoders --sites tc.5,tc.9,tc.12,tc.15 --corpus default \
#     --width 1024 --tokens 256000 --batch-tokens 256 --lr 0.002 --ce-eval-tokens 512 --eval-tokens 4096 \
#     --out ~/.cache/featcirc/saes/gemma-3-270m-transcoders-local                    # (~30 min)
#   bash experiments/gemma_scope_layout.sh [OUT]            # about 40 minutes on one thread
#
# Every run scores the same 8 discovery pairs by exact, AtP, RelP and IG (exact on Gemma's features costs
# minutes a pair) and measures F on 32 held-out pairs (--seed 0), under mean and patch ablation.
#   sva-scope     Marks et al.'s nounpp_test.json, the 12 scope-layout SAEs (resid, mlp, z at 5, 9, 12, 15)
#   ioi-scope     generated IOI pairs (role-aligned), the same SAEs
#   sva-scope+tc  SVA, the scope-layout resid and z SAEs with transcoders tc.5..15 in place of the MLP SAEs
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gemma-scope-layout}
export OMP_NUM_THREADS=1
FC="python -m featcirc --threads 1 -q"
CACHE="${FEATCIRC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/featcirc}/saes"
SVA=../shared/data/sva/nounpp_test.json
mkdir -p "$OUT/sets/scope+tc"
for d in "$CACHE"/gemma-3-270m-scope-local/{resid,z}.*/ "$CACHE"/gemma-3-270m-transcoders-local/tc.*/; do
  ln -sfn "$d" "$OUT/sets/scope+tc/$(basename "$d")"
done
COMMON=(--model gemma-3-270m --pairs 8 --eval-pairs 32 --batch-size 8 --level feature --methods exact,atp,relp,ig
        --sizes 50,100,200,500,1000 --ablation mean,patch)
run() {  # name saes data...
  local name=$1 saes=$2; shift 2
  [ -f "$OUT/$name/sizes.csv" ] || $FC compare "${COMMON[@]}" --saes "$saes" "$@" --out "$OUT/$name" --force
}
run sva-scope gemma-3-270m-scope-local --data $SVA
run ioi-scope gemma-3-270m-scope-local --task ioi
run sva-scope+tc "$OUT/sets/scope+tc" --data $SVA
R=experiments/results/gemma-scope-layout
python experiments/size_table.py --copy-to $R "$OUT/sva-scope" "$OUT/ioi-scope" "$OUT/sva-scope+tc" | tee $R/table.txt
