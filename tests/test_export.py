"""Export formats: node-link JSON round trip (read by every networkx's default), GraphML, DOT,
attribution-graph JSON for Neuronpedia / circuit-tracer, and circuit-tracer's graph_files layout.

networkx compatibility, measured once in throwaway venvs (networkx 3.4.2, 3.5, 3.6.1) on the demo's
circuit.json written by ``write_json``: the default ``nx.node_link_graph(data)`` gives back the
DiGraph with all 101 nodes and 1280 edges in each (3.4/3.5 read ``"links"`` with a FutureWarning,
3.6 reads ``"edges"``); a file with ``"links"`` only raises ``KeyError: 'edges'`` on 3.6."""

from __future__ import annotations

import json
import math
import re

import networkx as nx
import pytest
import torch

from featcirc.circuit import PruneSettings, full_graph, prune
from featcirc.export.formats import (export, influence_scores, node_link_data, read_json, to_dot, to_neuronpedia,
                                     validate_neuronpedia, write_dot, write_graphml, write_json, write_neuronpedia)
from featcirc.attribution.scores import EdgeScores, NodeScores
from featcirc.export.graph_files import feature_set_name, write_graph_files
from featcirc.export.neuronpedia import (cantor_pair, cantor_unpair, check_scan, check_slug, default_slug,
                                         feature_number, neuronpedia_model_id, strip_paths, vector_feature_number)
from featcirc.sites import METRIC, stream_index

SITES = ["embed", "attn.0", "mlp.0", "resid.0", "resid.1"]


def scored_graph(aggregation: str = "none") -> nx.DiGraph:
    """A small full graph with every node kind's attributes, NaN activations (no acts given for
    some sites) and edges; per-position (T = 3) or summed."""
    T = 3
    feats = {"embed": [[0.0, 0.2], [0.0, 0.0], [0.1, 0.0]], "attn.0": [[0.0, 0.0], [0.0, 0.6], [0.0, 0.0]],
             "mlp.0": [[0.0, 0.0], [0.0, 0.0], [-0.45, 0.0]], "resid.0": [[0.0, 0.0], [0.0, 0.3], [0.7, 0.0]],
             "resid.1": [[0.0, 0.0], [0.0, 0.0], [0.9, -0.5]]}
    features = {s: torch.tensor(v) for s, v in feats.items()}
    vectors = {s: torch.tensor([0.0, 0.02, 0.15]) for s in SITES}
    feature_acts = {"resid.1": torch.full((T, 2), 3.0)}
    if aggregation == "sum":
        features = {s: v.sum(0) for s, v in features.items()}
        vectors = {s: v.sum(0) for s, v in vectors.items()}
        feature_acts = {s: v.sum(0) for s, v in feature_acts.items()}
    ns = NodeScores(method="relp", level="feature", aggregation=aggregation, sites=list(SITES),
                    features=features, vectors=vectors, feature_acts=feature_acts, n_pairs=5,
                    metric_clean=3.25, info={"n_layers": 2, "rules": {"ln": True}, "ig_steps": None})
    ids = {nid for nid, _ in ns.iter_nodes()}
    at = (lambda p: f"@{p}") if aggregation == "none" else (lambda p: "")
    cand = [(f"embed/1{at(0)}", f"attn.0/1{at(1)}", 0.2), (f"embed/0{at(2)}", f"mlp.0/0{at(2)}", -0.3),
            (f"attn.0/1{at(1)}", f"resid.0/1{at(1)}", 0.5), (f"mlp.0/0{at(2)}", f"resid.0/0{at(2)}", 0.25),
            (f"resid.0/1{at(1)}", f"resid.1/0{at(2)}", 0.4), (f"resid.0/0{at(2)}", f"resid.1/1{at(2)}", -0.6),
            (f"resid.0/err{at(2)}", f"resid.1/0{at(2)}", 0.05),
            (f"resid.1/0{at(2)}", METRIC, 0.9), (f"resid.1/1{at(2)}", METRIC, -0.5),
            (f"resid.1/err{at(2)}", METRIC, 0.15)]
    edges = {(u, v): w for u, v, w in cand if u in ids and (v in ids or v == METRIC)}
    return full_graph(ns, EdgeScores(method="relp", aggregation=aggregation, edges=edges))


