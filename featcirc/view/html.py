"""The circuit viewer: one self-contained HTML file (no network, no library) showing a scored
graph by layer and token position, with in-page re-pruning and feature cards.

What the page embeds (a subset of the full graph, so the file stays small):

- nodes: the ``max_nodes`` non-metric nodes of largest ``|score|`` (ties by id, the order of
  :func:`featcirc.circuit.prune`), plus every node of ``circuit`` if one is given, plus ``metric``;
- edges: every edge among them, or the ``max_edges`` of largest ``|weight|`` (ties by ids) when
  there are more, plus every edge of ``circuit``.

The page prunes this graph with the rule of :func:`featcirc.circuit.prune` (top k and/or
``|score| >= t``, edges with ``|weight| >= e``, then nodes with no path to ``metric`` dropped), so
for ``k <= max_nodes`` (or ``t`` at or above the smallest embedded ``|score|``) it shows exactly
the circuit that ``prune`` gives on the full graph, as long as the edge cap dropped nothing. Its
controls start at ``circuit``'s pruning settings (``G.graph["top_k"]``, ``["node_threshold"]``,
``["edge_threshold"]``, set by ``prune``).

The header shows the exported circuit's faithfulness ``F`` under each ablation measured (value,
interval and ablation of each; split, pairs, node count; ``faithfulness``, a list) and says when the controls show another circuit than the one ``F``
was measured for; the metric's star shows the example prompt's own ``m`` and answers (``example``)
beside the mean over the pairs, labelled as a mean. The graph is laid out to fit the window (cells
wrap into more lines before labels are dropped); what does not fit scrolls inside the graph's pane.

The page itself is ``assets/viewer.html`` with ``viewer.css`` and ``viewer.js`` inlined; the
graph travels as JSON in a ``<script type="application/json">`` element. Strings from the run
(tokens, prompts, answers, title) are escaped or set as text, never parsed as markup.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import networkx as nx

from featcirc.circuit import PruneSettings, graph_n_layers, is_scored, magnitude, prune
from featcirc.export.style import (METRIC_COLOUR, NEGATIVE_COLOUR, NEUTRAL_COLOUR, POSITIVE_COLOUR, SIGN_LEGEND,
                                   SITE_COLOURS, count, example_info, faithfulness_info)
from featcirc.io import jsonable, write_text
from featcirc.sites import METRIC, stream_index

FORMAT = "featcirc-view/1"
CARDS_FORMAT_PREFIX = "featcirc-cards/"
DEFAULT_MAX_NODES = 300
DEFAULT_MAX_EDGES = 20000
_PLACEHOLDER = re.compile(r"\{\{(TITLE|CSS|JS|DATA)\}\}")


def _asset(name: str) -> str:
    return resources.files("featcirc.view").joinpath("assets", name).read_text(encoding="utf-8")


def _number(x: Any) -> Optional[float]:
    """A finite float, or None (JSON null) for NaN, infinite or missing values."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _rank_key(G: nx.DiGraph, n: str) -> tuple[float, str]:
    return -magnitude(G.nodes[n].get("score")), n


def _prune_settings(circuit: nx.DiGraph) -> Optional[PruneSettings]:
    """The settings ``circuit`` was pruned with (``prune`` stores them in ``G.graph``), if any."""
    g = circuit.graph
    if "top_k" not in g and "node_threshold" not in g:
        return None
    top_k, thr = g.get("top_k"), g.get("node_threshold")
    return PruneSettings(node_threshold=None if thr is None else float(thr),
                         top_k=None if top_k is None else int(top_k),
                         edge_threshold=float(g.get("edge_threshold") or 0.0))


def _describe(settings: PruneSettings) -> str:
    parts = []
    if settings.top_k is not None:
        parts.append(f"top {settings.top_k} nodes")
    if settings.node_threshold is not None:
        parts.append(f"|score| >= {settings.node_threshold:.4g}")
    if settings.edge_threshold:
        parts.append(f"|weight| >= {settings.edge_threshold:.4g}")
    return ", ".join(parts) or "every scored node"


