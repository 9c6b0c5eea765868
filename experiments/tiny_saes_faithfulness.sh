#!/usr/bin/env bash
# What SAEs trained by `featcirc train-saes` at the tiny model's defaults give on the SVA circuit,
# against the bundled tiny SAEs (README, "SAEs trained here"; the card's "What to expect"):
#
#   bash experiments/tiny_saes_faithfulness.sh [OUT]     # about 12 minutes on one thread
#
# Every discover uses the same pairs (sva-nounpp, seed 0, 64 discovery + 64 held-out pairs), a
# 100-node circuit; F at 100 and 200 nodes under mean and patch ablation (`featcirc evaluate --sizes 100,200
# --ablation mean,patch`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tiny-saes-faithfulness}
FC="python -m featcirc --threads 1 -q"
mkdir -p "$OUT"
time_it() { local t0=$SECONDS; "$@"; echo "  ($((SECONDS - t0)) s)"; }
echo "training (README command, --sites all-resid):"
time_it $FC train-saes --model tiny --sites all-resid --corpus tiny --out "$OUT/saes-all-resid" --force
echo "training (--sites all):"
time_it $FC train-saes --model tiny --sites all --out "$OUT/saes-all" --force
echo "training (--sites all --tokens 512000):"
time_it $FC train-saes --model tiny --sites all --tokens 512000 --out "$OUT/saes-all-long" --force
for saes in tiny "$OUT/saes-all-resid" "$OUT/saes-all" "$OUT/saes-all-long"; do
  name=$(basename "$saes")
  $FC discover --model tiny --saes "$saes" --task sva-nounpp --out "$OUT/sva-$name" --force > /dev/null
  $FC evaluate "$OUT/sva-$name" --sizes 100,200 --ablation mean,patch > /dev/null
  python - "$OUT/sva-$name" "$name" <<'PY'
import json, sys
iv = lambda d: f"{d['value']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"
for ablation in ("mean", "patch"):
    sized = json.load(open(f"{sys.argv[1]}/faithfulness-{ablation}-sizes.json"))
    at = {r["k"]: sized["circuits"][r["circuit"]]["faithfulness"] for r in sized["requests"] if r["selector"] == "size"}
    best = sized.get("smallest_faithful")
    print(f"{sys.argv[2]:>16}, {ablation:5s} ablation: F(100 nodes) = {iv(at[100])}, F(200) = {iv(at[200])}, "
          f"smallest with F >= 0.8: {best['n_nodes'] if best else 'none'} ({sized['n_pairs']} {sized['split']} pairs)")
PY
done
