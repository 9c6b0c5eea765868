"""``featcirc`` command line: discover, evaluate, export, compare, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

TASK_CHOICES = ("ioi", "sva-simple", "sva-nounpp", "sva-rc", "sva-within-rc")


def _add_data(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--data", help="feature-circuits JSONL file of prompt pairs")
    g.add_argument("--task", choices=TASK_CHOICES, help="generate pairs for a built-in task")
    p.add_argument("--n", type=int, default=None, help="pairs to use (generated for --task; default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated pairs")
    p.add_argument("--batch-size", type=int, default=16)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="featcirc", description=(
        "Sparse feature circuits: SAEs spliced with error nodes, RelP / IG / AtP / activation-patching "
        "attribution, pruned networkx circuits, faithfulness and export."))
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("discover", help="score nodes and edges, prune, export and draw a circuit")
    p.add_argument("--model", required=True, help="tiny, gemma-3-270m, or a TransformerLens model name")
    p.add_argument("--saes", help="SAE set: tiny, a named set, a directory of SAELens SAEs (omit for --level component)")
    _add_data(p)
    p.add_argument("--method", choices=("relp", "atp", "ig"), default="relp")
    p.add_argument("--level", choices=("feature", "component"), default=None,
                   help="default: feature with --saes, component without")
    p.add_argument("--aggregation", choices=("none", "sum"), default="none", help="sum scores over positions")
    p.add_argument("--ig-steps", type=int, default=10)
    p.add_argument("--max-nodes", type=int, default=1000, help="edges are scored among the top N nodes")
    p.add_argument("--node-threshold", type=float, default=None, help="keep nodes with |score| >= this")
    p.add_argument("--top-k", type=int, default=None, help="keep the top k nodes (default 100 without a threshold)")
    p.add_argument("--edge-threshold", type=float, default=0.0)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite results in an existing --out")

    p = sub.add_parser("evaluate", help="faithfulness curve of a discovered circuit")
    p.add_argument("dir")
    _add_data(p, required=False)
    p.add_argument("--ablation", choices=("mean", "zero", "resample"), default="mean")

    p = sub.add_parser("export", help="re-export a discovered circuit")
    p.add_argument("dir")
    p.add_argument("--format", choices=("graphml", "dot", "json", "neuronpedia"), required=True)

    p = sub.add_parser("compare", help="methods against exact patching: correlations, cost, faithfulness")
    p.add_argument("--model", required=True)
    p.add_argument("--saes")
    _add_data(p)
    p.add_argument("--level", choices=("component", "feature"), default="component")
    p.add_argument("--methods", default="exact,atp,relp,ig", help="comma-separated")
    p.add_argument("--ig-steps", type=int, default=10)
    p.add_argument("--max-nodes", type=int, default=1000)
    p.add_argument("--ablation", choices=("mean", "zero", "resample"), default="mean")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")

    p = sub.add_parser("demo", help="discover + evaluate on the bundled tiny model (about a minute)")
    p.add_argument("--out", default="featcirc-demo")
    p.add_argument("--task", choices=TASK_CHOICES, default="sva-nounpp")
    p.add_argument("--method", choices=("relp", "atp", "ig"), default="relp")
    p.add_argument("--force", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="featcirc: %(message)s")
    progress = not args.quiet
    from featcirc import pipeline
    from featcirc.models import ModelLoadError

    try:
        if args.command == "discover":
            level = args.level or ("feature" if args.saes else "component")
            top_k = args.top_k if (args.top_k is not None or args.node_threshold is not None) else 100
            cfg = pipeline.RunConfig(
                model=args.model, saes=args.saes, method=args.method, level=level,
                aggregation=args.aggregation, data=args.data, task=args.task,
                n=args.n if args.n is not None else 64, seed=args.seed, batch_size=args.batch_size,
                ig_steps=args.ig_steps, max_nodes=args.max_nodes, node_threshold=args.node_threshold,
                top_k=top_k, edge_threshold=args.edge_threshold)
            summ = pipeline.discover(cfg, args.out, force=args.force, progress=progress)
            print(f"circuit: {summ['n_nodes']} nodes, {summ['n_edges']} edges from {summ['pairs_used']} pairs "
                  f"-> {args.out}/ (circuit.json, .graphml, .dot, neuronpedia.json, circuit.png, summary.json)")
        elif args.command == "evaluate":
            pts = pipeline.evaluate(args.dir, data=args.data, task=args.task, n=args.n, seed=args.seed,
                                    ablation=args.ablation, progress=progress)
            for p in pts:
                print(f"threshold {p.threshold:9.2e}  nodes {p.n_nodes:5d}  faithfulness {p.faithfulness:7.3f}  "
                      f"completeness {p.completeness:7.3f}")
            print(f"-> {args.dir}/faithfulness.csv, faithfulness.png")
        elif args.command == "export":
            print(pipeline.export_run(args.dir, args.format))
        elif args.command == "compare":
            res = pipeline.compare(args.model, args.saes, args.out, level=args.level,
                                   methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                                   data=args.data, task=args.task, n=args.n if args.n is not None else 32,
                                   seed=args.seed, batch_size=args.batch_size, ig_steps=args.ig_steps,
                                   max_nodes=args.max_nodes, ablation=args.ablation, force=args.force,
                                   progress=progress)
            for r in res["correlations"]:
                print(f"{r['site_kind']:8s} {r['method']:5s} pearson {r['pearson_r']:.3f} "
                      f"spearman {r['spearman_r']:.3f} (n={r['n']})")
            for r in res["cost"]:
                print(json.dumps(r))
        elif args.command == "demo":
            summ = pipeline.demo(args.out, force=args.force, task=args.task, method=args.method,
                                 progress=progress)
            best = summ["smallest_faithful"]
            print(f"demo: {summ['method']} circuit on {summ['data']}: {summ['n_nodes']} nodes, "
                  f"{summ['n_edges']} edges; smallest circuit with faithfulness >= 0.8: "
                  f"{best['n_nodes']} nodes (F = {best['faithfulness']:.3f}) -> {args.out}/")
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError, ModelLoadError) as e:
        print(f"featcirc {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