def _cards_for(G: nx.DiGraph, embedded: Sequence[str], cards: Optional[Mapping]) -> tuple[dict, Optional[dict]]:
    """The cards of the embedded feature nodes (keyed ``site/feature``) and the cards file's
    provenance. ``cards`` is a ``featcirc-cards/1`` object (``DIR/cards.json``) or a plain mapping
    from ``site/feature`` to card."""
    if cards is None:
        return {}, None
    if not isinstance(cards, Mapping):
        raise ValueError(f"cards must be a featcirc-cards object (a dict), got {type(cards).__name__}")
    info = None
    mapping = cards
    if "format" in cards or "cards" in cards:
        fmt = cards.get("format")
        if not (isinstance(fmt, str) and fmt.startswith(CARDS_FORMAT_PREFIX)):
            raise ValueError(f"cards have format {fmt!r}, expected {CARDS_FORMAT_PREFIX}1; "
                             "regenerate cards.json with featcirc")
        mapping = cards.get("cards")
        if not isinstance(mapping, Mapping):
            raise ValueError("cards has no 'cards' mapping from 'site/feature' to a card; regenerate cards.json")
        corpus = cards.get("corpus")
        corpus_name = corpus.get("name") if isinstance(corpus, Mapping) else corpus
        info = {"model": cards.get("model"), "corpus": corpus_name}
    else:
        info = {"model": None, "corpus": None}
    wanted = sorted({f"{G.nodes[n]['site']}/{int(G.nodes[n]['feature'])}" for n in embedded
                     if G.nodes[n].get("kind") == "feature"})
    out = {}
    for key in wanted:
        card = mapping.get(key)
        if card is None:
            continue
        if not isinstance(card, Mapping):
            raise ValueError(f"the card of {key} is a {type(card).__name__}, expected an object")
        out[key] = jsonable(dict(card))
    return out, info


