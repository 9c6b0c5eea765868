"""Export circuits: node-link JSON, GraphML, Graphviz DOT and attribution-graph JSON (Neuronpedia,
circuit-tracer; :mod:`featcirc.export.neuronpedia`, :mod:`featcirc.export.graph_files`).

Every writer is atomic (``featcirc.io``) and never re-runs a model (docs/design.md §1).

``circuit.json`` is networkx node-link JSON that networkx's *default* ``nx.node_link_graph(data)``
reads back on every networkx 3.x: networkx 3.6 reads the edges from ``"edges"`` by default, 3.4 and
earlier from ``"links"``, so the file carries both keys (the same list); ``directed`` and
``multigraph`` are in the file, so the defaults give back a ``DiGraph``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import networkx as nx

from featcirc.circuit import graph_n_layers, node_label
from featcirc.export.neuronpedia import (influence_scores, to_neuronpedia, validate_neuronpedia,
                                         write_neuronpedia)
from featcirc.export.style import METRIC_COLOUR, sign_colour
from featcirc.io import atomic_path, jsonable, write_text
from featcirc.sites import METRIC, stream_index

FORMATS = ("json", "graphml", "dot", "neuronpedia")
_FLOAT_NODE_ATTRS = ("score", "activation")
_EDGE_KEYS = ("edges", "links")


# ----------------------------------------------------------------------------------------- JSON
def node_link_data(G: nx.DiGraph) -> dict:
    """Strict-JSON node-link dict of ``G`` that every networkx 3.x reads with the default
    ``nx.node_link_graph(data)``: the edge list under both ``"edges"`` (networkx >= 3.6) and
    ``"links"`` (earlier); NaN becomes ``null``."""
    with warnings.catch_warnings():  # networkx 3.4/3.5 warn that the default edge key will change
        warnings.simplefilter("ignore", FutureWarning)
        data = nx.node_link_data(G)
    edges = next((data.pop(k) for k in _EDGE_KEYS if k in data), [])
    data = jsonable(data)
    data["edges"] = data["links"] = jsonable(edges)
    return data


def write_json(G: nx.DiGraph, path: "str | os.PathLike[str]") -> Path:
    """Write ``G`` as networkx node-link JSON (:func:`node_link_data`), strict JSON: NaN is written
    as ``null`` and :func:`read_json` restores it for the float attributes."""
    data = node_link_data(G)
    return write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def read_json(path: "str | os.PathLike[str]") -> nx.DiGraph:
    """Read a graph written by :func:`write_json` (equal to the original, NaN attributes included);
    also a node-link file with only one of the ``"edges"`` / ``"links"`` keys."""
    from featcirc.run_files import read_json_file

    fix = "rerun `featcirc discover`, or write it with featcirc.export.formats.write_json"
    data = read_json_file(path, "circuit graph", fix=fix)
    if "nodes" not in data or not any(k in data for k in _EDGE_KEYS):
        raise ValueError(f"{path} is not a node-link JSON graph (no 'nodes' and 'edges'/'links'); {fix}")
    edges = next(data[k] for k in _EDGE_KEYS if k in data)
    data = {**data, "edges": edges, "links": edges, "directed": True, "multigraph": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            G = nx.node_link_graph(data)
    except (KeyError, TypeError, ValueError, AttributeError, nx.NetworkXError) as e:
        raise ValueError(f"{path} is not a valid node-link JSON graph ({type(e).__name__}: {e}); {fix}") from None
    for _, d in G.nodes(data=True):
        for k in _FLOAT_NODE_ATTRS:
            if k in d and d[k] is None:
                d[k] = float("nan")
    for _, _, d in G.edges(data=True):
        if "weight" in d and d["weight"] is None:
            d["weight"] = float("nan")
    return G


# -------------------------------------------------------------------------------------- GraphML
def _graphml_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(jsonable(v), sort_keys=True)


def write_graphml(G: nx.DiGraph, path: "str | os.PathLike[str]") -> Path:
    """Write ``G`` as GraphML. GraphML has no null and no nested values: ``None`` attributes are
    left out and lists/dicts (e.g. ``sites``, ``info``) are stored as JSON strings."""
    H = nx.DiGraph()
    H.graph.update({k: _graphml_value(v) for k, v in G.graph.items() if v is not None})
    H.add_nodes_from((n, {k: _graphml_value(v) for k, v in d.items() if v is not None})
                     for n, d in G.nodes(data=True))
    H.add_edges_from((u, v, {k: _graphml_value(x) for k, x in d.items() if x is not None})
                     for u, v, d in G.edges(data=True))
    with atomic_path(path) as tmp:
        nx.write_graphml(H, tmp)
    return Path(path)


# ------------------------------------------------------------------------------------------ DOT
def _dot_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _alpha_hex(colour: str, strength: float) -> str:
    a = int(round(255 * (0.25 + 0.75 * min(max(strength, 0.0), 1.0))))
    return f"{colour}{a:02x}"


def to_dot(G: nx.DiGraph, *, title: str = "") -> str:
    """Graphviz DOT text of a circuit (no pygraphviz needed).

    Bottom to top (``rankdir=BT``), one rank per site in forward order (embed, attn.0, mlp.0,
    resid.0, attn.1, ...; the metric on top), so every edge points up. Features are ellipses,
    error nodes boxes, component nodes rounded boxes, the metric a double octagon. Fill colour
    by the sign of the score (blue > 0, red < 0), opacity by ``|score|``; edge colour by the sign
    of the weight, pen width by ``|weight|``.
    """
    n_layers = graph_n_layers(G)
    scores = [abs(d["score"]) for n, d in G.nodes(data=True)
              if n != METRIC and math.isfinite(d.get("score", float("nan")))]
    smax = max(scores, default=0.0) or 1.0
    weights = [abs(d["weight"]) for _, _, d in G.edges(data=True) if math.isfinite(d.get("weight", float("nan")))]
    wmax = max(weights, default=0.0) or 1.0

    lines = ["digraph circuit {", "  rankdir=BT;", "  newrank=true;",
             '  node [fontname="Helvetica", fontsize=10, style=filled];',
             '  edge [arrowsize=0.5];']
    if title:
        lines.append(f'  label="{_dot_escape(title)}"; labelloc=t;')
    ranks: dict[int, list[str]] = {}
    for n, d in G.nodes(data=True):
        q = f'"{_dot_escape(n)}"'
        ranks.setdefault(stream_index(d["site"], n_layers), []).append(q)
        score = float(d.get("score", float("nan")))
        if n == METRIC:
            value = "" if not math.isfinite(score) else f"\\n{score:.3g}"
            lines.append(f'  {q} [label="metric{value}", shape=doubleoctagon, fillcolor="{METRIC_COLOUR}"];')
            continue
        shape = {"feature": "ellipse", "error": "box", "component": "box"}.get(d["kind"], "ellipse")
        style = ', style="filled,rounded"' if d["kind"] == "component" else ""
        strength = abs(score) / smax if math.isfinite(score) else 0.0
        fill = _alpha_hex(sign_colour(score), strength)
        value = f"{score:+.3g}" if math.isfinite(score) else "nan"
        lines.append(f'  {q} [label="{_dot_escape(node_label(n))}\\n{value}", shape={shape}{style}, '
                     f'fillcolor="{fill}"];')
    for r in sorted(ranks):
        lines.append(f"  {{ rank=same; {'; '.join(ranks[r])}; }}")
    for u, v, d in G.edges(data=True):
        w = float(d.get("weight", float("nan")))
        width = 0.5 + 4.5 * (abs(w) / wmax if math.isfinite(w) else 0.0)
        lines.append(f'  "{_dot_escape(u)}" -> "{_dot_escape(v)}" [color="{sign_colour(w)}", '
                     f'penwidth={width:.2f}, tooltip="{w:+.4g}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(G: nx.DiGraph, path: "str | os.PathLike[str]", *, title: str = "") -> Path:
    """Write :func:`to_dot` text to ``path`` (render with ``dot -Tsvg path``)."""
    return write_text(path, to_dot(G, title=title))


def export(G: nx.DiGraph, out_dir: "str | os.PathLike[str]", formats: Iterable[str] = FORMATS, *,
           stem: str = "circuit", **neuronpedia_kw: Any) -> dict[str, Path]:
    """Write ``G`` in each format to ``out_dir``: ``{stem}.json``, ``{stem}.graphml``, ``{stem}.dot``,
    ``{stem}.neuronpedia.json``. ``neuronpedia_kw`` go to
    :func:`featcirc.export.neuronpedia.to_neuronpedia` (``prompt`` and ``prompt_tokens`` are
    required for that format). Returns format -> path."""
    formats = list(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format(s) {bad}; choose from {list(FORMATS)}")
    if "neuronpedia" in formats:
        missing = [k for k in ("prompt", "prompt_tokens") if k not in neuronpedia_kw]
        if missing:
            raise ValueError(f"the neuronpedia format needs {missing} (pass them to export(...)) "
                             "or leave 'neuronpedia' out of formats")
    elif neuronpedia_kw:
        raise TypeError(f"unexpected arguments {sorted(neuronpedia_kw)} (they are for the neuronpedia format)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for f in formats:
        if f == "json":
            paths[f] = write_json(G, out / f"{stem}.json")
        elif f == "graphml":
            paths[f] = write_graphml(G, out / f"{stem}.graphml")
        elif f == "dot":
            paths[f] = write_dot(G, out / f"{stem}.dot")
        else:
            paths[f] = write_neuronpedia(G, out / f"{stem}.neuronpedia.json", **neuronpedia_kw)
    return paths


__all__ = ["node_link_data", "write_json", "read_json", "write_graphml", "to_dot", "write_dot", "to_neuronpedia",
           "validate_neuronpedia", "write_neuronpedia", "export", "influence_scores", "sign_colour",
           "FORMATS"]