def _eq(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_graphs_equal(G: nx.DiGraph, H: nx.DiGraph) -> None:
    """Equal nodes, edges and attributes (NaN equal to NaN; types must match)."""
    assert H.is_directed() and not H.is_multigraph()
    assert set(G.nodes) == set(H.nodes) and set(G.edges) == set(H.edges)
    for n in G.nodes:
        assert _eq(G.nodes[n], H.nodes[n]), (n, G.nodes[n], H.nodes[n])
    for u, v in G.edges:
        assert _eq(G.edges[u, v], H.edges[u, v]), (u, v)
    assert _eq(G.graph, H.graph), (G.graph, H.graph)


# ---------------------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("aggregation", ["none", "sum"])
def test_json_round_trip(tmp_path, aggregation):
    G = scored_graph(aggregation)
    assert any(math.isnan(d["activation"]) for _, d in G.nodes(data=True))  # NaN survives the trip
    for graph in (G, prune(G, PruneSettings(node_threshold=0.1))):
        path = write_json(graph, tmp_path / "g.json")
        text = path.read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
        H = read_json(path)
        assert_graphs_equal(graph, H)
    # without NaN attributes networkx's own equality holds too
    G2 = prune(G, PruneSettings(node_threshold=0.1))
    for _, d in G2.nodes(data=True):
        d["activation"] = 0.0 if math.isnan(d["activation"]) else d["activation"]
    write_json(G2, tmp_path / "g2.json")
    assert nx.utils.graphs_equal(G2, read_json(tmp_path / "g2.json"))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_json_loads_with_networkx_defaults(tmp_path):
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    for _, d in G.nodes(data=True):
        d["activation"] = 0.0 if math.isnan(d["activation"]) else d["activation"]
    data = json.loads(write_json(G, tmp_path / "g.json").read_text())
    assert data["edges"] == data["links"] and len(data["edges"]) == G.number_of_edges()
    assert data["directed"] is True and data["multigraph"] is False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        H = nx.node_link_graph(data)  # the installed networkx's defaults
    assert type(H) is nx.DiGraph and nx.utils.graphs_equal(G, H)
    for key in ("edges", "links"):  # what networkx >= 3.6 and < 3.6 read by default
        assert nx.utils.graphs_equal(G, nx.node_link_graph(data, edges=key))
    # files of older featcirc (links only) still read
    old = {k: v for k, v in data.items() if k != "edges"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert nx.utils.graphs_equal(G, read_json(tmp_path / "old.json"))
    assert node_link_data(G) == data


def test_read_json_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="node-link"):
        read_json(tmp_path / "x.json")


# ------------------------------------------------------------------------------------- GraphML
def test_graphml_reads_back(tmp_path):
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    path = write_graphml(G, tmp_path / "g.graphml")
    H = nx.read_graphml(path)
    assert isinstance(H, nx.DiGraph)
    assert set(H.nodes) == set(G.nodes) and set(H.edges) == set(G.edges)
    for n, d in G.nodes(data=True):
        h = H.nodes[n]
        assert (h["site"], h["layer"], h["kind"], h["feature"], h["position"]) == \
               (d["site"], d["layer"], d["kind"], d["feature"], d["position"])
        assert _eq(h["score"], d["score"]) and _eq(h["activation"], d["activation"])
    for u, v, d in G.edges(data=True):
        assert H.edges[u, v]["weight"] == pytest.approx(d["weight"])
    assert H.graph["method"] == "relp" and H.graph["n_layers"] == 2
    assert json.loads(H.graph["sites"]) == SITES  # lists travel as JSON strings
    assert json.loads(H.graph["info"]) == {"n_layers": 2, "rules": {"ln": True}, "ig_steps": None}
    assert "top_k" not in H.graph  # None attributes are left out (GraphML has no null)


# ----------------------------------------------------------------------------------------- DOT
def test_dot_contains_every_node_and_edge(tmp_path):
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    text = write_dot(G, tmp_path / "g.dot", title='a "quoted" title').read_text()
    assert text.startswith("digraph circuit {") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    assert 'label="a \\"quoted\\" title"' in text
    for n in G.nodes:
        assert re.search(rf'^  "{re.escape(n)}" \[label=', text, re.M), n
    for u, v in G.edges:
        assert f'"{u}" -> "{v}"' in text
    assert text.count(" -> ") == G.number_of_edges()
    # ranks follow the forward order of sites: the metric's rank is the last
    rank_lines = [ln for ln in text.splitlines() if "rank=same" in ln]
    assert '"metric"' in rank_lines[-1] and "embed/" in rank_lines[0]
    # colour by sign: a negative edge is red, a positive one blue
    assert re.search(r'"resid.0/0@2" -> "resid.1/1@2" \[color="#b2182b"', text)
    assert re.search(r'"resid.1/0@2" -> "metric" \[color="#2166ac"', text)
    # error nodes are boxes
    assert re.search(r'"resid.1/err@2" \[label="resid.1 err @2\\n[^"]*", shape=box', text)


def test_dot_of_empty_circuit():
    text = to_dot(prune(scored_graph(), PruneSettings(node_threshold=100.0)))
    assert '"metric" [label=' in text and " -> " not in text


# --------------------------------------------------------------------------------- Neuronpedia
TOKENS = ["<bos>", " The", " keys"]
NODE_KEYS = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str,
             "jsNodeId": str, "clerp": str}


def check_neuronpedia_schema(d: dict) -> None:
    """Every required key at every level of Neuronpedia's attribution-graph schema, by hand."""
    assert set(d) >= {"metadata", "qParams", "nodes", "links"}
    md = d["metadata"]
    for k, t in {"slug": str, "scan": str, "prompt_tokens": list, "prompt": str, "node_threshold": float,
                 "info": dict, "schema_version": int}.items():
        assert isinstance(md[k], t), k
    assert all(isinstance(t, str) for t in md["prompt_tokens"])
    qp = d["qParams"]
    assert isinstance(qp["pinnedIds"], list) and isinstance(qp["supernodes"], list)
    assert isinstance(qp["linkType"], str) and isinstance(qp["clickedId"], str)
    ids = [n["node_id"] for n in d["nodes"]]
    assert len(ids) == len(set(ids)) and len({n["jsNodeId"] for n in d["nodes"]}) == len(ids)
    for n in d["nodes"]:
        for k, t in NODE_KEYS.items():
            assert isinstance(n[k], t) and not isinstance(n[k], bool), (k, n)
        assert 0 <= n["ctx_idx"] < max(len(md["prompt_tokens"]), 1)
        assert n["influence"] is None or isinstance(n["influence"], float)
        assert n["activation"] is None or isinstance(n["activation"], float)
    for ln in d["links"]:
        assert set(ln) >= {"source", "target", "weight"}
        assert ln["source"] in ids and ln["target"] in ids
        assert isinstance(ln["weight"], float) and math.isfinite(ln["weight"])


