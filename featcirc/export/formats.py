"""Export circuits: node-link JSON, GraphML, Graphviz DOT and Neuronpedia's attribution-graph JSON.

Every writer is atomic (``featcirc.io``) and never re-runs a model (DESIGN §1).

Neuronpedia mapping (schema: neuronpedia ``apps/webapp/app/api/graph/graph-schema.json``, as written
by circuit-tracer's ``create_graph_files``):

============  =======================================================================
our node      Neuronpedia node
============  =======================================================================
feature       ``feature_type="cross layer transcoder"`` (the viewer's type for dictionary
              features), ``feature`` = the SAE feature index
error         ``feature_type="mlp reconstruction error"``, ``feature=-1`` (as circuit-tracer's
              error nodes); used for every site kind, the viewer has no per-site error types
component     ``feature_type="mlp reconstruction error"``, ``feature=-1``: an opaque vector node
              without a feature dashboard, like an error node
metric        ``feature_type="logit"``, ``feature=-1``, ``is_target_logit=True``, ``clerp``
              ``Output "logit diff = ..." (p=1.000)``: the viewer parses ``(p=...)`` out of
              logit labels; p is a placeholder, the metric is a logit difference
============  =======================================================================

``node_id`` and ``jsNodeId`` are our node ids (unique; circuit-tracer defaults jsNodeId to node_id).
``layer`` is the transformer layer as a string, ``"E"`` for the embed site, and ``n_layers`` for
the metric (the viewer moves logit nodes above the top layer itself). Attention, MLP and residual
nodes of one layer therefore share a row in the viewer. ``ctx_idx`` is the token position (0 when
positions are summed; the metric sits at the last prompt token). ``clerp`` is a readable label
(``resid.3 f1234 @7``); the viewer relabels error nodes itself. ``influence`` follows
circuit-tracer: nodes sorted by ``|score|`` (descending, ties by id), influence = cumulative
``|score|`` up to and including the node / total, so the viewer's ``node_threshold`` (a
cumulative-influence fraction in [0, 1]) keeps the nodes carrying that share of the total effect;
the metric node has ``influence=None`` like circuit-tracer's logit nodes. Extra keys ``site``,
``kind``, ``score`` and ``position`` carry our own attributes. Non-finite numbers become ``null``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import networkx as nx

from featcirc.circuit import graph_n_layers, magnitude, node_label
from featcirc.export.style import METRIC_COLOUR, sign_colour
from featcirc.io import atomic_path, write_text
from featcirc.sites import METRIC, stream_index


FORMATS = ("json", "graphml", "dot", "neuronpedia")
_FLOAT_NODE_ATTRS = ("score", "activation")
_FEATURE_TYPE = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                 "component": "mlp reconstruction error", "metric": "logit"}
_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _jsonable(x: Any) -> Any:
    """Strict-JSON copy: non-finite floats -> None, tuples -> lists, other objects -> str, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return _jsonable(float(x))
    return str(x)  # anything else (e.g. a tensor in ``info``) as text


