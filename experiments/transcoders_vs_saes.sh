#!/usr/bin/env bash
# Transcoder circuits against SAE circuits on the bundled tiny model (issue 20; README, "Transcoders"):
#
#   bash experiments/transcoders_vs_saes.sh [OUT]     # about 10 minutes on one thread
#
# The table goes to experiments/results/transcoders/table.txt, each run's sizes.csv, correlations.csv and
# cost.csv beside it.
#
# Three feature sets, the same pairs for all (held-out files of the tiny model, --seed 0, 32 discovery
# pairs scored by exact, AtP, RelP and IG, the other half held out for the faithfulness numbers):
#   saes        the bundled tiny SAEs at every site (embed, attn, mlp, resid)
#   saes+tc     the same, with each layer's MLP SAE swapped for the bundled tiny transcoder (tc.L)
#   tc          the tiny transcoders alone (circuit-tracer's setting: features only in the MLPs)
# Prints, per task and set: F at 50/100/200 nodes under mean and patch ablation (RelP's scores, held-out
# pairs, 95% bootstrap intervals), RelP's and IG's agreement with exact (Pearson r over all feature nodes
# and over error nodes), and the seconds per method.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/transcoders-vs-saes}
export OMP_NUM_THREADS=1
FC="python -m featcirc --threads 1 -q"
TINY=featcirc/resources/tiny
TC=saes/tiny-transcoders
mkdir -p "$OUT/sets/saes+tc"
for d in saes/tiny/*/; do  # the mixed set: the tiny SAEs minus the MLP ones, plus the transcoders
  name=$(basename "$d"); case $name in mlp.*) continue ;; esac
  ln -sfn "$(pwd)/$d" "$OUT/sets/saes+tc/$name"
done
for d in $TC/tc.*/; do ln -sfn "$(pwd)/$d" "$OUT/sets/saes+tc/$(basename "$d")"; done
for task in sva_nounpp ioi; do
  for set in saes saes+tc tc; do
    case $set in saes) saes=tiny ;; saes+tc) saes="$OUT/sets/saes+tc" ;; tc) saes=tiny-transcoders ;; esac
    run="$OUT/$task-$set"
    [ -f "$run/sizes.csv" ] || $FC compare --model tiny --saes "$saes" --data $TINY/heldout_$task.jsonl --pairs 32 \
      --level feature --methods exact,atp,relp,ig --sizes 50,100,200 --ablation mean,patch --out "$run" --force
  done
done
R=experiments/results/transcoders
for run in "$OUT"/*-*; do
  name=$(basename "$run"); [ "$name" = sets ] && continue
  mkdir -p "$R/$name" && cp "$run/sizes.csv" "$run/correlations.csv" "$run/cost.csv" "$R/$name/"
done
python - "$OUT" > "$R/table.txt" <<'PY'
import csv, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = lambda p: list(csv.DictReader(open(p)))  # noqa: E731
print("F: RelP threshold circuits of 50/100/200 nodes on the held-out pairs [95% interval]; smallest: nodes for F >= 0.8")
print("r: Pearson r with exact over the MLP slot's nodes (tc.L or mlp.L), features / error nodes, RelP and IG")
print(f"{'task':10s} {'set':8s} {'ablation':8s} {'F@50':>17s} {'F@100':>17s} {'F@200':>17s} {'smallest':>8s}"
      f"  {'r feat relp/ig':>14s} {'r err relp/ig':>14s}  {'s exact/relp/ig':>15s}")
for task in ("sva_nounpp", "ioi"):
    for s in ("saes", "saes+tc", "tc"):
        run = out / f"{task}-{s}"
        sizes = rows(run / "sizes.csv")
        corr = rows(run / "correlations.csv")
        cost = {r["method"]: float(r["total_seconds"] or r["seconds"]) for r in rows(run / "cost.csv")}
        slot = "mlp" if s == "saes" else "tc"

        def r_of(method, kind):
            sel = [r for r in corr if r["method"] == method and r["node_kind"] == kind and r["site_kind"] == slot]
            return f"{float(sel[0]['pearson_r']):.2f}" if sel and sel[0]["pearson_r"] else "-"

        for ablation in ("mean", "patch"):
            row = next(r for r in sizes if r["method"] == "relp" and r["ablation"] == ablation
                       and r["pruner"] == "threshold")
            f = lambda k: f"{float(row[f'f{k}']):.2f} [{float(row[f'f{k}_lo']):.2f},{float(row[f'f{k}_hi']):.2f}]"  # noqa: E731
            print(f"{task:10s} {s:8s} {ablation:8s} {f(50):>17s} {f(100):>17s} {f(200):>17s} {row['smallest_f08'] or '-':>8s}"
                  f"  {r_of('relp', 'feature') + '/' + r_of('ig', 'feature'):>14s}"
                  f" {r_of('relp', 'error') + '/' + r_of('ig', 'error'):>14s}"
                  f"  {cost.get('exact', 0):5.1f}/{cost.get('relp', 0):4.1f}/{cost.get('ig', 0):4.1f}")
PY
cat "$R/table.txt"
