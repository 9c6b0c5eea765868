"""The commands behind the CLI: discover, evaluate, export, compare, demo.

Each writes into an output directory, every file atomically; a run directory holds ``run.json``
(what was run, so ``evaluate`` can reload the model and SAEs), the full scores (``nodes.pt``,
``edges.pt``: re-thresholding needs no model), the circuit in every export format, a drawing and
``summary.json``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from featcirc.io import prepare_out_dir, write_json, write_text

logger = logging.getLogger("featcirc")


@dataclass
class RunConfig:
    """What a discover run used; stored as ``run.json``."""

    model: str
    saes: Optional[str]
    method: str
    level: str
    aggregation: str
    data: Optional[str] = None
    task: Optional[str] = None
    n: Optional[int] = 64
    seed: int = 0
    batch_size: int = 16
    ig_steps: int = 10
    max_nodes: Optional[int] = 1000
    node_threshold: Optional[float] = None
    top_k: Optional[int] = 100
    edge_threshold: float = 0.0

    @property
    def source(self) -> dict:
        return dict(data=self.data, task=self.task, n=self.n, seed=self.seed, batch_size=self.batch_size)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(["" if (isinstance(x, float) and math.isnan(x)) else
                    (f"{x:.6g}" if isinstance(x, float) else x) for x in r])
    return write_text(path, buf.getvalue())


def _load(model_name: str, saes_spec: Optional[str], level: str):
    from featcirc.models import load_model
    from featcirc.saes import load_saes

    model = load_model(model_name)
    for p in model.parameters():
        p.requires_grad_(False)
    saes = None
    if level == "feature":
        if not saes_spec:
            raise ValueError("feature-level circuits need SAEs: pass --saes (e.g. --saes tiny), "
                             "or use --level component")
        saes = load_saes(model, saes_spec)
    return model, saes


def _data(model, cfg: "RunConfig | dict"):
    from featcirc.data import load_pairs

    src = cfg.source if isinstance(cfg, RunConfig) else cfg
    return load_pairs(model, data=src.get("data"), task=src.get("task"), n=src.get("n"),
                      seed=src.get("seed", 0), batch_size=src.get("batch_size", 16))


def _example_prompt(model, data) -> tuple[str, list[str]]:
    batch = max(data.batches, key=lambda b: b.clean.shape[1])  # node positions fit the longest prompt
    toks = batch.clean[0]
    return batch.pairs[0].clean_prefix, [model.tokenizer.decode([int(t)]) for t in toks]


# --------------------------------------------------------------------------------------------
def discover(cfg: RunConfig, out: "str | Path", *, force: bool = False, progress: bool = True) -> dict:
    """Score nodes and edges, build and prune the circuit, export and draw it."""
    import torch

    from featcirc.circuit import PruneSettings, full_graph, prune, summary
    from featcirc.edges import score_graph
    from featcirc.export import write_dot, write_graphml, write_json as write_graph_json, write_neuronpedia
    from featcirc.models import model_info
    from featcirc.plot import draw_circuit

    out = prepare_out_dir(out, force, "run.json")
    torch.manual_seed(cfg.seed)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    model, saes = _load(cfg.model, cfg.saes, cfg.level)
    phases["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = _data(model, cfg)
    phases["data"] = time.perf_counter() - t0
    write_json(out / "run.json", asdict(cfg))
    nodes, edges = score_graph(model, data, method=cfg.method, level=cfg.level, saes=saes,
                               aggregation=cfg.aggregation, ig_steps=cfg.ig_steps,
                               max_nodes=cfg.max_nodes, progress=progress)
    phases["nodes"] = nodes.cost.seconds
    phases["edges"] = edges.cost.seconds
    nodes.info["model"] = cfg.model
    nodes.save(out / "nodes.pt")
    edges.save(out / "edges.pt")
    t0 = time.perf_counter()
    G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
    C = prune(G, PruneSettings(cfg.node_threshold, cfg.top_k, cfg.edge_threshold))
    prompt, tokens = _example_prompt(model, data)
    write_graph_json(C, out / "circuit.json")
    write_graphml(C, out / "circuit.graphml")
    write_dot(C, out / "circuit.dot", title=f"{cfg.model} {cfg.method}")
    slug = f"featcirc-{cfg.model}-{cfg.method}".replace("/", "-")
    write_neuronpedia(C, out / "neuronpedia.json", slug=slug, prompt=prompt,
                      prompt_tokens=tokens,
                      info=dict(description=f"featcirc {cfg.method} circuit on {data.source}"))
    draw_circuit(C, out / "circuit.png", title=f"{cfg.model} — {cfg.method} circuit ({data.source})")
    phases["circuit+export"] = time.perf_counter() - t0
    s = summary(C)
    summ = dict(
        model=cfg.model, model_info=model_info(model), saes=cfg.saes, method=cfg.method, level=cfg.level,
        aggregation=cfg.aggregation, data=data.source, pairs_used=data.n_pairs, pairs_dropped=data.dropped,
        n_nodes=s["n_nodes"], n_features=s["n_features"], n_errors=s["n_errors"],
        n_components=s["n_components"], n_edges=s["n_edges"],
        n_nodes_scored=G.number_of_nodes() - 1, n_edges_scored=G.number_of_edges(),
        prune=dict(node_threshold=cfg.node_threshold, top_k=cfg.top_k, edge_threshold=cfg.edge_threshold),
        seconds=phases,
        forward_passes=nodes.cost.forward_passes + edges.cost.forward_passes,
        backward_passes=nodes.cost.backward_passes + edges.cost.backward_passes,
        metric_clean=nodes.metric_clean, metric_patch=nodes.metric_patch,
    )
    write_json(out / "summary.json", summ)
    return summ


def evaluate(run_dir: "str | Path", *, data: Optional[str] = None, task: Optional[str] = None,
             n: Optional[int] = None, seed: Optional[int] = None, ablation: str = "mean",
             thresholds: Optional[Sequence[float]] = None, progress: bool = True) -> list:
    """Faithfulness and completeness of the run's circuits over node thresholds."""
    import json

    from featcirc.circuit import full_graph
    from featcirc.faithfulness import DEFAULT_THRESHOLDS, Ablator, curve_area
    from featcirc.plot import plot_faithfulness
    from featcirc.scores import EdgeScores, NodeScores

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
    model, saes = _load(cfg.model, cfg.saes, cfg.level)
    dataset = _data(model, src)
    nodes = NodeScores.load(run_dir / "nodes.pt")
    edges = EdgeScores.load(run_dir / "edges.pt")
    G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
    ab = Ablator(model, dataset, level=cfg.level, saes=saes, sites=nodes.sites, ablation=ablation,
                 progress=progress)
    points = ab.curve(G, thresholds or DEFAULT_THRESHOLDS, edge_threshold=cfg.edge_threshold)
    _write_csv(run_dir / "faithfulness.csv", ["threshold", "n_nodes", "n_edges", "faithfulness", "completeness"],
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


def export_run(run_dir: "str | Path", fmt: str) -> Path:
    """Re-export a run's ``circuit.json`` in another format (no model needed)."""
    from featcirc.export import read_json, write_dot, write_graphml, write_json as write_graph_json
    from featcirc.export import write_neuronpedia

    run_dir = Path(run_dir)
    src = run_dir / "circuit.json"
    if not src.exists():
        raise FileNotFoundError(f"{src} not found; run `featcirc discover ... --out {run_dir}` first")
    C = read_json(src)
    if fmt == "graphml":
        return write_graphml(C, run_dir / "circuit.graphml")
    if fmt == "dot":
        return write_dot(C, run_dir / "circuit.dot")
    if fmt == "json":
        return write_graph_json(C, run_dir / "circuit.json")
    if fmt == "neuronpedia":
        import json

        meta = json.loads((run_dir / "neuronpedia.json").read_text())["metadata"] if (
            run_dir / "neuronpedia.json").exists() else {}
        return write_neuronpedia(C, run_dir / "neuronpedia.json",
                                 slug=meta.get("slug", "featcirc-circuit"),
                                 prompt=meta.get("prompt", ""),
                                 prompt_tokens=meta.get("prompt_tokens", []))
    raise ValueError(f"unknown format {fmt!r}; choose graphml, dot, json or neuronpedia")


# --------------------------------------------------------------------------------------------
def compare(model_name: str, saes_spec: Optional[str], out: "str | Path", *, level: str = "component",
            methods: Sequence[str] = ("exact", "atp", "relp", "ig"), data: Optional[str] = None,
            task: Optional[str] = None, n: int = 32, seed: int = 0, batch_size: int = 16, ig_steps: int = 10,
            max_nodes: int = 1000, ablation: str = "mean", force: bool = False, progress: bool = True) -> dict:
    """Every method against exact patching on the same pairs: correlations, cost, and at feature
    level faithfulness curves of each method's circuits."""
    from featcirc.attribution import ScoreSettings, make_splice, score_nodes_with_splice
    from featcirc.plot import plot_faithfulness, plot_scatter
    from featcirc.stats import pearson, score_cells, spearman

    out = prepare_out_dir(out, force, "correlations.csv")
    methods = list(dict.fromkeys(methods))
    if "exact" not in methods:
        methods = ["exact"] + methods
    model, saes = _load(model_name, saes_spec, level)
    dataset = _data(model, dict(data=data, task=task, n=n, seed=seed, batch_size=batch_size))
    splice = make_splice(model, level, saes)
    cells, costs, curves, areas, edge_costs = {}, {}, {}, {}, {}
    graphs = {}
    for method in methods:
        logger.info("compare: %s", method)
        if level == "feature" and method != "exact":
            from featcirc.edges import score_edges

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
    _write_csv(out / "correlations.csv", ["level", "site_kind", "method", "pearson_r", "spearman_r", "n"], corr_rows)
    faith_rows = []
    if graphs:
        from featcirc.circuit import full_graph
        from featcirc.faithfulness import DEFAULT_THRESHOLDS, Ablator, curve_area

        ab = Ablator(model, dataset, level=level, saes=saes, ablation=ablation, progress=progress)
        for method, (nodes, edges) in graphs.items():
            pts = ab.curve(full_graph(nodes, edges, n_layers=model.cfg.n_layers), DEFAULT_THRESHOLDS)
            curves[method] = pts
            faith_rows += [[method, p.threshold, p.n_nodes, p.n_edges, p.faithfulness, p.completeness] for p in pts]
        n_max = max([max_nodes] + [p.n_nodes for pts in curves.values() for p in pts])
        areas = {m: curve_area(pts, n_max) for m, pts in curves.items()}
        _write_csv(out / "faithfulness.csv",
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
    _write_csv(out / "cost.csv", header, cost_rows)
    result = dict(model=model_name, saes=saes_spec, level=level, data=dataset.source, pairs=dataset.n_pairs,
                  correlations=[dict(zip(["level", "site_kind", "method", "pearson_r", "spearman_r", "n"], r))
                                for r in corr_rows],
                  cost=[dict(zip(header, r)) for r in cost_rows])
    write_json(out / "compare.json", result)
    return result


def demo(out: "str | Path" = "featcirc-demo", *, force: bool = False, task: str = "sva-nounpp",
         method: str = "relp", n: int = 32, max_nodes: int = 500, progress: bool = True) -> dict:
    """Discover and evaluate a circuit on the bundled tiny model with a built-in task."""
    from featcirc.tiny import heldout_path

    cfg = RunConfig(model="tiny", saes="tiny", method=method, level="feature", aggregation="none",
                    data=str(heldout_path(task)), n=n, top_k=100, max_nodes=max_nodes)
    summ = discover(cfg, out, force=force, progress=progress)
    points = evaluate(out, progress=progress)
    best = max(points, key=lambda p: (p.faithfulness >= 0.8, -p.n_nodes if p.faithfulness >= 0.8 else p.faithfulness))
    summ["faithfulness"] = [asdict(p) for p in points]
    summ["smallest_faithful"] = asdict(best)
    return summ
