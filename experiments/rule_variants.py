"""Which rule choice tracks activation patching best? Pearson and Spearman against exact patching, per
site kind and node kind (features and error nodes apart), for every method asked for, with bootstrap
intervals over pairs, in one run on the same pairs.

    python experiments/rule_variants.py --model tiny --saes tiny --data featcirc/resources/tiny/heldout_sva_nounpp.jsonl
    python experiments/rule_variants.py --model gemma-3-270m --task ioi --n 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from featcirc.attribution import AttributionSettings, attribute, method_names
from featcirc.data import load_pairs
from featcirc.evaluate.bootstrap import bootstrap_correlation
from featcirc.models import load_model
from featcirc.saes import load_saes

DEFAULT = "atp,relp,relp-no-ah,relp-no-half,relp-attn-grad,relp-feat-grad"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--saes", default=None, help="SAE set (feature level); omit for component level")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--methods", default=DEFAULT, help=f"from {', '.join(method_names())}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    level = "feature" if args.saes else "component"
    saes = load_saes(model, args.saes) if args.saes else None
    data = load_pairs(model, data=args.data, task=None if args.data else args.task, n=args.n,
                      batch_size=args.batch_size)
    settings = AttributionSettings(level=level, pair_effects=True, progress=False)
    print(f"{args.model} {level} level, {data.summary()}; Pearson / Spearman against exact [95% CI over pairs]")
    cells, seconds = {}, {}
    for m in ["exact"] + args.methods.split(","):
        t0 = time.perf_counter()
        nodes, _ = attribute(model, data, m, saes, edges=False, settings=settings)
        seconds[m] = time.perf_counter() - t0
        cells[m] = nodes.cell_groups()
    groups = sorted(cells["exact"])
    print(f"{'method':16s} {'s':>7s} " + " ".join(f"{g:>26s}" for g in groups))
    for m in args.methods.split(","):
        row = []
        for g in groups:
            x, pair = cells["exact"][g]
            y = cells[m][g][0]
            keep = ((x != 0) | (y != 0)).numpy()
            x, y, pair = x.numpy()[keep], y.numpy()[keep], pair.numpy()[keep]
            r, lo, hi = bootstrap_correlation(x, y, pair, method="pearson", n_resamples=200, seed=0)
            rho, _, _ = bootstrap_correlation(x, y, pair, method="spearman", n_resamples=1, seed=0)
            row.append(f"{r:6.3f} [{lo:5.2f},{hi:5.2f}] {rho:5.2f}" if np.isfinite(r) else f"{'n/a':>26s}")
        print(f"{m:16s} {seconds[m]:7.1f} " + " ".join(f"{c:>26s}" for c in row))
    print(f"{'exact':16s} {seconds['exact']:7.1f}")


if __name__ == "__main__":
    main()
