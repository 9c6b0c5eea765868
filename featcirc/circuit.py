"""Circuits as networkx graphs: build the full scored graph, prune it (docs/design.md §8).

A circuit is a ``networkx.DiGraph`` whose edges point upstream -> downstream (the last residual
nodes -> ``metric``). Node attributes: ``site``, ``layer``, ``kind`` (feature / error / component /
metric), ``feature`` (-1 unless a feature), ``position`` (-1 when positions are summed),
``score`` (the indirect effect, docs/design.md §5), ``activation`` (mean clean activation; L2 norm for
vector nodes). Edge attribute: ``weight`` (docs/design.md §7). Graph attributes (``G.graph``): the
provenance of the scores (method, level, aggregation, n_pairs, n_layers, sites, metric values,
cost, info) and, after :func:`prune`, the settings used.

This module never touches torch models: data flows one way, from score containers to graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import networkx as nx

from featcirc.attribution.scores import Cost, EdgeScores, NodeScores
from featcirc.sites import METRIC, NodeRef, node_id, parse_node_id, sort_sites, stream_index


@dataclass(frozen=True)
class PruneSettings:
    """How to prune a scored graph.

    ``node_threshold``: keep nodes with ``|score| >= node_threshold``.
    ``top_k``: keep the ``k`` nodes of largest ``|score|`` (ties broken by node id, so the result
    is deterministic). Both given: a node must pass both (the top k among those above the
    threshold). Neither given: every node is a candidate.
    ``edge_threshold``: keep edges with ``|weight| >= edge_threshold`` (default 0: all edges).
    ``top_k`` counts nodes before dead ends are removed, so a circuit can end up smaller than k.
    """

    node_threshold: Optional[float] = None
    top_k: Optional[int] = None
    edge_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.node_threshold is not None and not (self.node_threshold >= 0):
            raise ValueError(f"node_threshold must be >= 0 (a bound on |score|), got {self.node_threshold}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 0):
            raise ValueError(f"top_k must be a non-negative int, got {self.top_k!r}")
        if not (self.edge_threshold >= 0):
            raise ValueError(f"edge_threshold must be >= 0 (a bound on |weight|), got {self.edge_threshold}")


def magnitude(x: object) -> float:
    """``|x|`` for a score or weight; 0 for NaN, infinite or missing values (never ranked)."""
    try:
        v = abs(float(x))
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


def is_scored(x: object) -> bool:
    """True for a finite score or weight."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def node_label(nid: str) -> str:
    """A readable label for a node id: ``resid.3 f1234 @7``, ``resid.3 err @7``, ``mlp.3 @7``,
    ``metric`` (no ``@pos`` part when positions are summed)."""
    ref = parse_node_id(nid)
    if ref.kind == "metric":
        return "metric"
    parts = [ref.site.name]
    if ref.kind == "feature":
        parts.append(f"f{ref.feature}")
    elif ref.kind == "error":
        parts.append("err")
    if ref.position is not None:
        parts.append(f"@{ref.position}")
    return " ".join(parts)


def slot_labels(info: Optional[dict]) -> Optional[list[str]]:
    """The slot labels of a role- or end-aligned run (``info["align"]["slots"]``, docs/design.md §14);
    None for start, summed or older runs, whose node ids keep integer positions."""
    d = (info or {}).get("align")
    if not isinstance(d, dict) or d.get("mode") not in ("role", "end"):
        return None
    return [str(x) for x in d.get("slots", [])]


def _labelled(ref: NodeRef, attrs: dict, labels: Optional[list[str]]) -> tuple[str, dict]:
    """``(id, attributes)`` of a node whose position is a slot index; in an aligned graph the id
    carries the slot's label (``resid.3/12@S2``) and the attributes gain ``slot``."""
    if labels is None or ref.position is None or ref.kind == "metric":
        return ref.id, attrs
    pos = int(ref.position)
    if not 0 <= pos < len(labels):
        raise ValueError(f"node {ref.id} is at slot {pos} but the alignment has {len(labels)} slots")
    return node_id(ref.site, ref.kind, ref.feature, labels[pos]), dict(attrs, slot=labels[pos])


