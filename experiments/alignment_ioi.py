"""The tiny IOI circuit scored with positions aligned by role against aligned from the start
(docs/design.md §14), on the same held-out pairs, with patch ablation: F at 50/100/200 nodes and
the smallest size with F >= 0.8 (on a grid of top-k circuit sizes, edges among the top 3000 nodes;
'>3000' when none reaches it).

    OMP_NUM_THREADS=1 python experiments/alignment_ioi.py [--pairs 128] [--seed 0]

Discovery and held-out pairs: ``make_task("ioi", 2 * pairs, seed)`` split in half by
``split_pairs`` (seeded, by case), the split ``discover`` makes with ``--eval-fraction 0.5``.
"""

from __future__ import annotations

import argparse
import time

import torch

from featcirc.attribution import AttributionSettings, attribute
from featcirc.circuit import circuit_nodes, full_graph
from featcirc.data import make_task, tokenize_pairs
from featcirc.data.align import make_alignment
from featcirc.data.split import split_pairs
from featcirc.evaluate.bootstrap import faithfulness_intervals
from featcirc.evaluate.faithfulness import Ablator, select_circuit
from featcirc.models.loading import load_model
from featcirc.saes.loading import load_saes

SIZES = (50, 100, 200)
GRID = (1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="relp")
    ap.add_argument("--levels", default="component,feature")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model("tiny")
    saes = load_saes(model, "tiny")
    disc_pairs, eval_pairs = split_pairs(make_task("ioi", 2 * args.pairs, args.seed), 0.5, seed=args.seed)
    disc, held = tokenize_pairs(model, disc_pairs), tokenize_pairs(model, eval_pairs)
    print(f"tiny IOI, {disc.n_pairs} discovery / {held.n_pairs} held-out pairs, lengths {disc.lengths}, "
          f"method {args.method}, patch ablation")
    print("F with 95% percentile bootstrap intervals over the held-out pairs (1000 resamples)")
    print("| level | alignment | F@50 | F@100 | F@200 | size at F >= 0.8 |")
    print("|---|---|---|---|---|---|")
    for level in args.levels.split(","):
        for mode in ("start", "role"):
            t0 = time.perf_counter()
            al = make_alignment(disc, mode)
            settings = AttributionSettings(level=level, max_nodes=GRID[-1], progress=False)
            nodes, edges = attribute(model, disc, args.method, saes if level == "feature" else None,
                                     settings=settings, alignment=al)
            G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
            ab = Ablator(model, held, level=level, saes=saes if level == "feature" else None, sites=nodes.sites,
                         ablation="patch", progress=False, alignment=al)
            f = {k: ab.faithfulness(circuit_nodes(select_circuit(G, size=k))) for k in sorted(set(SIZES + GRID))}
            reach = next((k for k in GRID if f[k] >= 0.8), None)
            ivs = faithfulness_intervals([ab.metric_values(circuit_nodes(select_circuit(G, size=k))) for k in SIZES],
                                         ab.m_full_values, ab.m_empty_values)
            print(f"| {level} | {mode} | " + " | ".join(f"{iv.value:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]" for iv in ivs)
                  + f" | {reach if reach is not None else f'>{GRID[-1]}'} | "
                  + f"<!-- {time.perf_counter() - t0:.0f} s -->")


if __name__ == "__main__":
    main()
