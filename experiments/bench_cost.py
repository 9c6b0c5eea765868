"""Cost benchmarks, ratios measured in one run (this machine is noisy: repetitions interleaved).

1. RelP vs AtP node scoring wall time on the same data (target: RelP within 1.3x of AtP).
2. Vectorised edges vs the per-node loop on the tiny model's feature graph (target: >= 10x).
3. RelP vs IG wall time for nodes + edges (target: RelP <= 1/5 of IG).

    python experiments/bench_cost.py [--model tiny] [--task sva-nounpp] [--n 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from featcirc.attribution.nodes import score_nodes
from featcirc.data import load_pairs
from featcirc.attribution.edges import score_graph
from featcirc.models.loading import load_model
from featcirc.saes.loading import load_saes


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--saes", default="tiny", help="'none' for component level")
    ap.add_argument("--task", default="sva-nounpp")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--naive-pairs", type=int, default=2, help="pairs for the per-node loop (slow)")
    ap.add_argument("--skip-edges", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    level = "component" if args.saes == "none" else "feature"
    saes = None if level == "component" else load_saes(model, args.saes)
    data = load_pairs(model, task=args.task, n=args.n, seed=0)
    print(f"{args.model} {level}-level, {data.summary()}")

    # 1. RelP vs AtP nodes
    score_nodes(model, data, method="atp", level=level, saes=saes, progress=False)  # warm-up
    t = {"atp": [], "relp": []}
    for _ in range(args.reps):
        for m in ("atp", "relp"):
            t[m].append(timed(lambda: score_nodes(model, data, method=m, level=level, saes=saes,
                                                  progress=False))[0])
    atp, relp = statistics.median(t["atp"]), statistics.median(t["relp"])
    print(f"nodes: atp {atp:.3f}s  relp {relp:.3f}s  relp/atp = {relp / atp:.2f}  (target <= 1.3)")
    if args.skip_edges or level == "component":
        return

    # 2. vectorised edges vs the per-node loop, on a few pairs, all nonzero nodes (the full graph)
    from featcirc.data import PairDataset

    small = PairDataset(batches=[], n_pairs=0, source="first pairs")
    for b in data.batches:
        if small.n_pairs >= args.naive_pairs:
            break
        k = min(args.naive_pairs - small.n_pairs, b.clean.shape[0])
        small.batches.append(type(b)(b.clean[:k], b.patch[:k], b.clean_answer[:k], b.patch_answer[:k], b.pairs[:k]))
        small.n_pairs += k
    kw = dict(method="relp", level=level, saes=saes, max_nodes=None, progress=False)
    _, fast = score_graph(model, small, **kw)
    _, slow = score_graph(model, small, naive=True, **kw)
    diff = max(abs(fast.edges.get(k, 0.0) - slow.edges.get(k, 0.0)) for k in set(fast.edges) | set(slow.edges))
    scale = max(abs(w) for w in slow.edges.values())
    print(f"edges on {small.n_pairs} pairs, {fast.info['n_candidates']} candidate nodes, {len(fast.edges)} edges: "
          f"vectorised {fast.cost.seconds:.2f}s ({fast.cost.backward_passes} backward)  "
          f"per-node loop {slow.cost.seconds:.2f}s ({slow.cost.backward_passes} backward)  "
          f"speed-up {slow.cost.seconds / fast.cost.seconds:.1f}x  (target >= 10)  max|diff|/max|w| = {diff / scale:.1e}")

    # 3. RelP vs IG, nodes + edges, on the full data
    tot = {}
    for m in ("relp", "ig"):
        nodes, edges = score_graph(model, data, method=m, level=level, saes=saes, max_nodes=1000, progress=False)
        tot[m] = nodes.cost.seconds + edges.cost.seconds
        print(f"{m}: nodes {nodes.cost.seconds:.2f}s + edges {edges.cost.seconds:.2f}s = {tot[m]:.2f}s "
              f"({nodes.cost.forward_passes + edges.cost.forward_passes} fwd, "
              f"{nodes.cost.backward_passes + edges.cost.backward_passes} bwd)")
    print(f"relp/ig wall time (nodes + edges) = {tot['relp'] / tot['ig']:.3f}  (target <= 0.2)")


if __name__ == "__main__":
    main()
