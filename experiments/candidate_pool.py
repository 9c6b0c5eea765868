"""How the candidate pool (``--max-nodes``) limits faithfulness, and what a bigger pool costs (issue 22;
README, "How many nodes a circuit needs"). One torch thread.

    python experiments/candidate_pool.py --task sva-nounpp --pairs 64 --pools 250,500,1000,2000,4000
    python experiments/candidate_pool.py --data featcirc/resources/tiny/heldout_ioi.jsonl --pairs 100 \\
        --pools 500,1000,2000,4000,8000

For each pool size N: RelP nodes + edges with ``--max-nodes N`` (seconds, edges scored), and the held-out
F of the whole pool (every candidate on a path to the metric: the largest circuit any pruner of that
pool can return) under mean and patch ablation with 95% intervals; last, F of every scored node.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from featcirc.attribution import AttributionSettings, attribute  # noqa: E402
from featcirc.circuit import circuit_nodes, full_graph, prune, PruneSettings  # noqa: E402
from featcirc.evaluate.bootstrap import faithfulness_intervals  # noqa: E402
from featcirc.evaluate.faithfulness import Ablator  # noqa: E402
from mask_pruning import add_setup_arguments, load_setup  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(ap)
    ap.add_argument("--pools", default="250,500,1000,2000,4000")
    a = ap.parse_args()
    model, saes, disc, held, alignment = load_setup(a)
    abl = {}
    print("| candidates (--max-nodes) | RelP nodes + edges (s) | edges scored | circuit nodes | F, mean ablation | "
          "F, patch ablation |")
    print("|---|---|---|---|---|---|")
    for n in [int(x) for x in a.pools.split(",")]:
        t0 = time.perf_counter()
        nodes, edges = attribute(model, disc, "relp", saes, alignment=alignment,
                                 settings=AttributionSettings(level="feature", max_nodes=n, progress=False))
        secs = time.perf_counter() - t0
        G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
        C = circuit_nodes(prune(G, PruneSettings(top_k=n)))
        if not abl:
            abl = {x: Ablator(model, held, level="feature", saes=saes, sites=nodes.sites, ablation=x,
                              progress=False, alignment=alignment) for x in ("mean", "patch")}
        cells = []
        for x in ("mean", "patch"):
            ab = abl[x]
            (iv,) = faithfulness_intervals([ab.metric_values(C)], ab.m_full_values, ab.m_empty_values, seed=0)
            cells.append(f"{iv.value:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]")
        print(f"| {n} | {secs:.1f} | {G.number_of_edges()} | {len(C)} | {cells[0]} | {cells[1]} |", flush=True)
    every = [v for v in G.nodes if v != "metric"]
    print(f"every scored node ({len(every)}): F = {abl['mean'].faithfulness(every):.3f} (mean ablation), "
          f"{abl['patch'].faithfulness(every):.3f} (patch ablation)")


if __name__ == "__main__":
    main()