def viewer_keys(d: dict) -> list:
    """How the viewers key nodes (utilCg.formatData): featureId = layer_feature_ctx, error nodes suffixed."""
    return [(n["layer"], n["feature"], n["ctx_idx"], "error" in n["feature_type"]) for n in d["nodes"]]


@pytest.mark.parametrize("aggregation", ["none", "sum"])
def test_neuronpedia_schema_and_mapping(aggregation):
    G = prune(scored_graph(aggregation), PruneSettings(node_threshold=0.1))
    d = to_neuronpedia(G, slug="sva-relp", prompt="The keys", prompt_tokens=TOKENS, node_threshold=0.8,
                       info={"description": "test graph"}, scan="gemma-3-270m")
    check_neuronpedia_schema(d)
    validate_neuronpedia(d)
    json.dumps(d, allow_nan=False)
    md = d["metadata"]
    assert (md["slug"], md["scan"], md["prompt"], md["prompt_tokens"], md["node_threshold"], md["schema_version"]) == \
           ("sva-relp", "gemma-3-270m", "The keys", TOKENS, 0.8, 1)
    assert md["info"]["description"].startswith("test graph. Output node: ") and md["info"]["generator"]["name"] == "featcirc"
    assert "mean over 5 prompt pairs (3.250), not this prompt's value" in md["info"]["description"]
    assert md["info"]["metric"]["mean_over_pairs"] == 3.25 and md["info"]["metric"]["n_pairs"] == 5
    assert md["pruning_settings"]["node_score_threshold"] == 0.1
    assert md["generation_settings"]["method"] == "relp"
    nodes = {n["node_id"]: n for n in d["nodes"]}
    tokens = [n for n in d["nodes"] if n["feature_type"] == "embedding"]
    assert set(nodes) == set(G.nodes) | {t["node_id"] for t in tokens}
    # one embedding node per prompt token, in the embedding row: the viewers draw the prompt from them
    assert [(t["ctx_idx"], t["feature"], t["layer"], t["clerp"]) for t in tokens] == \
           [(p, -(1 + p), "E", f"Emb: “{tok}”") for p, tok in enumerate(TOKENS)]
    # the circuit's edges, plus one link from each token to the embed-site nodes at its position
    token_links = {(f"token@{a['position']}", n): a["score"] for n, a in G.nodes(data=True)
                   if a["site"] == "embed" and a["position"] >= 0}
    assert bool(token_links) == (aggregation == "none")
    assert len(d["links"]) == G.number_of_edges() + len(token_links)
    assert {(ln["source"], ln["target"]): ln["weight"] for ln in d["links"]} == \
           {**{(u, v): w for u, v, w in G.edges(data="weight")}, **token_links}
    at = "@2" if aggregation == "none" else ""
    f = nodes[f"resid.1/0{at}"]
    assert (f["feature"], f["layer"], f["feature_type"], f["clerp"]) == \
           (cantor_pair(stream_index("resid.1", 2), 0), "1", "cross layer transcoder", f"resid.1 f0{' @2' if at else ''}")
    assert cantor_unpair(f["feature"]) == (stream_index("resid.1", 2), 0)
    assert f["ctx_idx"] == (2 if aggregation == "none" else 0)
    assert f["activation"] == (3.0 if aggregation == "none" else 9.0)
    e = nodes[f"resid.1/err{at}"]
    assert (e["feature"], e["feature_type"]) == (-(1 + stream_index("resid.1", 2)), "mlp reconstruction error")
    assert e["clerp"] == ("Err: resid.1 “ keys”" if at else "Err: resid.1")  # its own site, not "mlp"
    assert e["activation"] is None  # NaN activations become null
    emb = [n for n in d["nodes"] if n.get("site") == "embed"]
    assert emb and all(n["layer"] == "E" for n in emb)
    m = nodes[METRIC]
    assert m["feature_type"] == "logit" and m["influence"] is None and m["layer"] == "3"
    assert m["ctx_idx"] == len(TOKENS) - 1
    # without an example the label says the value is the mean over pairs and shows no probability
    assert m["clerp"] == 'Output "mean logit diff over 5 pairs = 3.250" (p=n/a)'
    assert (m["token_prob"], m["activation"], m["score"]) == (1.0, 3.25, 3.25)
    # the panel opens on the feature node of largest |score|
    feats = [n for n, a in G.nodes(data=True) if a["kind"] == "feature"]
    assert d["qParams"]["clickedId"] == max(feats, key=lambda n: abs(G.nodes[n]["score"]))
    # influence: cumulative share of |score|, increasing as |score| decreases, last one exactly 1
    infl = influence_scores(G)
    ranked = sorted(infl, key=lambda n: infl[n])
    mags = [abs(G.nodes[n]["score"]) for n in ranked]
    assert mags == sorted(mags, reverse=True) and infl[ranked[-1]] == 1.0
    assert infl[ranked[0]] == pytest.approx(mags[0] / sum(mags))
    assert all(nodes[n]["influence"] == infl[n] for n in infl)
    assert len(set(viewer_keys(d))) == len(d["nodes"])


