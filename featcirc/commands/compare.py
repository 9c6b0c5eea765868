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
    """Every method against exact patching on the same pairs: correlations per site kind and node kind
    (features and error nodes apart), cost, and at feature level faithfulness curves of each method's
    circuits."""
    from featcirc.attribution import AttributionSettings, attribute, get_method
    from featcirc.evaluate.stats import pearson, spearman
    from featcirc.export.plot import plot_faithfulness, plot_scatter

    methods = list(dict.fromkeys(["exact", *methods]))
    for m in methods:
        get_method(m)  # unknown names fail before any work
    out = prepare_out_dir(out, force, "correlations.csv")
    model, saes = load_model_and_saes(model_name, saes_spec, level)
    dataset = load_data(model, dict(data=data, task=task, n=n, seed=seed, batch_size=batch_size))
    settings = AttributionSettings(level=level, ig_steps=ig_steps, max_nodes=max_nodes, pair_effects=True,
                                   progress=progress)
    cells, costs, edge_costs, graphs = {}, {}, {}, {}
    for method in methods:
        logger.info("compare: %s", method)
        with_edges = level == "feature" and get_method(method).has_edges
        nodes, edges = attribute(model, dataset, method, saes, edges=with_edges, settings=settings)
        cells[method] = nodes.cell_groups()
        costs[method] = nodes.cost
        if edges is not None:
            edge_costs[method] = edges.cost
            nodes.pair_effects = None
            graphs[method] = (nodes, edges)
    ref = cells["exact"]
    corr_rows, dropped = [], []
    for method in methods[1:]:
        for group, (xs, _) in ref.items():
            ys = cells[method][group][0]
            keep = (xs != 0) | (ys != 0)
            x, y = xs[keep].numpy(), ys[keep].numpy()
            if len(x) < 2:
                dropped.append(dict(method=method, group=group, n=int(keep.sum()),
                                    why="fewer than two cells where either method is nonzero"))
                continue
            kind, node_kind = group.split("/")
            corr_rows.append([level, kind, node_kind, method, pearson(x, y), spearman(x, y), int(keep.sum())])
            plot_scatter(x, y, out / f"scatter_{kind}_{node_kind}_{method}.png",
                         xlabel="exact (activation patching)", ylabel=method,
                         title=f"{model_name} {level} {group}: exact vs {method}")
    corr_header = ["level", "site_kind", "node_kind", "method", "pearson_r", "spearman_r", "n"]
    write_csv(out / "correlations.csv", corr_header, corr_rows)
    faith_rows, areas = [], {}
    if graphs:
        from featcirc.circuit import full_graph
        from featcirc.evaluate.faithfulness import DEFAULT_THRESHOLDS, Ablator, curve_area

        ab = Ablator(model, dataset, level=level, saes=saes, ablation=ablation, progress=progress)
        curves = {}
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
        c, e = costs[method], edge_costs.get(method)
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
                  correlations=[dict(zip(corr_header, r)) for r in corr_rows], dropped=dropped,
                  cost=[dict(zip(header, r)) for r in cost_rows])
    write_json(out / "compare.json", result)
    return result


HELP = "methods against exact patching: correlations, cost, faithfulness"


def add_arguments(p) -> None:
    from featcirc.attribution.methods import method_names
    from featcirc.commands.common import add_data_arguments

    p.add_argument("--model", required=True)
    p.add_argument("--saes")
    add_data_arguments(p)
    p.add_argument("--level", choices=("component", "feature"), default="component")
    p.add_argument("--methods", default="exact,atp,relp,ig",
                   help=f"comma-separated, from: {', '.join(method_names())} (exact is always added)")
    p.add_argument("--ig-steps", type=int, default=10)
    p.add_argument("--max-nodes", type=int, default=1000)
    p.add_argument("--ablation", choices=("mean", "zero", "resample"), default="mean")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")


def run(args, progress: bool) -> int:
    import json

    from featcirc.attribution.methods import parse_methods

    res = compare(args.model, args.saes, args.out, level=args.level,
                  methods=parse_methods(args.methods),
                  data=args.data, task=args.task, n=args.n if args.n is not None else 32,
                  seed=args.seed, batch_size=args.batch_size, ig_steps=args.ig_steps,
                  max_nodes=args.max_nodes, ablation=args.ablation, force=args.force,
                  progress=progress)
    for r in res["correlations"]:
        print(f"{r['site_kind']:6s} {r['node_kind']:9s} {r['method']:5s} pearson {r['pearson_r']:.3f} "
              f"spearman {r['spearman_r']:.3f} (n={r['n']})")
    for r in res["cost"]:
        print(json.dumps(r))
    return 0