def viewer_data(G_full: nx.DiGraph, *, circuit: Optional[nx.DiGraph] = None,
                tokens: Optional[Sequence[str]] = None, cards: Optional[Mapping] = None,
                title: str = "", max_nodes: int = DEFAULT_MAX_NODES,
                max_edges: int = DEFAULT_MAX_EDGES, example: Optional[Mapping] = None,
                faithfulness: Optional[Mapping] = None) -> dict:
    """The JSON the page reads: the embedded nodes and edges (see the module doc), the prompt's
    tokens, the pruning the controls start at, the caps, the feature cards, the colours, the
    example prompt's own metric and the exported circuit's faithfulness (``example`` / ``faithfulness``
    read by :func:`featcirc.export.style.example_info` / ``faithfulness_info``)."""
    if METRIC not in G_full:
        raise ValueError("the graph has no 'metric' node; build it with featcirc.circuit.full_graph")
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1:
        raise ValueError(f"max_nodes must be a positive int, got {max_nodes!r}")
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 0:
        raise ValueError(f"max_edges must be a non-negative int, got {max_edges!r}")
    n_layers = graph_n_layers(G_full)
    others = [n for n in G_full if n != METRIC]
    per_position = any(int(G_full.nodes[n].get("position", -1)) >= 0 for n in others)
    aggregation = G_full.graph.get("aggregation") or ("none" if per_position else "sum")

    # nodes: the largest |score| first, then the circuit's
    ranked = sorted(others, key=lambda n: _rank_key(G_full, n))
    embedded = ranked[:max_nodes]
    chosen = set(embedded)
    circuit_nodes: list[str] = []
    if circuit is not None:
        missing = [n for n in circuit if n not in G_full]
        if missing:
            raise ValueError(f"circuit node {missing[0]!r} (and {len(missing) - 1} more) is not in the full "
                             "graph; pass the graph the circuit was pruned from")
        circuit_nodes = sorted((n for n in circuit if n != METRIC and n not in chosen),
                               key=lambda n: _rank_key(G_full, n))
        embedded = embedded + circuit_nodes
        chosen.update(circuit_nodes)
    order = [METRIC] + embedded
    index = {n: i for i, n in enumerate(order)}

    # edges among them: the strongest first, then the circuit's
    among = sorted(((u, v, float(d.get("weight", float("nan")))) for u, v, d in G_full.edges(data=True)
                    if u in index and v in index), key=lambda e: (-magnitude(e[2]), e[0], e[1]))
    kept = among[:max_edges]
    if circuit is not None and len(among) > max_edges:
        have = {(u, v) for u, v, _ in kept}
        kept += [e for e in among[max_edges:] if circuit.has_edge(e[0], e[1]) and (e[0], e[1]) not in have]

    # tokens
    n_positions = 1 + max((int(G_full.nodes[n].get("position", -1)) for n in others), default=-1)
    if tokens is not None:
        tokens = [str(t) for t in tokens]
        if per_position and len(tokens) < n_positions:
            raise ValueError(f"tokens has {len(tokens)} entries but node positions go up to {n_positions - 1}; "
                             "pass the token strings of the prompt the positions index into")
        n_positions = max(n_positions, len(tokens)) if per_position else 0

    # the controls start at the circuit's pruning, if it can be read off the circuit
    initial = PruneSettings(top_k=min(100, max(1, len(ranked))))
    circuit_info = None
    if circuit is not None:
        settings = _prune_settings(circuit)
        if settings is not None:
            initial = settings
        else:  # a hand-made circuit: its smallest |score| as the bound
            mags = [magnitude(circuit.nodes[n].get("score")) for n in circuit if n != METRIC]
            initial = PruneSettings(node_threshold=min(mags) if mags else None)
        sub = nx.DiGraph()  # what the page holds, pruned as the page will
        sub.graph.update(G_full.graph)
        sub.add_nodes_from((n, G_full.nodes[n]) for n in order)
        sub.add_edges_from((u, v, {"weight": w}) for u, v, w in kept)
        reproduced = set(prune(sub, initial)) == set(circuit)
        circuit_info = dict(n_nodes=circuit.number_of_nodes() - (METRIC in circuit), n_edges=circuit.number_of_edges(),
                            reproduced=reproduced, settings=_describe(initial),
                            nodes=sorted(index[n] for n in circuit if n != METRIC))

    card_map, cards_info = _cards_for(G_full, embedded, cards)
    node_cols: dict[str, list] = {k: [] for k in ("id", "site", "layer", "kind", "feature", "position",
                                                  "score", "activation")}
    for n in order:
        d = G_full.nodes[n]
        node_cols["id"].append(n)
        node_cols["site"].append(str(d.get("site", METRIC if n == METRIC else "")))
        node_cols["layer"].append(int(d.get("layer", n_layers)))
        node_cols["kind"].append(str(d.get("kind", "metric" if n == METRIC else "feature")))
        node_cols["feature"].append(int(d.get("feature", -1)))
        node_cols["position"].append(int(d.get("position", -1)))
        node_cols["score"].append(_number(d.get("score")))
        node_cols["activation"].append(_number(d.get("activation")))
    sites = sorted({str(s) for s in (G_full.graph.get("sites") or [])} |
                   {str(G_full.nodes[n]["site"]) for n in embedded},
                   key=lambda s: stream_index(s, n_layers))
    g = G_full.graph
    ex = example_info(example)
    n_mean = (ex or {}).get("n_pairs_mean") or count(g.get("n_pairs")) or None
    over = f"over {n_mean} pairs" if n_mean else "over the pairs"
    subtitle = " \u00b7 ".join(x for x in (
        f"method {g['method']}" if g.get("method") else "",
        f"{g['level']} level" if g.get("level") else "",
        "positions summed" if aggregation == "sum" else "per token position",
        f"{g['n_pairs']} prompt pairs" if g.get("n_pairs") else "",
        (f"mean metric {over}: clean {g['metric_clean']:.3g}, patch {g['metric_patch']:.3g}"
         if is_scored(g.get("metric_clean")) and is_scored(g.get("metric_patch")) else ""),
    ) if x)
    return {
        "format": FORMAT,
        "title": title or "featcirc circuit",
        "subtitle": subtitle,
        "aggregation": aggregation,
        "n_layers": n_layers,
        "n_positions": n_positions if per_position else 0,
        "tokens": tokens,
        "sites": sites,
        "has_edges": bool(g.get("has_edges", G_full.number_of_edges() > 0)),
        "metric": {"clean": _number(G_full.nodes[METRIC].get("score")), "patch": _number(g.get("metric_patch")),
                   "n_pairs": n_mean},
        "example": ex,
        "faithfulness": faithfulness_info(faithfulness),
        "nodes": node_cols,
        "edges": {"source": [index[u] for u, _, _ in kept], "target": [index[v] for _, v, _ in kept],
                  "weight": [_number(w) for _, _, w in kept]},
        "initial": {"top_k": initial.top_k, "node_threshold": initial.node_threshold,
                    "edge_threshold": initial.edge_threshold},
        "circuit": circuit_info,
        "caps": {"max_nodes": max_nodes, "max_edges": max_edges, "nodes_embedded": len(embedded),
                 "nodes_scored": len(others), "circuit_extra": len(circuit_nodes),
                 "min_embedded_abs_score": (magnitude(G_full.nodes[ranked[:max_nodes][-1]].get("score"))
                                            if ranked else None),
                 "edges_embedded": len(kept), "edges_among_embedded": len(among),
                 "edges_scored": G_full.number_of_edges()},
        "cards": card_map,
        "cards_info": cards_info,
        "style": {"positive": POSITIVE_COLOUR, "negative": NEGATIVE_COLOUR, "neutral": NEUTRAL_COLOUR,
                  "metric": METRIC_COLOUR, "bands": {k: list(v) for k, v in SITE_COLOURS.items()},
                  "sign_legend": list(SIGN_LEGEND)},
    }


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' (so no '</script>'), no U+2028/9."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render_html(data: dict) -> str:
    """The page for :func:`viewer_data`'s output: the template with its CSS, JS and data inlined."""
    parts = {"TITLE": html.escape(data["title"]), "CSS": _asset("viewer.css"), "JS": _asset("viewer.js"),
             "DATA": _script_json(data)}
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], _asset("viewer.html"))