# ----------------------------------------------------------------------------------------- JSON
def write_json(G: nx.DiGraph, path: "str | os.PathLike[str]") -> Path:
    """Write ``G`` as networkx node-link JSON (``nodes`` / ``links``), strict JSON: NaN is written
    as ``null`` and :func:`read_json` restores it for the float attributes."""
    data = _jsonable(nx.node_link_data(G, edges="links"))
    return write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def read_json(path: "str | os.PathLike[str]") -> nx.DiGraph:
    """Read a graph written by :func:`write_json` (equal to the original, NaN attributes included)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "nodes" not in data or "links" not in data:
        raise ValueError(f"{path} is not a node-link JSON graph (no 'nodes'/'links'); "
                         "write it with featcirc.export.write_json")
    G = nx.node_link_graph(data, directed=True, multigraph=False, edges="links")
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
    return json.dumps(_jsonable(v), sort_keys=True)


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


# ---------------------------------------------------------------------------------- Neuronpedia
def influence_scores(G: nx.DiGraph) -> dict[str, float]:
    """circuit-tracer-style cumulative influence of every non-metric node (see the module doc).

    Nodes ranked by ``|score|`` descending (ties by id); ``influence(n)`` = sum of ``|score|`` of
    the nodes ranked up to n / the total, in (0, 1], the last node exactly 1. Non-finite scores
    count as 0; when every score is 0 each node gets 1.0.
    """
    ranked = sorted(((n, magnitude(d.get("score"))) for n, d in G.nodes(data=True) if n != METRIC), key=lambda t: (-t[1], t[0]))
    cum, out = 0.0, {}
    cums = []
    for _, m in ranked:
        cum += m
        cums.append(cum)
    total = cums[-1] if cums else 0.0
    for (n, _), c in zip(ranked, cums):
        out[n] = min(c / total, 1.0) if total > 0 else 1.0
    return out


def _opt(x: Any) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def to_neuronpedia(G: nx.DiGraph, *, slug: str, prompt: str, prompt_tokens: Iterable[str],
                   node_threshold: float = 1.0, info: Optional[dict] = None,
                   scan: Optional[str] = None) -> dict:
    """A circuit as Neuronpedia attribution-graph JSON (mapping in the module docstring).

    ``slug``: the graph's name (letters, digits, ``-``, ``_``, ``.``). ``prompt`` / ``prompt_tokens``:
    one example prompt and its tokens as strings; for per-position circuits every node position
    must be a token index. ``node_threshold``: the viewer's default pruning, a cumulative-influence
    fraction in [0, 1] (1.0 shows every node) — not the ``|score|`` threshold used by
    :func:`featcirc.circuit.prune`, which goes to ``metadata.pruning_settings``. ``info``: merged
    into ``metadata.info`` (description, creator_name, ...). ``scan``: the model id Neuronpedia
    files the graph under; default ``G.graph["info"]["model"]``, else ``"featcirc"``.
    Neuronpedia's viewer needs at least one non-metric node above layer 0 to lay a graph out.
    """
    if not isinstance(slug, str) or not _SLUG_RE.match(slug):
        raise ValueError(f"slug {slug!r} must be non-empty letters, digits, '-', '_' or '.' "
                         "(it names the graph's URL and file)")
    node_threshold = float(node_threshold)
    if not (0.0 <= node_threshold <= 1.0):
        raise ValueError(
            f"node_threshold={node_threshold} must be in [0, 1]: Neuronpedia prunes by cumulative "
            "influence (the share of total |score| kept), not by the |score| bound given to prune()"
        )
    tokens = [str(t) for t in prompt_tokens]
    if METRIC not in G:
        raise ValueError("the graph has no 'metric' node; build it with featcirc.circuit.full_graph")
    gi = G.graph.get("info") or {}
    if isinstance(gi, str):  # a graph read back from GraphML
        try:
            gi = json.loads(gi)
        except json.JSONDecodeError:
            gi = {}
    scan = scan or (gi.get("model") if isinstance(gi, dict) else None) or "featcirc"
    per_position = any(int(d.get("position", -1)) >= 0 for n, d in G.nodes(data=True) if n != METRIC)
    if per_position:
        max_pos = max(int(d["position"]) for n, d in G.nodes(data=True) if n != METRIC)
        if max_pos >= len(tokens):
            raise ValueError(
                f"the circuit has nodes at position {max_pos} but prompt_tokens has {len(tokens)} "
                "tokens; pass the tokens of a longest prompt of the dataset (positions index them)"
            )

    influence = influence_scores(G)
    clean = _opt(G.nodes[METRIC].get("score"))
    nodes = []
    for n, d in G.nodes(data=True):
        kind = d["kind"]
        if kind == "metric":
            label = "logit diff" + (f" = {clean:.3f}" if clean is not None else "")
            nodes.append(dict(
                node_id=n, feature=-1, layer=str(d["layer"]),
                ctx_idx=(len(tokens) - 1 if per_position and tokens else 0),
                feature_type="logit", jsNodeId=n, clerp=f'Output "{label}" (p=1.000)',
                influence=None, activation=clean, is_target_logit=True, token_prob=1.0,
                site=METRIC, kind="metric", score=clean, position=-1,
            ))
            continue
        if kind not in _FEATURE_TYPE:
            raise ValueError(f"node {n!r} has unknown kind {kind!r}")
        pos = int(d.get("position", -1))
        nodes.append(dict(
            node_id=n, feature=int(d["feature"]) if kind == "feature" else -1,
            layer="E" if d["site"] == "embed" else str(int(d["layer"])),
            ctx_idx=max(pos, 0), feature_type=_FEATURE_TYPE[kind], jsNodeId=n,
            clerp=node_label(n), influence=influence[n], activation=_opt(d.get("activation")),
            site=d["site"], kind=kind, score=_opt(d.get("score")), position=pos,
        ))
    links = []
    for u, v, d in G.edges(data=True):
        w = float(d["weight"])
        if not math.isfinite(w):
            raise ValueError(f"edge {u} -> {v} has a non-finite weight {w}")
        links.append(dict(source=u, target=v, weight=w))

    meta_info: dict[str, Any] = {"generator": {"name": "featcirc", "version": _version()}}
    meta_info.update(info or {})
    pruning = {name: G.graph[k] for k, name in (("node_threshold", "node_score_threshold"), ("top_k", "top_k"),
                                                ("edge_threshold", "edge_weight_threshold"))
               if G.graph.get(k) is not None}
    generation = {k: G.graph[k] for k in ("method", "level", "aggregation", "n_pairs", "edge_method",
                                          "metric_clean", "metric_patch") if G.graph.get(k) is not None}
    metadata = dict(slug=slug, scan=scan, transcoder_list=[], prompt_tokens=tokens, prompt=str(prompt),
                    node_threshold=node_threshold, info=_jsonable(meta_info),
                    generation_settings=_jsonable(generation),
                    pruning_settings=_jsonable(pruning))
    qparams = dict(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos="")
    return dict(metadata=metadata, qParams=qparams, nodes=nodes, links=links)


def _version() -> str:
    from featcirc import __version__

    return __version__


def validate_neuronpedia(data: dict) -> None:
    """Check a Neuronpedia graph dict against the attribution-graph schema (required keys and
    types at every level, unique node ids, links between existing nodes, strict JSON); raise
    ``ValueError`` listing every problem."""
    errs: list[str] = []

    def num(x: Any, nullable: bool) -> bool:
        if x is None:
            return nullable
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(data, dict):
        raise ValueError("a Neuronpedia graph is a JSON object")
    for k, t in (("metadata", dict), ("qParams", dict), ("nodes", list), ("links", list)):
        if not isinstance(data.get(k), t):
            errs.append(f"top level: '{k}' missing or not a {t.__name__}")
    if errs:
        raise ValueError("invalid Neuronpedia graph:\n  " + "\n  ".join(errs))
    md = data["metadata"]
    for k in ("slug", "scan", "prompt"):
        if not isinstance(md.get(k), str):
            errs.append(f"metadata.{k} missing or not a string")
    toks = md.get("prompt_tokens")
    if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
        errs.append("metadata.prompt_tokens missing or not a list of strings")
        toks = None
    if "node_threshold" in md and not num(md["node_threshold"], True):
        errs.append("metadata.node_threshold is not a number")
    if "info" in md and not isinstance(md["info"], dict):
        errs.append("metadata.info is not an object")
    qp = data["qParams"]
    if not (isinstance(qp.get("pinnedIds"), list) and all(isinstance(x, str) for x in qp["pinnedIds"])):
        errs.append("qParams.pinnedIds missing or not a list of strings")
    if not isinstance(qp.get("supernodes"), list):
        errs.append("qParams.supernodes missing or not a list")
    if not isinstance(qp.get("linkType"), str):
        errs.append("qParams.linkType missing or not a string")
    ids: set[str] = set()
    js_ids: set[str] = set()
    for i, nd in enumerate(data["nodes"]):
        where = f"nodes[{i}]"
        if not isinstance(nd, dict):
            errs.append(f"{where} is not an object")
            continue
        for k in ("node_id", "feature_type", "jsNodeId", "clerp"):
            if not isinstance(nd.get(k), str):
                errs.append(f"{where}.{k} missing or not a string")
        f = nd.get("feature", "missing")
        if not (f is None or (isinstance(f, int) and not isinstance(f, bool))):
            errs.append(f"{where}.feature missing or not an integer/null")
        if not isinstance(nd.get("layer"), (str, int)) or isinstance(nd.get("layer"), bool):
            errs.append(f"{where}.layer missing or not a string/integer")
        c = nd.get("ctx_idx")
        if not (isinstance(c, int) and not isinstance(c, bool) and c >= 0):
            errs.append(f"{where}.ctx_idx missing or not a non-negative integer")
        elif toks and c >= len(toks):
            errs.append(f"{where}.ctx_idx={c} is past the {len(toks)} prompt tokens")
        for k in ("influence", "activation"):
            if k in nd and not num(nd[k], True):
                errs.append(f"{where}.{k} is not a finite number or null")
        nid = nd.get("node_id")
        if isinstance(nid, str):
            if nid in ids:
                errs.append(f"{where}.node_id {nid!r} is not unique")
            ids.add(nid)
        jid = nd.get("jsNodeId")
        if isinstance(jid, str):
            if jid in js_ids:
                errs.append(f"{where}.jsNodeId {jid!r} is not unique")
            js_ids.add(jid)
        if nd.get("feature_type") == "logit" and "(p=" not in str(nd.get("clerp", "")):
            errs.append(f"{where}: a logit node's clerp must contain '(p=...)' (the viewer parses it)")
    for i, ln in enumerate(data["links"]):
        where = f"links[{i}]"
        if not isinstance(ln, dict):
            errs.append(f"{where} is not an object")
            continue
        for k in ("source", "target"):
            if not isinstance(ln.get(k), str):
                errs.append(f"{where}.{k} missing or not a string")
            elif ln[k] not in ids:
                errs.append(f"{where}.{k} {ln[k]!r} is not a node_id")
        if not num(ln.get("weight"), False):
            errs.append(f"{where}.weight missing or not a finite number")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as e:
        errs.append(f"not strict JSON: {e}")
    if errs:
        shown = errs[:20] + ([f"... and {len(errs) - 20} more"] if len(errs) > 20 else [])
        raise ValueError("invalid Neuronpedia graph:\n  " + "\n  ".join(shown))


def write_neuronpedia(G: nx.DiGraph, path: "str | os.PathLike[str]", **kw: Any) -> Path:
    """Validate :func:`to_neuronpedia` output and write it (upload it at neuronpedia.org/graph)."""
    data = to_neuronpedia(G, **kw)
    validate_neuronpedia(data)
    return write_text(path, json.dumps(data, allow_nan=False) + "\n")


def export(G: nx.DiGraph, out_dir: "str | os.PathLike[str]", formats: Iterable[str] = FORMATS, *,
           stem: str = "circuit", **neuronpedia_kw: Any) -> dict[str, Path]:
    """Write ``G`` in each format to ``out_dir``: ``{stem}.json``, ``{stem}.graphml``, ``{stem}.dot``,
    ``{stem}.neuronpedia.json``. ``neuronpedia_kw`` go to :func:`to_neuronpedia` (``slug``,
    ``prompt``, ``prompt_tokens`` are required for that format). Returns format -> path."""
    formats = list(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format(s) {bad}; choose from {list(FORMATS)}")
    if "neuronpedia" in formats:
        missing = [k for k in ("slug", "prompt", "prompt_tokens") if k not in neuronpedia_kw]
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


__all__ = ["write_json", "read_json", "write_graphml", "to_dot", "write_dot", "to_neuronpedia",
           "validate_neuronpedia", "write_neuronpedia", "export", "influence_scores", "sign_colour",
           "FORMATS"]
