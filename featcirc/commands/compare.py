"""``featcirc compare``: every method against exact patching on the same pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from featcirc.commands.common import load_data, load_model_and_saes, logger, write_csv
from featcirc.io import prepare_out_dir, write_json


def compare(model_name: str, saes_spec: Optional[str], out: "str | Path", *, level: str = "component",
            methods: Sequence[str] = ("exact", "atp", "relp", "ig"), data: Optional[str] = None,
            task: Optional[str] = None, n: int = 32, seed: int = 0, batch_size: int = 16, ig_steps: int = 10,
            max_nodes: int = 1000, ablation: str = "mean", force: bool = False, progress: bool = True) -> dict:
    """Every method against exact patching on the same pairs: correlations, cost, and at feature
    level faithfulness curves of each method's circuits."""
    from featcirc.attribution.nodes import ScoreSettings, make_splice, score_nodes_with_splice
    from featcirc.export.plot import plot_faithfulness, plot_scatter
    from featcirc.evaluate.stats import pearson, score_cells, spearman

    out = prepare_out_dir(out, force, "correlations.csv")
    methods = list(dict.fromkeys(methods))
    if "exact" not in methods:
        methods = ["exact"] + methods
    model, saes = load_model_and_saes(model_name, saes_spec, level)
    dataset = load_data(model, dict(data=data, task=task, n=n, seed=seed, batch_size=batch_size))
    splice = make_splice(model, level, saes)
    cells, costs, curves, areas, edge_costs = {}, {}, {}, {}, {}
    graphs = {}
    for method in methods:
        logger.info("compare: %s", method)
        if level == "feature" and method != "exact":
            from featcirc.attribution.edges import score_edges

            settings = ScoreSettings(method, level, "none", ig_steps)
            nodes, records = score_nodes_with_splice(splice, dataset, settings, progress=progress,
                                                     keep_records=True)
            edges = score_edges(splice, nodes, records, settings, max_nodes=max_nodes, progress=progress)
            edge_costs[method] = edges.cost
            graphs[method] = (nodes, edges)
        else:
            nodes, records = score_nodes_with_splice(
                splice, dataset, ScoreSettings(method, level, "none", ig_steps), progress=progress,
                keep_records=True)
        cells[method] = score_cells(records, level)
        costs[method] = nodes.cost
        del records
    ref = cells["exact"]
    corr_rows = []
    for method in methods:
        if method == "exact":
            continue
        for kind, xs in ref.items():
            ys = cells[method][kind]
            keep = (xs != 0) | (ys != 0)
            x, y = xs[keep], ys[keep]
            corr_rows.append([level, kind, method, pearson(x, y), spearman(x, y), int(keep.sum())])
            plot_scatter(x, y, out / f"scatter_{kind}_{method}.png", xlabel="exact (activation patching)",
                         ylabel=method, title=f"{model_name} {level} {kind}: exact vs {method}")
    write_csv(out / "correlations.csv", ["level", "site_kind", "method", "pearson_r", "spearman_r", "n"], corr_rows)
    faith_rows = []
    if graphs:
        from featcirc.circuit import full_graph
        from featcirc.evaluate.faithfulness import DEFAULT_THRESHOLDS, Ablator, curve_area

        ab = Ablator(model, dataset, level=level, saes=saes, ablation=ablation, progress=progress)
        for method, (nodes, edges) in graphs.items():
            pts = ab.curve(full_graph(nodes, edges, n_layers=model.cfg.n_layers), DEFAULT_THRESHOLDS)
            curves[method] = pts
            faith_rows += [[method, p.threshold, p.n_nodes, p.n_edges, p.faithfulness, p.completeness] for p in pts]
        n_max = max([max_nodes] + [p.n_nodes for pts in curves.values() for p in pts])
        areas = {m: curve_area(pts, n_max) for m, pts in curves.items()}
        write_csv(out / "faithfulness.csv",
                   ["method", "threshold", "n_nodes", "n_edges", "faithfulness", "completeness"], faith_rows)
        plot_faithfulness({m: [(p.n_nodes, p.faithfulness) for p in pts] for m, pts in curves.items()},
                          out / "faithfulness.png", title=f"{model_name} {ablation} ablation ({dataset.source})")
    cost_rows = []
    for method in methods:
        c = costs[method]
        e = edge_costs.get(method)
        row = [method, c.seconds, c.forward_passes, c.backward_passes]
        if graphs:
            row += [float("nan") if e is None else e.seconds,
                    c.seconds + (0.0 if e is None else e.seconds), areas.get(method, float("nan"))]
        cost_rows.append(row)
    header = ["method", "seconds", "forward_passes", "backward_passes"]
    if graphs:
        header += ["edge_seconds", "total_seconds", "faithfulness_auc"]
    write_csv(out / "cost.csv", header, cost_rows)
    result = dict(model=model_name, saes=saes_spec, level=level, data=dataset.source, pairs=dataset.n_pairs,
                  correlations=[dict(zip(["level", "site_kind", "method", "pearson_r", "spearman_r", "n"], r))
                                for r in corr_rows],
                  cost=[dict(zip(header, r)) for r in cost_rows])
    write_json(out / "compare.json", result)
    return result


HELP = "methods against exact patching: correlations, cost, faithfulness"


def add_arguments(p) -> None:
    from featcirc.commands.common import add_data_arguments

    p.add_argument("--model", required=True)
    p.add_argument("--saes")
    add_data_arguments(p)
    p.add_argument("--level", choices=("component", "feature"), default="component")
    p.add_argument("--methods", default="exact,atp,relp,ig", help="comma-separated")
    p.add_argument("--ig-steps", type=int, default=10)
    p.add_argument("--max-nodes", type=int, default=1000)
    p.add_argument("--ablation", choices=("mean", "zero", "resample"), default="mean")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")


def run(args, progress: bool) -> int:
    import json

    res = compare(args.model, args.saes, args.out, level=args.level,
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
    return 0