def write_viewer(G_full: nx.DiGraph, path: "str | os.PathLike[str]", *, circuit: Optional[nx.DiGraph] = None,
                 tokens: Optional[Sequence[str]] = None, cards: Optional[Mapping] = None, title: str = "",
                 max_nodes: int = DEFAULT_MAX_NODES, max_edges: int = DEFAULT_MAX_EDGES,
                 example: Optional[Mapping] = None, faithfulness: Optional[Mapping] = None) -> Path:
    """Write the viewer for the full scored graph ``G_full`` (:func:`featcirc.circuit.full_graph`)
    to ``path`` (atomically), its controls starting at ``circuit``'s pruning.

    ``tokens``: the example prompt's token strings (node positions index into them); ``cards``:
    the ``featcirc-cards/1`` object of ``DIR/cards.json``, or None; ``title``: shown as is (pass
    no absolute paths); ``max_nodes`` / ``max_edges``: the caps on what is embedded;
    ``example`` / ``faithfulness``: summary.json's entries of those names (``faithfulness``: ablation
    -> record, or an older run's single record), or None (older runs: the page then shows only the
    mean metric, labelled as such, and no ``F``).
    """
    data = viewer_data(G_full, circuit=circuit, tokens=tokens, cards=cards, title=title,
                       max_nodes=max_nodes, max_edges=max_edges, example=example, faithfulness=faithfulness)
    return write_text(path, render_html(data))


__all__ = ["write_viewer", "viewer_data", "render_html", "FORMAT", "DEFAULT_MAX_NODES", "DEFAULT_MAX_EDGES"]
