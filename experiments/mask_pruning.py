"""The size a circuit needs: threshold pruning of AtP / RelP / IG scores against the learned mask from
RelP scores, under mean and patch ablation, on held-out pairs with 95% intervals (issue 22; README,
"Small circuits"). One torch thread.

    python experiments/mask_pruning.py --task sva-nounpp --pairs 64          # tiny SVA, ~4 min
    python experiments/mask_pruning.py --data featcirc/resources/tiny/heldout_ioi.jsonl --pairs 100 \\
        --max-nodes 2000 --sizes 50,100,200,400,800,1200,1600,2000                 # tiny IOI, ~12 min

Every row scores the same discovery pairs (seed 0, half held out) with the same alignment as
``discover`` (``--align auto``); the mask is trained on the discovery pairs under each ablation and
measured on the held-out pairs under both. ``time`` is attribution (+ mask) seconds in this run.
Also prints F of the whole candidate pool (``--max-nodes``) and of every scored node, per ablation:
the ceiling any pruner of that pool has.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featcirc.attribution import AttributionSettings, attribute  # noqa: E402
from featcirc.circuit import circuit_from_nodes, circuit_nodes, full_graph, prune, PruneSettings  # noqa: E402
from featcirc.commands.common import load_model_and_saes  # noqa: E402
from featcirc.data import tokenize_pairs  # noqa: E402
from featcirc.data.align import make_alignment, resolve_alignment  # noqa: E402
from featcirc.data.load import run_pairs  # noqa: E402
from featcirc.evaluate.bootstrap import faithfulness_intervals  # noqa: E402
from featcirc.evaluate.faithfulness import Ablator  # noqa: E402
from featcirc.pruning.mask import MaskSettings, learn_masks, ranked_candidates  # noqa: E402

ABLATIONS = ("mean", "patch")


def add_setup_arguments(ap: argparse.ArgumentParser) -> None:
    """The model, SAEs and pairs options these experiments share."""
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--saes", default="tiny")
    ap.add_argument("--task", default=None, help="(default sva-nounpp without --data)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--pairs", type=int, default=64, help="discovery pairs")
    ap.add_argument("--eval-pairs", type=int, default=None, help="held-out pairs (default: as many as --pairs)")
    ap.add_argument("--batch-size", type=int, default=16)


def load_setup(a: argparse.Namespace, note: str = ""):
    """``(model, saes, discovery pairs, held-out pairs, alignment)``: one torch thread, seed 0, half the
    pairs held out (as ``discover`` splits them), positions aligned as ``--align auto`` would."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if not (a.task or a.data):
        a.task = "sva-nounpp"
    model, saes = load_model_and_saes(a.model, a.saes, "feature")
    n = max(a.pairs, a.eval_pairs or 0)  # half of them held out, as discover splits
    pairs = run_pairs(task=a.task, data=a.data, n=n, seed=0, eval_fraction=0.5)
    disc = tokenize_pairs(model, pairs.discovery, batch_size=a.batch_size, max_pairs=a.pairs)  # the first --pairs
    held = tokenize_pairs(model, pairs.evaluation, batch_size=a.batch_size, max_pairs=a.eval_pairs or a.pairs)
    alignment = make_alignment(disc, resolve_alignment(disc, "auto").mode)
    print(f"{a.model} + {a.saes} SAEs, {a.task or a.data}: {disc.n_pairs} discovery / {held.n_pairs} held-out "
          f"pairs, alignment {alignment.mode}" + (f", {note}" if note else ""), flush=True)
    return model, saes, disc, held, alignment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(ap)
    ap.add_argument("--max-nodes", type=int, default=1000)
    ap.add_argument("--sizes", default="25,50,100,200,300,400,500,750,1000")
    ap.add_argument("--methods", default="atp,relp,ig")
    ap.add_argument("--ig-steps", type=int, default=10)
    ap.add_argument("--out", default=None, help="also write the table as JSON here")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    model, saes, disc, held, alignment = load_setup(a, f"{a.max_nodes} candidates")

    graphs, seconds = {}, {}
    for method in a.methods.split(","):
        t0 = time.perf_counter()
        nodes, edges = attribute(model, disc, method, saes, alignment=alignment,
                                 settings=AttributionSettings(level="feature", max_nodes=a.max_nodes,
                                                              ig_steps=a.ig_steps, progress=False))
        seconds[method] = time.perf_counter() - t0
        graphs[method] = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
        sites = nodes.sites
        print(f"  {method}: nodes + edges {seconds[method]:.1f} s", flush=True)

    def ablator(data, ablation):
        return Ablator(model, data, level="feature", saes=saes, sites=sites, ablation=ablation,
                       progress=False, alignment=alignment)

    held_ab = {x: ablator(held, x) for x in ABLATIONS}
    rows = []

    def measure(name, circuits, secs):
        for x in ABLATIONS:
            ab = held_ab[x]
            ivs = faithfulness_intervals([ab.metric_values(c) for c in circuits.values()], ab.m_full_values,
                                         ab.m_empty_values, n_resamples=1000, seed=0)
            curve = {k: iv for k, iv in zip(circuits, ivs)}
            faithful = [k for k in sorted(curve) if curve[k].value >= 0.8]
            n_nodes = {k: len(circuits[k]) for k in circuits}
            rows.append(dict(pruner=name, ablation=x, seconds=secs,
                             smallest_f08=None if not faithful else n_nodes[faithful[0]],
                             smallest_f08_lo=next((n_nodes[k] for k in sorted(curve) if curve[k].lo >= 0.8), None),
                             curve={str(k): dict(n_nodes=n_nodes[k], **curve[k].to_json()) for k in sorted(curve)}))

    for method, G in graphs.items():
        measure(f"threshold {method}", {k: circuit_nodes(prune(G, PruneSettings(top_k=k))) for k in sizes},
                seconds[method])
    G = graphs["relp"]
    for x in ABLATIONS:
        t0 = time.perf_counter()
        res = learn_masks(ablator(disc, x), G, sizes, MaskSettings(candidates=a.max_nodes), progress=False)
        secs = time.perf_counter() - t0
        circuits = {k: circuit_nodes(circuit_from_nodes(G, c.nodes)) for k, c in res.circuits.items()}
        learned = sum(c.learned for c in res.circuits.values())
        print(f"  mask ({x} ablation): {secs:.1f} s, {res.forward_passes} forward + {res.backward_passes} backward "
              f"passes; learned circuit kept at {learned} of {len(res.circuits)} sizes", flush=True)
        measure(f"mask relp ({x})", circuits, seconds["relp"] + secs)

    cands = ranked_candidates(G, a.max_nodes)
    every = [n for n in G.nodes if n != "metric"]
    ceiling = {x: dict(candidates=len(cands), candidates_f=held_ab[x].faithfulness(cands), scored=len(every),
                       scored_f=held_ab[x].faithfulness(every)) for x in ABLATIONS}
    print("\nceiling (held-out F): " + "; ".join(
        f"{x}: {len(cands)} candidates {held_ab[x].faithfulness(cands):.3f}, all {len(every)} scored nodes "
        f"{held_ab[x].faithfulness(every):.3f}" for x in ABLATIONS))

    show = [k for k in (50, 100, 200) if k in sizes]
    print("\n| pruner | ablation | smallest F >= 0.8 (lower end >= 0.8) | " +
          " | ".join(f"F@{k}" for k in show) + " | time (s) |")
    print("|---|---|---|" + "---|" * len(show) + "---|")
    for r in rows:
        iv = lambda d: f"{d['value']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"  # noqa: E731
        best = "none" if r["smallest_f08"] is None else f"{r['smallest_f08']} ({r['smallest_f08_lo'] or 'none'})"
        print(f"| {r['pruner']} | {r['ablation']} | {best} | " + " | ".join(iv(r["curve"][str(k)]) for k in show)
              + f" | {r['seconds']:.1f} |")
    print("\nfull curves (held-out F by size):")
    for r in rows:
        print(f"  {r['pruner']:>20s} {r['ablation']:5s}: " +
              " ".join(f"{k}:{v['value']:.2f}" for k, v in r["curve"].items()))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(dict(args=vars(a), rows=rows, seconds=seconds, ceiling=ceiling), indent=1))


if __name__ == "__main__":
    main()