def _finite_or_none(x: float) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def full_graph(nodes: NodeScores, edges: Optional[EdgeScores] = None, *,
               n_layers: Optional[int] = None) -> nx.DiGraph:
    """Every scored node, the ``metric`` node and every scored edge, unpruned.

    Nodes come from ``nodes.iter_nodes()`` (features with a zero score are not nodes); the metric
    node has ``kind="metric"``, ``site="metric"``, ``layer=n_layers`` and ``score`` =
    ``activation`` = the mean clean metric (NaN if unknown). ``n_layers`` defaults to
    ``nodes.info["n_layers"]``, else the highest layer among the sites plus one.
    An edge endpoint missing from ``nodes`` (a node whose score was exactly zero) is added with
    ``score=0`` and attributes parsed from its id; ``G.graph["n_edge_only_nodes"]`` counts them.
    With ``edges=None``, ``G.graph["has_edges"]`` is False and :func:`prune` keeps nodes by score
    alone. Scores aligned by role or from the end (``nodes.info["align"]``, docs/design.md §14) give
    node ids with the slot's label (``resid.3/12@S2``, ``attn.0@END-2``) and a ``slot`` attribute;
    ``position`` stays the slot index.
    """
    if edges is not None and edges.aggregation != nodes.aggregation:
        raise ValueError(
            f"node scores are aggregation={nodes.aggregation!r} but edge scores are "
            f"aggregation={edges.aggregation!r}; score nodes and edges with the same aggregation"
        )
    if n_layers is None:
        n_layers = nodes.info.get("n_layers")
    top = max((s.layer for s in sort_sites(nodes.sites)), default=-1)
    n_layers = int(top + 1 if n_layers is None else n_layers)
    if top >= n_layers:
        raise ValueError(f"n_layers={n_layers} but the scores have sites up to layer {top}; "
                         "pass the model's n_layers")

    labels = slot_labels(nodes.info)
    G = nx.DiGraph()
    for ref, score, act in nodes.iter_refs():
        nid, attrs = _labelled(ref, ref.attributes(score, act), labels)
        G.add_node(nid, **attrs)
    clean = float(nodes.metric_clean)
    G.add_node(METRIC, **NodeRef(None, "metric").attributes(clean, clean, n_layers))

    n_added = 0
    site_order: dict[str, int] = {}

    def order(site: str) -> int:
        if site not in site_order:
            site_order[site] = stream_index(site, n_layers)
        return site_order[site]

    if edges is not None:
        summed = nodes.aggregation == "sum"
        mapped: dict[str, str] = {}  # edge-score id -> graph id
        for u, v, w in edges.items():
            if not math.isfinite(w):
                raise ValueError(f"edge {u} -> {v} has a non-finite weight {w}")
            if u == METRIC:
                raise ValueError(f"edge {u} -> {v} leaves the metric node; edges are (upstream, downstream)")
            ends = []
            for end in (u, v):
                if end in mapped:
                    ends.append(mapped[end])
                    continue
                if end in G and (labels is None or end == METRIC):
                    ends.append(end)
                    continue
                raw = end
                ref = parse_node_id(end)
                if labels is not None and isinstance(ref.position, str):
                    raise ValueError(f"edge endpoint {end!r}: edge scores name slots by index")
                attrs = ref.attributes(0.0, float("nan"))
                if (attrs["position"] == -1) != summed:
                    raise ValueError(f"edge endpoint {end!r} does not match aggregation={nodes.aggregation!r}")
                end, attrs = _labelled(ref, attrs, labels)
                mapped[raw] = end
                ends.append(end)
                if end in G:
                    continue
                G.add_node(end, **attrs)
                n_added += 1
            u, v = ends
            su, sv = order(G.nodes[u]["site"]), order(G.nodes[v]["site"])
            if su >= sv:
                raise ValueError(
                    f"edge {u} -> {v} does not point downstream; EdgeScores keys must be "
                    "(upstream_id, downstream_id) (docs/design.md §7)"
                )
            G.add_edge(u, v, weight=w)

    edge_cost = edges.cost if edges is not None else Cost()
    G.graph.update(
        method=nodes.method, level=nodes.level, aggregation=nodes.aggregation,
        n_pairs=int(nodes.n_pairs), n_layers=n_layers,
        sites=[s.name for s in sort_sites(nodes.sites)],
        metric_clean=_finite_or_none(nodes.metric_clean),
        metric_patch=_finite_or_none(nodes.metric_patch),
        has_edges=edges is not None,
        edge_method=None if edges is None else edges.method,
        cost_seconds=float(nodes.cost.seconds + edge_cost.seconds),
        forward_passes=int(nodes.cost.forward_passes + edge_cost.forward_passes),
        backward_passes=int(nodes.cost.backward_passes + edge_cost.backward_passes),
        info=dict(nodes.info),
        n_edge_only_nodes=n_added,
    )
    return G


def graph_n_layers(G: nx.DiGraph) -> int:
    """The model's layer count for a graph: ``G.graph["n_layers"]``, else the metric node's layer."""
    if G.graph.get("n_layers") is not None:
        return int(G.graph["n_layers"])
    if METRIC in G:
        return int(G.nodes[METRIC]["layer"])
    return 1 + max((int(d["layer"]) for _, d in G.nodes(data=True)), default=-1)


