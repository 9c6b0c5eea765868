"""``featcirc evaluate``: the faithfulness curve of a discovered circuit."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from featcirc.commands.common import RunConfig, load_data, load_model_and_saes, write_csv
from featcirc.io import write_json


def evaluate(run_dir: "str | Path", *, data: Optional[str] = None, task: Optional[str] = None,
             n: Optional[int] = None, seed: Optional[int] = None, ablation: str = "mean",
             thresholds: Optional[Sequence[float]] = None, progress: bool = True) -> list:
    """Faithfulness and completeness of the run's circuits over node thresholds."""
    import json

    from featcirc.circuit import full_graph
    from featcirc.evaluate.faithfulness import DEFAULT_THRESHOLDS, Ablator, curve_area
    from featcirc.export.plot import plot_faithfulness
    from featcirc.attribution.scores import EdgeScores, NodeScores

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a featcirc run directory (no run.json); "
                                "make one with `featcirc discover ... --out DIR`")
    cfg = RunConfig(**json.loads((run_dir / "run.json").read_text()))
    src = dict(cfg.source)
    if data is not None or task is not None:
        src.update(data=data, task=task)
    if n is not None:
        src["n"] = n
    if seed is not None:
        src["seed"] = seed
    model, saes = load_model_and_saes(cfg.model, cfg.saes, cfg.level)
    dataset = load_data(model, src)
    nodes = NodeScores.load(run_dir / "nodes.pt")
    edges = EdgeScores.load(run_dir / "edges.pt")
    G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
    ab = Ablator(model, dataset, level=cfg.level, saes=saes, sites=nodes.sites, ablation=ablation,
                 progress=progress)
    points = ab.curve(G, thresholds or DEFAULT_THRESHOLDS, edge_threshold=cfg.edge_threshold)
    write_csv(run_dir / "faithfulness.csv", ["threshold", "n_nodes", "n_edges", "faithfulness", "completeness"],
               [[p.threshold, p.n_nodes, p.n_edges, p.faithfulness, p.completeness] for p in points])
    n_max = max(cfg.max_nodes or 0, max((p.n_nodes for p in points), default=1), 1)
    area = curve_area(points, n_max)
    plot_faithfulness({cfg.method: [(p.n_nodes, p.faithfulness) for p in points]},
                      run_dir / "faithfulness.png",
                      title=f"{cfg.model} {cfg.method}, {ablation} ablation, area {area:.3f}")
    write_json(run_dir / "faithfulness.json", dict(
        ablation=ablation, data=dataset.source, area=area, area_n_max=n_max, m_full=ab.m_full,
        m_empty=ab.m_empty, points=[asdict(p) for p in points]))
    return points


HELP = "faithfulness curve of a discovered circuit"


def add_arguments(p) -> None:
    from featcirc.commands.common import add_data_arguments

    p.add_argument("dir")
    add_data_arguments(p, required=False)
    p.add_argument("--ablation", choices=("mean", "zero", "resample"), default="mean")


def run(args, progress: bool) -> int:
    pts = evaluate(args.dir, data=args.data, task=args.task, n=args.n, seed=args.seed,
                   ablation=args.ablation, progress=progress)
    for p in pts:
        print(f"threshold {p.threshold:9.2e}  nodes {p.n_nodes:5d}  faithfulness {p.faithfulness:7.3f}  "
              f"completeness {p.completeness:7.3f}")
    print(f"-> {args.dir}/faithfulness.csv, faithfulness.png")
    return 0