def test_sites_of_one_layer_stay_distinct():
    """attn.0/err@2, mlp.0/err@2, resid.0/err@2 and feature 3 at each of attn.0, mlp.0, resid.0 (same
    layer, index and position) must not share a viewer key, or the viewers merge them into one node."""
    sites = ["attn.0", "mlp.0", "resid.0", "resid.1"]
    feats = {s: torch.zeros(3, 5) for s in sites}
    for s in sites[:3]:
        feats[s][2, 3] = 0.5
    ns = NodeScores(method="relp", level="feature", aggregation="none", sites=sites, features=feats,
                    vectors={s: torch.tensor([0.0, 0.0, 0.2]) for s in sites}, n_pairs=1, metric_clean=1.0,
                    info={"n_layers": 2})
    G = full_graph(ns, EdgeScores(method="relp", aggregation="none", edges={("resid.1/err@2", METRIC): 0.1}))
    d = to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS)
    validate_neuronpedia(d)
    same_layer = [n for n in d["nodes"] if n["layer"] == "0" and n["ctx_idx"] == 2]
    assert len(same_layer) == 6
    assert len(set(viewer_keys(d))) == len(d["nodes"])
    labels = {n["node_id"]: n["clerp"] for n in same_layer}
    assert labels["attn.0/err@2"] == "Err: attn.0 “ keys”" and labels["mlp.0/3@2"] == "mlp.0 f3 @2"
    merged = json.loads(json.dumps(d))
    for n in merged["nodes"]:
        if n["node_id"] in ("attn.0/3@2", "mlp.0/3@2"):
            n["feature"] = 3  # what the old export did: the raw index
    with pytest.raises(ValueError, match="viewers would merge"):
        validate_neuronpedia(merged)


def test_neuronpedia_component_nodes():
    ns = NodeScores(method="atp", level="component", aggregation="sum", sites=["attn.0", "resid.0"],
                    features={}, vectors={"attn.0": torch.tensor(0.4), "resid.0": torch.tensor(0.8)},
                    n_pairs=1, metric_clean=1.0)
    es = EdgeScores(method="atp", aggregation="sum", edges={("attn.0", "resid.0"): 0.4, ("resid.0", METRIC): 0.8})
    d = to_neuronpedia(full_graph(ns, es), slug="c", prompt="x", prompt_tokens=["x"])
    validate_neuronpedia(d)
    nodes = {n["node_id"]: n for n in d["nodes"]}
    comp = nodes["attn.0"]
    assert (comp["feature"], comp["feature_type"], comp["clerp"], comp["kind"]) == \
           (-(1 + stream_index("attn.0", 1)), "mlp reconstruction error", "attn.0", "component")
    assert nodes["resid.0"]["feature"] != comp["feature"]
    assert d["qParams"]["clickedId"] == ""  # no feature node to open


VECTOR_SITES = ["embed", "attn.0", "mlp.0", "resid.0", "z.1", "resid.1"]


def _vector_graph(level: str, aggregation: str) -> nx.DiGraph:
    """Error nodes (level feature, with one feature per site) or component nodes (level component) at
    an embed, attn, mlp, resid and z site, per position (T = 3) or summed."""
    T = 3
    vec = {s: torch.tensor([0.05 * (i + 1), 0.0, 0.1 * (i + 1)]) for i, s in enumerate(VECTOR_SITES)}
    feats = {s: torch.zeros(T, 4) for s in VECTOR_SITES} if level == "feature" else {}
    for s in feats:
        feats[s][2, 1] = 0.3
    if aggregation == "sum":
        vec = {s: v.sum(0) for s, v in vec.items()}
        feats = {s: v.sum(0) for s, v in feats.items()}
    ns = NodeScores(method="relp", level=level, aggregation=aggregation, sites=list(VECTOR_SITES), features=feats,
                    vectors=vec, n_pairs=4, metric_clean=2.0, info={"n_layers": 2})
    last = "resid.1/err" if level == "feature" else "resid.1"
    at = "@2" if aggregation == "none" else ""
    return full_graph(ns, EdgeScores(method="relp", aggregation=aggregation, edges={(last + at, METRIC): 0.6}))


@pytest.mark.parametrize("aggregation", ["none", "sum"])
def test_error_and_component_clerps_name_their_own_site(aggregation):
    """Error and component nodes all carry the type "mlp reconstruction error" (the one error type the
    viewers and Neuronpedia's scores know); their clerp must name their own site, never "mlp" for
    another site, with the token when positions are kept."""
    seen = set()
    for level in ("feature", "component"):
        G = _vector_graph(level, aggregation)
        d = to_neuronpedia(G, slug="s", prompt="The keys", prompt_tokens=TOKENS)
        validate_neuronpedia(d)
        for n in d["nodes"]:
            if n["kind"] not in ("error", "component"):
                continue
            site, pos = n["site"], n["position"]
            seen.add((n["kind"], site))
            assert n["feature_type"] == "mlp reconstruction error"
            assert n["feature"] == vector_feature_number(site)
            tok = f" “{TOKENS[pos]}”" if pos >= 0 else ""
            if n["kind"] == "error":
                assert n["clerp"] == f"Err: {site}{tok}", n
            else:
                assert n["clerp"] == f"{site}{f' @{pos}' if pos >= 0 else ''}{tok}", n
            others = [s for s in VECTOR_SITES if s != site]
            assert not any(re.search(rf"(?<![\w.]){re.escape(s)}(?![\w.])", n["clerp"]) for s in others), n
            assert "mlp" not in n["clerp"] or site.startswith("mlp"), n
    assert seen == {(k, s) for k in ("error", "component") for s in VECTOR_SITES}
    if aggregation == "none":
        d = to_neuronpedia(_vector_graph("feature", "none"), slug="s", prompt="The keys", prompt_tokens=TOKENS)
        labels = {n["node_id"]: n["clerp"] for n in d["nodes"]}
        assert labels["attn.0/err@2"] == "Err: attn.0 “ keys”" and labels["resid.0/err@0"] == "Err: resid.0 “<bos>”"
        assert labels["embed/err@2"] == "Err: embed “ keys”" and labels["z.1/err@2"] == "Err: z.1 “ keys”"
        d = to_neuronpedia(_vector_graph("component", "none"), slug="s", prompt="The keys", prompt_tokens=TOKENS)
        assert {n["node_id"]: n["clerp"] for n in d["nodes"]}["attn.0@2"] == "attn.0 @2 “ keys”"


