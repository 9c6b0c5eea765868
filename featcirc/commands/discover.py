"""``featcirc discover``: score nodes and edges, prune, export and draw a circuit."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from featcirc.commands.common import RunConfig, example_prompt, load_data, load_model_and_saes
from featcirc.io import prepare_out_dir, write_json


def discover(cfg: RunConfig, out: "str | Path", *, force: bool = False, progress: bool = True) -> dict:
    """Score nodes and edges, build and prune the circuit, export and draw it."""
    import torch

    from featcirc.circuit import PruneSettings, full_graph, prune, summary
    from featcirc.attribution import AttributionSettings, attribute
    from featcirc.export.formats import write_dot, write_graphml, write_json as write_graph_json, write_neuronpedia
    from featcirc.models.loading import model_info
    from featcirc.export.plot import draw_circuit

    out = prepare_out_dir(out, force, "run.json")
    torch.manual_seed(cfg.seed)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    model, saes = load_model_and_saes(cfg.model, cfg.saes, cfg.level)
    phases["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = load_data(model, cfg)
    phases["data"] = time.perf_counter() - t0
    write_json(out / "run.json", asdict(cfg))
    settings = AttributionSettings(level=cfg.level, aggregation=cfg.aggregation, ig_steps=cfg.ig_steps,
                                   max_nodes=cfg.max_nodes, progress=progress)
    nodes, edges = attribute(model, data, cfg.method, saes, settings=settings)
    phases["nodes"] = nodes.cost.seconds
    phases["edges"] = edges.cost.seconds
    nodes.info["model"] = cfg.model
    nodes.save(out / "nodes.pt")
    edges.save(out / "edges.pt")
    t0 = time.perf_counter()
    G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
    C = prune(G, PruneSettings(cfg.node_threshold, cfg.top_k, cfg.edge_threshold))
    prompt, tokens = example_prompt(model, data)
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
        prompt=prompt, prompt_tokens=tokens,
    )
    write_json(out / "summary.json", summ)
    return summ


HELP = "score nodes and edges, prune, export and draw a circuit"


def add_arguments(p) -> None:
    from featcirc.attribution.methods import method_names
    from featcirc.commands.common import add_data_arguments

    p.add_argument("--model", required=True, help="tiny, gemma-3-270m, or a TransformerLens model name")
    p.add_argument("--saes", help="SAE set: tiny, a named set, a directory of SAELens SAEs (omit for --level component)")
    add_data_arguments(p)
    p.add_argument("--method", choices=method_names(with_edges=True), default="relp",
                   help="attribution method (default: relp)")
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


def run(args, progress: bool) -> int:
    level = args.level or ("feature" if args.saes else "component")
    top_k = args.top_k if (args.top_k is not None or args.node_threshold is not None) else 100
    cfg = RunConfig(
        model=args.model, saes=args.saes, method=args.method, level=level,
        aggregation=args.aggregation, data=args.data, task=args.task,
        n=args.n if args.n is not None else 64, seed=args.seed, batch_size=args.batch_size,
        ig_steps=args.ig_steps, max_nodes=args.max_nodes, node_threshold=args.node_threshold,
        top_k=top_k, edge_threshold=args.edge_threshold)
    summ = discover(cfg, args.out, force=args.force, progress=progress)
    print(f"circuit: {summ['n_nodes']} nodes, {summ['n_edges']} edges from {summ['pairs_used']} pairs "
          f"-> {args.out}/ (circuit.json, .graphml, .dot, neuronpedia.json, circuit.png, summary.json)")
    return 0
