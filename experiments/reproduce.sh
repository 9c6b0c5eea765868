#!/usr/bin/env bash
# Reproduce every table of the README into experiments/results/ (one torch thread each).
#
#   bash experiments/reproduce.sh tiny     # the bundled tiny model: about 25 minutes on a shared 2-core CPU
#   bash experiments/reproduce.sh gemma    # Gemma-3-270M (the gemma extra, ~8 GB RAM): about 3 hours on 2 cores;
#                                          # its SAEs first, once: bash experiments/train_gemma_saes.sh (~1 hour)
#   bash experiments/reproduce.sh all
#
# Every comparison of one table scores the same pairs: `compare` splits each data set the same way at
# component and feature level (--seed 0, --eval-fraction 0.5), scores the first --pairs discovery pairs,
# and measures faithfulness on the held-out ones.
set -euo pipefail
cd "$(dirname "$0")/.."
R=experiments/results
mkdir -p $R/mask
export OMP_NUM_THREADS=1
FC="python -m featcirc --threads 1 -q"
TINY=featcirc/resources/tiny

tiny() {
  for task in ioi sva_nounpp; do
    # IOI: patch ablation (the names precede the first differing token) and circuits of up to 2000 nodes
    ablation=mean; nodes=500; [ "$task" = ioi ] && { ablation=patch; nodes=2000; }
    $FC compare --model tiny --data $TINY/heldout_$task.jsonl --pairs 32 --level component \
      --methods exact,atp,relp,ig --out $R/tiny-${task//_/-}-component --force
    $FC compare --model tiny --saes tiny --data $TINY/heldout_$task.jsonl --pairs 32 --level feature \
      --methods exact,atp,relp,ig --max-nodes $nodes --ablation $ablation --out $R/tiny-${task//_/-}-feature --force
  done
  $FC discover --model tiny --saes tiny --data $TINY/heldout_ioi.jsonl --pairs 100 --max-nodes 2000 \
    --out $R/tiny-ioi-discover --force
  $FC evaluate $R/tiny-ioi-discover --ablation patch  # smallest held-out IOI circuit with F >= 0.8
  # the size a circuit needs: threshold pruning of AtP / RelP / IG against the learned mask, mean and patch
  python experiments/mask_pruning.py --task sva-nounpp --pairs 64 --out $R/mask/tiny_sva.json > $R/mask/tiny_sva.txt
  python experiments/mask_pruning.py --data $TINY/heldout_ioi.jsonl --pairs 100 --max-nodes 2000 \
    --sizes 50,100,200,400,800,1200,1600,2000 --out $R/mask/tiny_ioi.json > $R/mask/tiny_ioi.txt
  python experiments/candidate_pool.py --task sva-nounpp --pairs 64 --pools 250,500,1000,2000,4000 > $R/mask/pool_tiny_sva.txt
  python experiments/candidate_pool.py --data $TINY/heldout_ioi.jsonl --pairs 100 --pools 500,1000,2000,4000,8000 \
    > $R/mask/pool_tiny_ioi.txt
  bash experiments/transcoders_vs_saes.sh runs/transcoders-vs-saes  # transcoders vs SAEs -> $R/transcoders/
  python experiments/rule_variants.py --model tiny --saes tiny --data $TINY/heldout_sva_nounpp.jsonl \
    > $R/rule_variants/tiny_feature_sva.txt
  python experiments/rule_variants.py --model tiny --data $TINY/heldout_ioi.jsonl > $R/rule_variants/tiny_component_ioi.txt
  python experiments/bench_cost.py > $R/bench_cost_tiny.txt
  python experiments/bench_edges.py > $R/edges/bench_edges_tiny.txt
  python experiments/bench_scale.py
  python experiments/bench_scale.py --demo-threads 1,2,0 --repeats 2 --label threads
  python experiments/bench_distributed.py --pairs 128 --reps 3 --compare-threads
}

gemma() {
  # component level without IG: one site at a time, IG costs ~60x RelP here (experiments/results/edges/)
  $FC compare --model gemma-3-270m --task ioi --pairs 24 --batch-size 8 --level component \
    --methods exact,atp,relp --out $R/gemma-ioi-component --force
  $FC compare --model gemma-3-270m --data ../shared/data/sva/nounpp_test.json --pairs 24 --batch-size 8 \
    --level component --methods exact,atp,relp --out $R/gemma-sva-nounpp-component --force
  $FC compare --model gemma-3-270m --saes gemma-3-270m-local --data ../shared/data/sva/nounpp_test.json \
    --pairs 24 --eval-pairs 48 --batch-size 8 --level feature --methods exact,atp,relp,ig --max-nodes 500 \
    --ablation mean --out $R/gemma-sva-nounpp-feature --force
  $FC compare --model gemma-3-270m --saes gemma-3-270m-local --task ioi --pairs 16 --eval-pairs 32 \
    --batch-size 8 --level feature --methods exact,atp,relp,ig --max-nodes 500 --ablation patch \
    --out $R/gemma-ioi-feature --force
  python experiments/candidate_pool.py --model gemma-3-270m --saes gemma-3-270m-local \
    --data ../shared/data/sva/nounpp_test.json --pairs 24 --batch-size 8 --pools 500,1000,2000,4000 > $R/mask/pool_gemma_sva.txt
  python experiments/mask_pruning.py --model gemma-3-270m --saes gemma-3-270m-local \
    --data ../shared/data/sva/nounpp_test.json --pairs 24 --batch-size 8 --max-nodes 4000 \
    --sizes 50,100,200,500,1000,2000,3000,4000 --out $R/mask/gemma_sva.json > $R/mask/gemma_sva.txt
  python experiments/mask_pruning.py --model gemma-3-270m --saes gemma-3-270m-local \
    --data ../shared/data/sva/nounpp_test.json --pairs 24 --eval-pairs 96 --batch-size 8 --max-nodes 4000 \
    --methods relp --sizes 50,100,200,500,1000,1500,2000,3000,4000 --out $R/mask/gemma_sva_96.json > $R/mask/gemma_sva_96.txt
  # the Gemma Scope 2 layout trained here (bash experiments/train_gemma_saes.sh scope)
  python experiments/mask_pruning.py --model gemma-3-270m --saes "${FEATCIRC_CACHE:-$HOME/.cache/featcirc}/saes/gemma-3-270m-scope-layout" \
    --data ../shared/data/sva/nounpp_test.json --pairs 24 --eval-pairs 96 --batch-size 8 --max-nodes 4000 \
    --methods relp --sizes 100,200,500,1000,2000,3000,4000 --out $R/mask/gemma_scope_sva_96.json > $R/mask/gemma_scope_sva_96.txt
  python experiments/mask_pruning.py --model gemma-3-270m --saes gemma-3-270m-local --task ioi --pairs 24 \
    --batch-size 8 --max-nodes 4000 --methods atp,relp --sizes 50,100,200,500,1000,2000,3000,4000 \
    --out $R/mask/gemma_ioi.json > $R/mask/gemma_ioi.txt
  python experiments/rule_variants.py --model gemma-3-270m --task ioi --n 24 --batch-size 8 \
    --methods atp,relp,relp-no-ah,relp-no-half,relp-no-ln,relp-attn-grad > $R/rule_variants/gemma_component_ioi.txt
  python experiments/bench_edges.py --model gemma-3-270m --saes none --task ioi --n 16 --batch-size 8 \
    --max-nodes 500 --reference-pairs 1 > $R/edges/bench_edges_gemma_component.txt
  python experiments/bench_cost.py --model gemma-3-270m --saes gemma-3-270m-local --task sva-nounpp --n 16 \
    --reps 1 --max-nodes 500 > $R/bench_cost_gemma.txt
}

case "${1:-tiny}" in
  tiny) tiny ;;
  gemma) gemma ;;
  all) tiny; gemma ;;
  *) echo "usage: $0 [tiny|gemma|all]" >&2; exit 2 ;;
esac
python experiments/tables.py  # the README's tables, from the outputs above