@pytest.mark.parametrize("level", ["feature", "component"])
def test_token_nodes_link_to_embed_nodes(level):
    """Each embed-site node (feature, error or component) at position p gets one link from token@p, weight =
    its score; no other node gets a token link, and summed graphs (no positions) get none."""
    G = _vector_graph(level, "none")
    d = to_neuronpedia(G, slug="s", prompt="The keys", prompt_tokens=TOKENS)
    validate_neuronpedia(d)
    from_tokens = [ln for ln in d["links"] if ln["source"].startswith("token@")]
    embed = {n: a for n, a in G.nodes(data=True) if a["site"] == "embed"}
    assert {a["kind"] for a in embed.values()} == ({"error", "feature"} if level == "feature" else {"component"})
    assert len(from_tokens) == len(embed) == len({ln["target"] for ln in from_tokens})
    for ln in from_tokens:
        a = embed[ln["target"]]
        assert ln["source"] == f"token@{a['position']}" and ln["weight"] == a["score"]
    nodes = {n["node_id"]: n for n in d["nodes"]}
    assert all(nodes[ln["source"]]["feature_type"] == "embedding" for ln in from_tokens)
    assert all(nodes[ln["source"]]["ctx_idx"] == nodes[ln["target"]]["ctx_idx"] for ln in from_tokens)
    assert {ln["source"] for ln in d["links"]} & {"token@0", "token@2"} == {"token@0", "token@2"}
    # the circuit's own edges are still there
    assert {(ln["source"], ln["target"]) for ln in d["links"]} >= set(G.edges)
    summed = to_neuronpedia(_vector_graph(level, "sum"), slug="s", prompt="The keys", prompt_tokens=TOKENS)
    assert not [ln for ln in summed["links"] if ln["source"].startswith("token@")]


EXAMPLE = {"prompt": "The keys", "patch_prompt": "The key", "clean_answer": " are", "patch_answer": " is",
           "metric_clean": 4.125, "metric_patch": -2.5, "p_clean_answer": 0.9301, "p_patch_answer": 0.0123,
           "n_pairs_mean": 32}


def test_metric_node_with_the_example_prompt():
    """With the example pair's numbers the metric node reads like a circuit-tracer logit node: the clean
    answer with its real probability on the prompt; the mean over pairs moves to metadata.info."""
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    d = to_neuronpedia(G, slug="s", prompt="The keys", prompt_tokens=TOKENS, example=EXAMPLE,
                       info={"description": "relp circuit"})
    validate_neuronpedia(d)
    m = {n["node_id"]: n for n in d["nodes"]}[METRIC]
    assert m["clerp"] == 'Output " are" (p=0.930)'
    assert m["clerp"].split('"')[1] == " are"  # the token the viewers read out of the label
    assert (m["token_prob"], m["activation"], m["score"]) == (0.9301, 4.125, 3.25)  # score: featcirc's mean
    info = d["metadata"]["info"]
    assert info["metric"]["mean_over_pairs"] == 3.25 and info["metric"]["n_pairs"] == 32
    assert info["metric"]["example"]["metric_clean"] == 4.125 and info["metric"]["example"]["p_clean_answer"] == 0.9301
    assert info["metric"]["definition"] == "m = logit(“ are”) - logit(“ is”) at the last prompt position"
    desc = info["description"]
    assert desc.startswith("relp circuit. Output node: the clean answer “ are”, probability 0.930 on this prompt.")
    assert "4.125 on this prompt, -2.500 on its patch prompt" in desc and "means over 32 prompt pairs, whose mean m is 3.250" in desc
    # a quote in the answer would cut the viewers' token out of the label short
    d = to_neuronpedia(G, slug="s", prompt="The keys", prompt_tokens=TOKENS, example={**EXAMPLE, "clean_answer": ' "'})
    assert {n["node_id"]: n for n in d["nodes"]}[METRIC]["clerp"] == 'Output " “" (p=0.930)'
    # the example must be for the graph's prompt and carry its numbers
    with pytest.raises(ValueError, match="prompt"):
        to_neuronpedia(G, slug="s", prompt="The key", prompt_tokens=TOKENS, example=EXAMPLE)
    for bad in ({k: v for k, v in EXAMPLE.items() if k != "p_clean_answer"}, {**EXAMPLE, "metric_clean": None},
                {**EXAMPLE, "p_clean_answer": 1.5}, {**EXAMPLE, "clean_answer": 3}):
        with pytest.raises(ValueError, match="example"):
            to_neuronpedia(G, slug="s", prompt="The keys", prompt_tokens=TOKENS, example=bad)


