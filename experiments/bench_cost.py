"""Cost benchmarks, ratios measured in one run (this machine is noisy: repetitions interleaved).

1. RelP vs AtP node scoring wall time on the same data (target: RelP within 1.3x of AtP).
2. RelP vs IG wall time for nodes + edges (target: RelP <= 1/5 of IG).
(The edge pass against its reference loop: experiments/bench_edges.py.)

    python experiments/bench_cost.py [--model tiny] [--task sva-nounpp] [--n 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from featcirc.attribution import AttributionSettings, attribute
from featcirc.data import load_pairs
from featcirc.models import load_model
from featcirc.saes import load_saes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--saes", default="tiny", help="'none' for component level")
    ap.add_argument("--task", default="sva-nounpp")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-nodes", type=int, default=1000)
    ap.add_argument("--skip-edges", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = load_model(args.model)
    level = "component" if args.saes == "none" else "feature"
    saes = None if level == "component" else load_saes(model, args.saes)
    data = load_pairs(model, task=args.task, n=args.n, seed=0)
    settings = AttributionSettings(level=level, max_nodes=args.max_nodes, progress=False)
    print(f"{args.model} {level}-level, {data.summary()}, one torch thread")

    def nodes_only(method: str) -> float:
        t0 = time.perf_counter()
        attribute(model, data, method, saes, edges=False, settings=settings)
        return time.perf_counter() - t0

    nodes_only("atp")  # warm-up
    t = {"atp": [], "relp": []}
    for _ in range(args.reps):
        for m in ("atp", "relp"):
            t[m].append(nodes_only(m))
    atp, relp = statistics.median(t["atp"]), statistics.median(t["relp"])
    print(f"nodes: atp {atp:.3f}s  relp {relp:.3f}s  relp/atp = {relp / atp:.2f}  (target <= 1.3)")
    if args.skip_edges:
        return
    tot = {}
    for m in ("relp", "ig"):
        nodes, edges = attribute(model, data, m, saes, settings=settings)
        tot[m] = nodes.cost.seconds + edges.cost.seconds
        print(f"{m}: nodes {nodes.cost.seconds:.2f}s + edges {edges.cost.seconds:.2f}s = {tot[m]:.2f}s "
              f"({nodes.cost.forward_passes + edges.cost.forward_passes} fwd, "
              f"{nodes.cost.backward_passes + edges.cost.backward_passes} bwd, {len(edges)} edges)")
    print(f"relp/ig wall time (nodes + edges) = {tot['relp'] / tot['ig']:.3f}  (target <= 0.2)")


if __name__ == "__main__":
    main()