def _check_graph(G: nx.DiGraph) -> None:
    if METRIC not in G:
        raise ValueError("the graph has no 'metric' node; build it with featcirc.circuit.full_graph")


def _has_edges(G: nx.DiGraph) -> bool:
    flag = G.graph.get("has_edges")
    return bool(flag) if flag is not None else G.number_of_edges() > 0


def prune(G: nx.DiGraph, settings: PruneSettings) -> nx.DiGraph:
    """Prune a scored graph into a circuit (docs/design.md §8); returns a new graph.

    1. Candidates: non-metric nodes with ``|score| >= node_threshold`` and/or the ``top_k`` by
       ``|score|`` (ties by node id; NaN scores never pass). ``metric`` is always kept.
    2. Edges among kept nodes with ``|weight| >= edge_threshold``.
    3. Every node on no directed path to ``metric`` is dropped (dead ends).

    Graphs built without edge scores (``G.graph["has_edges"]`` False) skip step 3: the circuit
    is the node set chosen in step 1, with no edges. A graph with edge scores but none surviving
    prunes to ``metric`` alone.
    """
    _check_graph(G)
    cands = [(n, d) for n, d in G.nodes(data=True) if n != METRIC]

    cands = [(n, d) for n, d in cands if is_scored(d.get("score"))]  # NaN scores never pass
    if settings.node_threshold is not None:
        cands = [(n, d) for n, d in cands if magnitude(d["score"]) >= settings.node_threshold]
    if settings.top_k is not None:
        cands = sorted(cands, key=lambda nd: (-magnitude(nd[1]["score"]), nd[0]))[: settings.top_k]
    H = circuit_from_nodes(G, {n for n, _ in cands}, edge_threshold=settings.edge_threshold)
    H.graph.update(node_threshold=settings.node_threshold, top_k=settings.top_k)
    return H


def circuit_from_nodes(G: nx.DiGraph, nodes: Iterable[str], *, edge_threshold: float = 0.0) -> nx.DiGraph:
    """The circuit of ``G`` on a chosen node set (:func:`prune`'s steps 2 and 3, for any pruner, e.g. the
    learned mask, :mod:`featcirc.pruning`): ``nodes`` and ``metric``, the edges among them with
    ``|weight| >= edge_threshold``, dead ends dropped when ``G`` has edge scores."""
    _check_graph(G)
    nodes = list(nodes)
    keep = set(nodes) | {METRIC}
    missing = [n for n in nodes if n not in G]
    if missing:
        raise ValueError(f"{len(missing)} nodes are not in the scored graph, e.g. {missing[0]}")
    H = nx.DiGraph()
    H.graph.update(G.graph)
    H.graph.update(edge_threshold=float(edge_threshold), n_nodes_unpruned=G.number_of_nodes() - 1)
    H.add_nodes_from((n, dict(d)) for n, d in G.nodes(data=True) if n in keep)
    H.add_edges_from(
        (u, v, dict(d)) for u in list(H) for v, d in G.adj[u].items()
        if v in keep and abs(float(d.get("weight", 0.0))) >= edge_threshold
    )
    if _has_edges(G):
        alive = nx.ancestors(H, METRIC) | {METRIC}
        H.remove_nodes_from([n for n in list(H.nodes) if n not in alive])
    return H


def circuit_nodes(G: nx.DiGraph) -> set[str]:
    """The circuit's node ids, ``metric`` excluded."""
    return {n for n in G.nodes if n != METRIC}


def node_threshold_sweep(G: nx.DiGraph, thresholds: Iterable[float], *,
                         edge_threshold: float = 0.0) -> list[nx.DiGraph]:
    """One pruned circuit per node threshold, in the given order (for faithfulness curves, docs/design.md §9)."""
    return [prune(G, PruneSettings(node_threshold=float(t), edge_threshold=edge_threshold))
            for t in thresholds]


def summary(G: nx.DiGraph) -> dict:
    """Counts of a graph: nodes by kind (metric excluded), edges, and the nodes' total |score|."""
    counts = {"feature": 0, "error": 0, "component": 0}
    total = 0.0
    for n, d in G.nodes(data=True):
        if n == METRIC:
            continue
        counts[d["kind"]] = counts.get(d["kind"], 0) + 1
        total += magnitude(d.get("score"))
    return dict(n_nodes=sum(counts.values()), n_features=counts["feature"], n_errors=counts["error"],
                n_components=counts["component"], n_edges=G.number_of_edges(), total_abs_score=total)


__all__ = ["PruneSettings", "full_graph", "prune", "circuit_from_nodes", "circuit_nodes", "node_threshold_sweep",
           "node_label", "slot_labels", "magnitude", "is_scored", "stream_index", "graph_n_layers", "summary"]