def test_scan_follows_neuronpedias_upload_rule():
    """Neuronpedia's upload (apps/webapp/app/api/graph/save-to-db/route.ts) rejects a scan with any
    character outside [a-zA-Z0-9_.-]."""
    for ok in ("gpt2-small", "gemma-3-270m", "tiny", "pythia-70m-deduped", "llama3.1-8b", "Qwen_2"):
        assert check_scan(ok) == ok
    for bad in ("./data/features/tiny.tiny", "google/gemma-3-270m", "", "gemma 2", "a:b", None):
        with pytest.raises(ValueError, match="scan"):
            check_scan(bad)
    assert check_scan("./data/features/tiny.tiny", local_viewer=True) == "./data/features/tiny.tiny"
    with pytest.raises(ValueError, match="scan"):
        check_scan("/abs/features", local_viewer=True)
    assert neuronpedia_model_id("google/gemma-3-270m") == "gemma-3-270m"
    assert neuronpedia_model_id("gpt2-small") == "gpt2-small"
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    with pytest.raises(ValueError, match="local viewer"):
        to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS, scan="./data/features/x")
    with pytest.raises(ValueError, match="scan"):
        to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS, scan="google/gemma-3-270m")
    G.graph["info"] = {**G.graph["info"], "model": "google/gemma-3-270m"}
    d = to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS)
    assert d["metadata"]["scan"] == "gemma-3-270m"
    validate_neuronpedia(d)


def _run_dir(tmp_path, example):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    write_json(prune(scored_graph(), PruneSettings(node_threshold=0.1)), run / "circuit.json")
    (run / "run.json").write_text(json.dumps({"model": "google/gemma-3-270m", "saes": "/abs/gemma-scope",
                                              "method": "relp", "level": "feature", "task": "sva"}))
    summary = {"prompt": "The keys", "prompt_tokens": TOKENS, "pairs_used": 5}
    if example is not None:
        summary["example"] = example
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_export_run_graphs_uses_the_example_and_keeps_the_two_scans_apart(tmp_path):
    from featcirc.export.graph_files import export_run_graphs

    paths = export_run_graphs(_run_dir(tmp_path, EXAMPLE))
    up, local = (json.loads(paths[k].read_text()) for k in ("neuronpedia", "graph_files"))
    validate_neuronpedia(up)  # the upload file passes Neuronpedia's scan rule
    assert up["metadata"]["scan"] == "gemma-3-270m"
    assert local["metadata"]["scan"] == "./data/features/google-gemma-3-270m.gemma-scope"  # feature_set_name
    validate_neuronpedia(local, local_viewer=True)
    with pytest.raises(ValueError, match="scan"):
        validate_neuronpedia(local)
    meta = json.loads((paths["graph_files"].parent / "graph-metadata.json").read_text())
    assert meta["graphs"][0]["scan"] == "gemma-3-270m"
    for g in (up, local):
        m = {n["node_id"]: n for n in g["nodes"]}[METRIC]
        assert (m["clerp"], m["token_prob"], m["activation"]) == ('Output " are" (p=0.930)', 0.9301, 4.125)
    # an older run (no example) keeps a mean-over-pairs label without a probability
    paths = export_run_graphs(_run_dir(tmp_path / "old", None))
    m = {n["node_id"]: n for n in json.loads(paths["neuronpedia"].read_text())["nodes"]}[METRIC]
    assert m["clerp"] == 'Output "mean logit diff over 5 pairs = 3.250" (p=n/a)' and m["activation"] == 3.25


def test_neuronpedia_validator_catches_problems():
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    good = to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS)
    validate_neuronpedia(good)

    def broken(edit, match="invalid Neuronpedia graph"):
        d = json.loads(json.dumps(good))
        edit(d)
        with pytest.raises(ValueError, match="invalid Neuronpedia graph") as e:
            validate_neuronpedia(d)
        assert re.search(match, str(e.value)), str(e.value)

    # structure: Neuronpedia's published schema, one line naming the JSON path of the violation
    schema = r"\(Neuronpedia's graph schema, rule '(required|type)'\)$"
    broken(lambda d: d.pop("qParams"), r"^invalid Neuronpedia graph: \$: 'qParams' is a required property " + schema)
    broken(lambda d: d["metadata"].pop("scan"), r": \$\.metadata: 'scan' is a required property " + schema)
    broken(lambda d: d["qParams"].update(linkType=3), r": \$\.qParams\.linkType: 3 is not of type 'string' ")
    broken(lambda d: d["nodes"][1].pop("jsNodeId"), r": \$\.nodes\[1\]: 'jsNodeId' is a required property ")
    broken(lambda d: d["nodes"][0].update(layer=None), r": \$\.nodes\[0\]\.layer: None is not of type ")
    broken(lambda d: d["nodes"][2].update(feature=1.5), r": \$\.nodes\[2\]\.feature: 1\.5 is not of type ")
    broken(lambda d: d["nodes"][0].update(ctx_idx=True), r": \$\.nodes\[0\]\.ctx_idx: True is not of type 'integer'")
    broken(lambda d: d["links"][0].update(weight="heavy"), r": \$\.links\[0\]\.weight: 'heavy' is not of type 'number'")
    broken(lambda d: d["metadata"].update(prompt_tokens=["a", 2]), r": \$\.metadata\.prompt_tokens\[1\]: 2 is not of type")
    # what the schema cannot say
    broken(lambda d: d["links"][0].update(weight=float("nan")), r"\$\.links\[0\]\.weight is not a finite number")
    broken(lambda d: d["metadata"].update(slug="has space"), "metadata.slug")
    broken(lambda d: d["nodes"][0].update(ctx_idx=99), "does not index one of the")
    broken(lambda d: d["nodes"].append(dict(d["nodes"][0])), "node_id 'token@0' is not unique")  # duplicate node id
    broken(lambda d: d["nodes"].append(dict(d["nodes"][0], node_id="x", jsNodeId="x")),  # a second token at 0
           "a second embedding node")
    broken(lambda d: d["links"].append({"source": "nowhere", "target": METRIC, "weight": 1.0}), "is not a node_id")
    broken(lambda d: [n.update(clerp="out") for n in d["nodes"] if n["feature_type"] == "logit"])
    broken(lambda d: [n.update(clerp='Output " x" (p=1.5)') for n in d["nodes"] if n["feature_type"] == "logit"])
    broken(lambda d: [n.update(clerp='Output " x" (p=high)') for n in d["nodes"] if n["feature_type"] == "logit"])
    broken(lambda d: [n.update(token_prob=2.0) for n in d["nodes"] if n["feature_type"] == "logit"], "token_prob")
    broken(lambda d: d["metadata"].update(scan="./data/features/gpt2-small.res-jb"))  # Neuronpedia rejects it
    broken(lambda d: d["metadata"].update(scan="google/gemma-3-270m"))
    broken(lambda d: d["metadata"].update(scan=""))
    broken(lambda d: d["metadata"]["info"].update(description="run on /home/me/data/sva.jsonl"), "absolute paths")
    # the published schema leaves qParams' keys optional, and allows keys of its own (featcirc's site, kind, ...)
    ok = json.loads(json.dumps(good))
    ok["qParams"].pop("linkType")
    ok["nodes"][0]["extra"] = {"any": "thing"}
    validate_neuronpedia(ok)


