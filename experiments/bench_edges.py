"""Edge pass benchmark, ratios measured in one run at one torch thread.

1. The vectorised edge pass against the per-node reference loop (featcirc.attribution.reference: one
   forward per pair and downstream site, one backward per node) on the first pairs of the data:
   speed-up (target >= 10x) and the largest difference relative to the largest weight (target <= 1e-5).
2. RelP edge pass / RelP node pass on the whole data with --max-nodes candidates (target <= 5).
3. IG: edge pass time against RelP's, and where it goes (cProfile, top functions).

    python experiments/bench_edges.py                          # tiny, feature level, 500 candidates
    python experiments/bench_edges.py --model gemma-3-270m --saes none --task ioi --n 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from featcirc.attribution import AttributionSettings, attribute, get_method
from featcirc.attribution.nodes import record_batch
from featcirc.attribution.reference import reference_edges
from featcirc.attribution.scores import Cost
from featcirc.attribution.splice import make_splice
from featcirc.data import PairDataset, load_pairs
from featcirc.models import load_model
from featcirc.saes import load_saes
from featcirc.sites import METRIC


def first_pairs(data: PairDataset, n: int) -> PairDataset:
    out = PairDataset(batches=[], n_pairs=0, source=f"first {n} pairs of {data.source}")
    for b in data.batches:
        k = min(n - out.n_pairs, b.clean.shape[0])
        if k <= 0:
            break
        out.batches.append(type(b)(b.clean[:k], b.patch[:k], b.clean_answer[:k], b.patch_answer[:k], b.pairs[:k]))
        out.n_pairs += k
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--saes", default="tiny", help="'none' for component level")
    ap.add_argument("--task", default="sva-nounpp")
    ap.add_argument("--data", default=None, help="a JSONL file instead of --task")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-nodes", type=int, default=500)
    ap.add_argument("--reference-pairs", type=int, default=2)
    ap.add_argument("--ig-steps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = load_model(args.model)
    level = "component" if args.saes == "none" else "feature"
    saes = None if level == "component" else load_saes(model, args.saes)
    data = load_pairs(model, data=args.data, task=None if args.data else args.task, n=args.n, seed=0,
                      batch_size=args.batch_size)
    print(f"{args.model} {level}-level, {data.summary()}, one torch thread")

    # 1. vectorised against the reference loop
    small = first_pairs(data, args.reference_pairs)
    settings = AttributionSettings(level=level, max_nodes=args.max_nodes, ig_steps=args.ig_steps, progress=False)
    _, fast = attribute(model, small, "relp", saes, settings=settings)
    splice = make_splice(model, level, saes)
    relp = get_method("relp")
    records = [record_batch(splice, b, relp, 1, 256, Cost()) for b in small.batches]
    t0 = time.perf_counter()
    ref = reference_edges(model, {s.name: v for s, v in splice.saes.items()}, splice.site_names, records,
                          [n for n in fast.nodes if n != METRIC], relp, 1, "none", small.n_pairs)
    t_ref = time.perf_counter() - t0
    _, fast = attribute(model, small, "relp", saes, settings=settings)  # timed with records recomputed
    got = {k: w for k, w in fast.as_dict().items() if k[1] != METRIC}
    scale = max(abs(w) for w in ref.values())
    diff = max(abs(got.get(k, 0.0) - ref.get(k, 0.0)) for k in set(got) | set(ref))
    print(f"1. {small.n_pairs} pairs, {fast.info['n_candidates']} candidates, {len(ref)} edges: "
          f"vectorised {fast.cost.seconds:.2f}s, reference loop {t_ref:.2f}s, "
          f"speed-up {t_ref / fast.cost.seconds:.1f}x (target >= 10), max|diff|/max|w| = {diff / scale:.1e} "
          "(target <= 1e-5)")

    # 2. edge pass / node pass, RelP, whole data
    nodes, edges = attribute(model, data, "relp", saes, settings=settings)
    print(f"2. relp on {data.n_pairs} pairs, {edges.info['n_candidates']} candidates: nodes "
          f"{nodes.cost.seconds:.2f}s, edges {edges.cost.seconds:.2f}s ({len(edges)} edges), "
          f"edges/nodes = {edges.cost.seconds / nodes.cost.seconds:.2f} (target <= 5)")

    # 3. IG edges
    prof = cProfile.Profile()
    prof.enable()
    ig_nodes, ig_edges = attribute(model, data, "ig", saes, settings=settings)
    prof.disable()
    print(f"3. ig: nodes {ig_nodes.cost.seconds:.2f}s, edges {ig_edges.cost.seconds:.2f}s "
          f"= {ig_edges.cost.seconds / edges.cost.seconds:.1f}x relp's edge pass ({args.ig_steps} steps); "
          "where ig's time goes (cumulative):")
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative")
    wanted = ("batch_edges", "_downstream_rows", "_pack", "_project", "_integrated_gradients", "autograd.grad",
              "record_batch", "TransformerBlock.forward")
    rows = []
    for (file, line, fn), (_, _, _, cum, _) in stats.stats.items():
        name = f"{fn}"
        if any(w.split(".")[-1] == fn for w in wanted):
            rows.append((cum, f"{file.split('/')[-1]}:{fn}"))
    for cum, name in sorted(rows, reverse=True)[:8]:
        print(f"   {cum:8.2f}s  {name}")


if __name__ == "__main__":
    main()