def test_the_bundled_schema_is_neuronpedias():
    from featcirc.export.neuronpedia import graph_schema_validator

    schema = graph_schema_validator().schema
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["required"] == ["metadata", "qParams", "nodes", "links"]
    assert schema["properties"]["nodes"]["items"]["required"] == [
        "node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"]


def test_neuronpedia_argument_checks():
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    with pytest.raises(ValueError, match="prompt_tokens"):
        to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS[:2])  # nodes sit at position 2
    with pytest.raises(ValueError, match="cumulative"):
        to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS, node_threshold=5.0)
    with pytest.raises(ValueError, match="slug"):
        to_neuronpedia(G, slug="has space", prompt="p", prompt_tokens=TOKENS)
    # summed graphs need no particular prompt length
    to_neuronpedia(prune(scored_graph("sum"), PruneSettings(node_threshold=0.1)), slug="s", prompt="",
                   prompt_tokens=[])


def test_default_slug_names_the_run_and_differs_between_runs():
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    H = prune(scored_graph(), PruneSettings(node_threshold=0.3))
    s = default_slug(G, model="gpt2-small", data_name="sva nounpp", method="relp")
    assert s.startswith("gpt2-small-sva-nounpp-relp-") and check_slug(s) == s
    assert s == default_slug(prune(scored_graph(), PruneSettings(node_threshold=0.1)), model="gpt2-small",
                             data_name="sva nounpp", method="relp")  # same circuit, same slug
    assert s != default_slug(H, model="gpt2-small", data_name="sva nounpp", method="relp")
    assert to_neuronpedia(G, prompt="p", prompt_tokens=TOKENS)["metadata"]["slug"] == default_slug(G)


def test_paths_are_cut_to_file_names():
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    d = to_neuronpedia(G, prompt="a/b and /x", prompt_tokens=TOKENS,
                       info={"description": "relp on /home/me/data/heldout_sva.jsonl (32 pairs)",
                             "source_urls": ["https://example.org/saes/res"]})
    validate_neuronpedia(d)
    assert d["metadata"]["info"]["description"].startswith("relp on heldout_sva.jsonl (32 pairs). Output node:")
    assert d["metadata"]["info"]["source_urls"] == ["https://example.org/saes/res"]  # URLs stay
    assert d["metadata"]["prompt"] == "a/b and /x"  # the prompt is text, never edited
    assert strip_paths({"a": ["C:\\Users\\me\\x.txt", "~/y"]}) == {"a": ["x.txt", "~/y"]}


def test_feature_json_base_url_for_neuronpedia():
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    d = to_neuronpedia(G, prompt="p", prompt_tokens=TOKENS, feature_json_base_url="https://host/features/")
    assert d["metadata"]["feature_details"] == {"feature_json_base_url": "https://host/features"}


def test_write_neuronpedia_and_export(tmp_path):
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    p = write_neuronpedia(G, tmp_path / "np.json", slug="s", prompt="The keys", prompt_tokens=TOKENS)
    check_neuronpedia_schema(json.loads(p.read_text()))
    paths = export(G, tmp_path / "out", slug="s", prompt="The keys", prompt_tokens=TOKENS)
    assert set(paths) == {"json", "graphml", "dot", "neuronpedia"}
    assert [p.name for p in paths.values()] == ["circuit.json", "circuit.graphml", "circuit.dot",
                                                "circuit.neuronpedia.json"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert_graphs_equal(G, read_json(paths["json"]))
    validate_neuronpedia(json.loads(paths["neuronpedia"].read_text()))
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    only = export(G, tmp_path / "o2", formats=("json", "dot"), stem="c")
    assert sorted(only) == ["dot", "json"] and only["dot"].name == "c.dot"
    with pytest.raises(ValueError, match="unknown export format"):
        export(G, tmp_path / "o3", formats=("svg",))
    with pytest.raises(ValueError, match="prompt"):
        export(G, tmp_path / "o4", formats=("neuronpedia",))


# ---------------------------------------------------------------------------- circuit-tracer files
def test_graph_files_layout_and_metadata_merge(tmp_path):
    G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
    H = prune(scored_graph(), PruneSettings(node_threshold=0.3))
    data_dir = tmp_path / "graph_files"
    p1 = write_graph_files(G, data_dir, prompt="The keys", prompt_tokens=TOKENS, scan="gpt2-small",
                           feature_set=feature_set_name("gpt2-small", "/abs/dir/res-jb"), data_name="sva",
                           title_prefix="featcirc relp")
    p2 = write_graph_files(H, data_dir, prompt="The keys", prompt_tokens=TOKENS, scan="gpt2-small", data_name="sva")
    g1 = json.loads(p1.read_text())
    validate_neuronpedia(g1, local_viewer=True)
    assert p1.name == g1["metadata"]["slug"] + ".json" and p1 != p2
    assert g1["metadata"]["scan"] == "./data/features/gpt2-small.res-jb"  # the viewer's feature files
    with pytest.raises(ValueError, match="scan"):  # ... which Neuronpedia's upload rejects: not for upload
        validate_neuronpedia(g1)
    g2 = json.loads(p2.read_text())
    assert g2["metadata"]["scan"] == "gpt2-small"  # no feature set: the model id, valid for both
    validate_neuronpedia(g2)
    meta = json.loads((data_dir / "graph-metadata.json").read_text())
    assert [g["slug"] for g in meta["graphs"]] == [p1.stem, p2.stem]  # a second run does not replace the first
    assert meta["graphs"][0]["scan"] == "gpt2-small" and meta["graphs"][0]["title_prefix"] == "featcirc relp"
    assert set(meta["graphs"][0]) >= {"slug", "scan", "prompt", "prompt_tokens", "node_threshold"}
    write_graph_files(G, data_dir, prompt="The keys", prompt_tokens=TOKENS, scan="gpt2-small", data_name="sva")
    assert len(json.loads((data_dir / "graph-metadata.json").read_text())["graphs"]) == 2  # same slug replaced
    (data_dir / "graph-metadata.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="graph-metadata"):
        write_graph_files(G, data_dir, prompt="The keys", prompt_tokens=TOKENS)


def test_cantor_numbers_match_circuit_tracer():
    assert cantor_pair(0, 41) == 902  # circuit-tracer: layer 0, feature 41
    for x, y in [(0, 0), (3, 17), (54, 16383), (1, 0)]:
        assert cantor_unpair(cantor_pair(x, y)) == (x, y)
    assert len({feature_number(s, 7) for s in ["embed", "attn.0", "mlp.0", "resid.0", "attn.1"]}) == 5


def test_exports_are_written_with_the_umask(tmp_path):
    import os
    import stat

    saved = os.umask(0o027)
    try:
        G = prune(scored_graph(), PruneSettings(node_threshold=0.1))
        paths = export(G, tmp_path, slug="s", prompt="The keys", prompt_tokens=TOKENS)
        paths["gf"] = write_graph_files(G, tmp_path / "gf", prompt="The keys", prompt_tokens=TOKENS)
    finally:
        os.umask(saved)
    for p in paths.values():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


def test_role_aligned_graph_exports_at_the_example_tokens():
    """Under role alignment (docs/design.md §14) ids carry the slot label; the export places each node on
    the example prompt's own token at its slot, names the slot in the clerp and leaves out the nodes
    at slots the example lacks (counted in metadata.info)."""
    sites = ["embed", "resid.0", "resid.1"]
    ns = NodeScores(method="relp", level="component", aggregation="none", sites=sites, features={},
                    vectors={s: torch.tensor([0.1, 0.2, 0.3]) for s in sites}, n_pairs=2, metric_clean=1.0,
                    info={"n_layers": 2, "align": {"mode": "role", "slots": ["S1", "S2", "END"]}})
    G = full_graph(ns, EdgeScores(method="relp", aggregation="none", edges={
        ("resid.0@1", "resid.1@2"): 0.5, ("resid.0@0", "resid.1@2"): 0.2, ("resid.1@2", METRIC): 0.6}))
    assert {"resid.0@S2", "resid.1@END", "embed@S1"} <= set(G) and "resid.0@1" not in G
    assert G.nodes["resid.0@S2"]["slot"] == "S2" and G.nodes["resid.0@S2"]["position"] == 1
    assert G.has_edge("resid.0@S2", "resid.1@END") and G.has_edge("resid.0@S1", "resid.1@END")
    tokens = ["<bos>", " Mary", " went", " John"]
    d = to_neuronpedia(G, slug="s", prompt="Mary went John", prompt_tokens=tokens,
                       token_slots=["0", "S2", "S2+1", "END"])
    validate_neuronpedia(d)
    by_id = {n["node_id"]: n for n in d["nodes"]}
    assert by_id["resid.0@S2"]["ctx_idx"] == 1 and "[S2]" in by_id["resid.0@S2"]["clerp"]
    assert "“ Mary”" in by_id["resid.0@S2"]["clerp"] and by_id["resid.1@END"]["ctx_idx"] == 3
    assert not any(n.endswith("@S1") for n in by_id)  # the example has no S1 token
    assert d["metadata"]["info"]["n_nodes_not_in_example"] == 3
    assert d["metadata"]["prompt_tokens"] == tokens
    assert {(x["source"], x["target"]) for x in d["links"]} >= {("token@1", "embed@S2"), ("resid.0@S2", "resid.1@END")}
    assert not any("@S1" in x["source"] + x["target"] for x in d["links"])
    with pytest.raises(ValueError, match="token_slots"):
        to_neuronpedia(G, slug="s", prompt="Mary went John", prompt_tokens=tokens, token_slots=["0"])
