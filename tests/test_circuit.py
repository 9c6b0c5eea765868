"""Circuit graphs: building the full scored graph and pruning it (docs/design.md §8), on hand-made scores."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from featcirc.circuit import (PruneSettings, circuit_nodes, full_graph, node_label, node_threshold_sweep,
                              prune, stream_index, summary)
from featcirc.attribution.scores import Cost, EdgeScores, NodeScores
from featcirc.sites import METRIC

SITES = ["resid.0", "attn.1", "mlp.1", "resid.1"]


def small_scores() -> tuple[NodeScores, EdgeScores]:
    """Summed scores of a 2-layer model. Paths to the metric:
    resid.0/0 (+.5) -> attn.1/1 (+.3) -> resid.1/0 (+.7) -> metric
    resid.0/2 (-.2) -> mlp.1/2 (-.4) -> resid.1/1 (-.6) -> metric
    attn.1/2 (+.9) has no outgoing edge (a dead end); errors score .05; resid.0/3 scores .01."""
    ns = NodeScores(
        method="atp", level="feature", aggregation="sum", sites=list(SITES),
        features={"resid.0": torch.tensor([0.5, 0.0, -0.2, 0.01]), "attn.1": torch.tensor([0.0, 0.3, 0.9]),
                  "mlp.1": torch.tensor([0.0, 0.0, -0.4]), "resid.1": torch.tensor([0.7, -0.6])},
        vectors={s: torch.tensor(0.05) for s in SITES},
        feature_acts={"resid.0": torch.tensor([1.0, 2.0, 3.0, 4.0]), "attn.1": torch.tensor([0.5, 0.6, 0.7]),
                      "mlp.1": torch.tensor([1.5, 1.6, 1.7]), "resid.1": torch.tensor([2.5, 2.6])},
        vector_acts={s: torch.tensor(9.0) for s in SITES},
        n_pairs=4, metric_clean=2.5, metric_patch=-1.5, cost=Cost(1.0, 2, 1),
        info={"n_layers": 2},
    )
    es = EdgeScores(method="atp", aggregation="sum", cost=Cost(3.0, 4, 5), edges={
        ("resid.0/0", "attn.1/1"): 0.3, ("attn.1/1", "resid.1/0"): 0.2, ("resid.1/0", METRIC): 0.7,
        ("resid.0/2", "mlp.1/2"): -0.1, ("mlp.1/2", "resid.1/1"): 0.4, ("resid.1/1", METRIC): -0.6,
    })
    return ns, es


def per_position_scores() -> tuple[NodeScores, EdgeScores]:
    """Per-position scores (T = 3) with an attention edge across positions."""
    ns = NodeScores(
        method="relp", level="feature", aggregation="none", sites=["resid.0", "resid.1"],
        features={"resid.0": torch.tensor([[0.0, 0.0], [0.4, 0.0], [0.0, -0.3]]),
                  "resid.1": torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.8, 0.0]])},
        vectors={"resid.0": torch.tensor([0.0, 0.1, 0.2]), "resid.1": torch.tensor([0.0, 0.0, 0.05])},
        n_pairs=2, metric_clean=1.0, info={"n_layers": 2},
    )
    es = EdgeScores(method="relp", aggregation="none", edges={
        ("resid.0/0@1", "resid.1/0@2"): 0.35, ("resid.0/1@2", "resid.1/0@2"): -0.2,
        ("resid.1/0@2", METRIC): 0.8, ("resid.1/err@2", METRIC): 0.05,
    })
    return ns, es


def with_edge(es: EdgeScores, key: tuple[str, str], w: float) -> EdgeScores:
    return EdgeScores(es.method, es.aggregation, cost=es.cost, info=es.info, edges={**es.edges, key: w})


# --------------------------------------------------------------------------------- full graph
def test_full_graph_nodes_edges_and_attributes():
    ns, es = small_scores()
    G = full_graph(ns, es)
    expected = {nid for nid, _ in ns.iter_nodes()} | {METRIC}
    assert set(G.nodes) == expected
    assert "resid.0/1" not in G  # zero-score features are not nodes
    assert G.nodes["attn.1/2"] == dict(site="attn.1", layer=1, kind="feature", feature=2, position=-1,
                                       score=pytest.approx(0.9), activation=pytest.approx(0.7))
    assert G.nodes["mlp.1/err"]["kind"] == "error" and G.nodes["mlp.1/err"]["activation"] == 9.0
    m = G.nodes[METRIC]
    assert (m["kind"], m["site"], m["layer"], m["score"]) == ("metric", "metric", 2, 2.5)
    assert {(u, v): d["weight"] for u, v, d in G.edges(data=True)} == es.edges
    assert G.graph["method"] == "atp" and G.graph["aggregation"] == "sum" and G.graph["n_pairs"] == 4
    assert G.graph["n_layers"] == 2 and G.graph["has_edges"] is True and G.graph["edge_method"] == "atp"
    assert G.graph["metric_clean"] == 2.5 and G.graph["metric_patch"] == -1.5
    assert (G.graph["cost_seconds"], G.graph["forward_passes"], G.graph["backward_passes"]) == (4.0, 6, 6)
    # every edge points downstream
    for u, v in G.edges:
        assert stream_index(G.nodes[u]["site"], 2) < stream_index(G.nodes[v]["site"], 2)


def test_full_graph_infers_n_layers_and_nan_metric():
    ns, _ = small_scores()
    ns.info = {}
    ns.metric_clean = float("nan")
    G = full_graph(ns, None)
    assert G.nodes[METRIC]["layer"] == 2  # highest site layer + 1
    assert math.isnan(G.nodes[METRIC]["score"]) and G.graph["metric_clean"] is None
    assert G.number_of_edges() == 0 and G.graph["has_edges"] is False
    assert full_graph(ns, None, n_layers=6).nodes[METRIC]["layer"] == 6
    with pytest.raises(ValueError, match="n_layers"):
        full_graph(ns, None, n_layers=1)


def test_full_graph_adds_edge_only_nodes():
    ns, es = small_scores()
    es = with_edge(es, ("resid.0/1", "attn.1/1"), 0.05)  # resid.0/1 has score 0: not a scored node
    G = full_graph(ns, es)
    assert G.nodes["resid.0/1"]["score"] == 0.0 and G.nodes["resid.0/1"]["kind"] == "feature"
    assert G.nodes["resid.0/1"]["feature"] == 1 and G.graph["n_edge_only_nodes"] == 1


@pytest.mark.parametrize("bad_edge, match", [
    (("resid.1/0", "resid.0/0"), "downstream"),       # reversed direction
    ((METRIC, "resid.1/0"), "metric"),
    (("attn.1/1", "attn.1/2"), "downstream"),         # same site
])
def test_full_graph_rejects_bad_edges(bad_edge, match):
    ns, es = small_scores()
    es = with_edge(es, bad_edge, 0.1)
    with pytest.raises(ValueError, match=match):
        full_graph(ns, es)


def test_full_graph_rejects_mismatched_aggregation_and_nan_weight():
    ns, es = small_scores()
    es.aggregation = "none"
    with pytest.raises(ValueError, match="aggregation"):
        full_graph(ns, es)
    ns, es = small_scores()
    es = with_edge(es, ("resid.0/0", "attn.1/1"), float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        full_graph(ns, es)


def test_per_position_graph():
    ns, es = per_position_scores()
    G = full_graph(ns, es)
    assert G.nodes["resid.0/1@2"]["position"] == 2 and G.nodes["resid.0/1@2"]["score"] == pytest.approx(-0.3)
    assert "resid.0/err@0" in G  # vector nodes exist at every position
    H = prune(G, PruneSettings(node_threshold=0.1))
    assert circuit_nodes(H) == {"resid.0/0@1", "resid.0/1@2", "resid.1/0@2"}


# ---------------------------------------------------------------------------------- pruning
def test_prune_node_threshold_drops_dead_ends():
    G = full_graph(*small_scores())
    H = prune(G, PruneSettings(node_threshold=0.15))
    # attn.1/2 (|score| .9) is above threshold but has no path to the metric: dropped
    assert circuit_nodes(H) == {"resid.0/0", "attn.1/1", "resid.1/0", "resid.0/2", "mlp.1/2", "resid.1/1"}
    assert set(H.edges) == set(G.edges)
    assert H.graph["node_threshold"] == 0.15 and H.graph["n_nodes_unpruned"] == G.number_of_nodes() - 1
    # a node above threshold whose only route passes through a node below it is a dead end too
    H2 = prune(G, PruneSettings(node_threshold=0.45))
    assert circuit_nodes(H2) == {"resid.1/0", "resid.1/1"}  # resid.0/0 (.5) lost attn.1/1 (.3)
    assert set(H2.edges) == {("resid.1/0", METRIC), ("resid.1/1", METRIC)}


def test_prune_edge_threshold():
    G = full_graph(*small_scores())
    H = prune(G, PruneSettings(node_threshold=0.15, edge_threshold=0.25))
    # attn.1/1 -> resid.1/0 (.2) and resid.0/2 -> mlp.1/2 (-.1) fall: their upstream nodes are cut off
    assert circuit_nodes(H) == {"mlp.1/2", "resid.1/0", "resid.1/1"}
    assert all(abs(d["weight"]) >= 0.25 for _, _, d in H.edges(data=True))
    assert ("mlp.1/2", "resid.1/1") in H.edges


def test_prune_top_k():
    G = full_graph(*small_scores())
    # top 3 by |score|: attn.1/2 (.9, dead end), resid.1/0 (.7), resid.1/1 (.6)
    assert circuit_nodes(prune(G, PruneSettings(top_k=3))) == {"resid.1/0", "resid.1/1"}
    # top 5 adds resid.0/0 (.5, cut off: attn.1/1 is not kept) and mlp.1/2 (.4)
    assert circuit_nodes(prune(G, PruneSettings(top_k=5))) == {"resid.1/0", "resid.1/1", "mlp.1/2"}
    # threshold and top_k together: the top 2 among |score| >= .65
    assert circuit_nodes(prune(G, PruneSettings(node_threshold=0.65, top_k=2))) == {"resid.1/0"}


def test_prune_top_k_ties_are_deterministic():
    ns = NodeScores(method="atp", level="feature", aggregation="sum", sites=["resid.0"],
                    features={"resid.0": torch.tensor([0.5, -0.5, 0.5, 0.2])},
                    vectors={"resid.0": torch.tensor(0.0)}, n_pairs=1, metric_clean=1.0)
    edges = {(f"resid.0/{i}", METRIC): 1.0 for i in range(4)}
    G = full_graph(ns, EdgeScores(method="atp", aggregation="sum", edges=edges))
    # the same graph with nodes and edges inserted in reverse order
    R = nx.DiGraph()
    R.graph.update(G.graph)
    R.add_nodes_from(reversed(list(G.nodes(data=True))))
    R.add_edges_from(reversed(list(G.edges(data=True))))
    for graph in (G, R):
        assert circuit_nodes(prune(graph, PruneSettings(top_k=2))) == {"resid.0/0", "resid.0/1"}
        assert circuit_nodes(prune(graph, PruneSettings(top_k=3))) == {"resid.0/0", "resid.0/1", "resid.0/2"}


def test_prune_empty_results():
    G = full_graph(*small_scores())
    for s in (PruneSettings(node_threshold=10.0), PruneSettings(top_k=0)):
        H = prune(G, s)
        assert set(H.nodes) == {METRIC} and H.number_of_edges() == 0 and circuit_nodes(H) == set()
    ns, _ = small_scores()
    H = prune(full_graph(ns, EdgeScores(method="atp", aggregation="sum", edges={})),
              PruneSettings(node_threshold=0.0))
    assert set(H.nodes) == {METRIC}  # edges were scored and none survived: nothing reaches the metric


def test_prune_without_edge_scores_keeps_nodes_by_score():
    ns, _ = small_scores()
    G = full_graph(ns, None)
    H = prune(G, PruneSettings(node_threshold=0.15))
    assert circuit_nodes(H) == {"resid.0/0", "resid.0/2", "attn.1/1", "attn.1/2", "mlp.1/2", "resid.1/0",
                                "resid.1/1"}
    assert H.number_of_edges() == 0


def test_prune_nan_scores_never_pass_and_keeps_every_node_without_settings():
    G = full_graph(*small_scores())
    G.nodes["resid.1/0"]["score"] = float("nan")
    assert "resid.1/0" not in prune(G, PruneSettings(node_threshold=0.0))
    assert "resid.1/0" not in prune(G, PruneSettings(top_k=100))
    G = full_graph(*small_scores())
    H = prune(G, PruneSettings())
    assert set(H.nodes) == set(nx.ancestors(G, METRIC)) | {METRIC}


def test_prune_returns_a_new_graph():
    G = full_graph(*small_scores())
    n_before, e_before = G.number_of_nodes(), G.number_of_edges()
    H = prune(G, PruneSettings(node_threshold=0.15))
    H.nodes["resid.1/0"]["score"] = 123.0
    H.graph["method"] = "changed"
    assert (G.number_of_nodes(), G.number_of_edges()) == (n_before, e_before)
    assert G.nodes["resid.1/0"]["score"] == pytest.approx(0.7) and G.graph["method"] == "atp"
    with pytest.raises(ValueError, match="metric"):
        prune(nx.DiGraph([("a", "b")]), PruneSettings())


@pytest.mark.parametrize("kw", [dict(node_threshold=-1.0), dict(top_k=-1), dict(top_k=1.5),
                                dict(edge_threshold=-0.1), dict(node_threshold=float("nan"))])
def test_prune_settings_validation(kw):
    with pytest.raises(ValueError):
        PruneSettings(**kw)


def test_node_threshold_sweep_is_monotone_and_matches_prune():
    G = full_graph(*small_scores())
    ts = [0.0, 0.01, 0.1, 0.25, 0.45, 0.65, 1.0]
    graphs = node_threshold_sweep(G, ts)
    sizes = [len(circuit_nodes(H)) for H in graphs]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 0
    for t, H in zip(ts, graphs):
        assert set(H.nodes) == set(prune(G, PruneSettings(node_threshold=t)).nodes)
    # a circuit at a higher threshold is contained in the one at a lower threshold
    for a, b in zip(graphs, graphs[1:]):
        assert circuit_nodes(b) <= circuit_nodes(a)


def test_node_label_and_summary():
    assert node_label("resid.3/1234@7") == "resid.3 f1234 @7"
    assert node_label("resid.3/err@7") == "resid.3 err @7"
    assert node_label("mlp.3@7") == "mlp.3 @7"
    assert node_label("attn.2/5") == "attn.2 f5"
    assert node_label(METRIC) == "metric"
    H = prune(full_graph(*small_scores()), PruneSettings(node_threshold=0.15))
    s = summary(H)
    assert (s["n_nodes"], s["n_features"], s["n_errors"], s["n_edges"]) == (6, 6, 0, 6)
    assert s["total_abs_score"] == pytest.approx(0.5 + 0.3 + 0.7 + 0.2 + 0.4 + 0.6)


def test_node_ids_carry_slot_labels():
    from featcirc.sites import node_id, parse_node_id

    assert node_id("resid.3", "feature", 12, "S2") == "resid.3/12@S2"
    assert node_id("mlp.1", "error", None, "S1+1") == "mlp.1/err@S1+1"
    assert node_id("attn.0", "component", None, "END-2") == "attn.0@END-2"
    assert node_id("resid.3", "feature", 12, "7") == node_id("resid.3", "feature", 12, 7) == "resid.3/12@7"
    assert parse_node_id("resid.3/12@S2").position == "S2"
    assert parse_node_id("mlp.1/err@S1+1").position == "S1+1"
    assert parse_node_id("attn.0@END-2").position == "END-2"
    assert parse_node_id("resid.3/12@7").position == 7
    for bad in ("a@b", "x/y", "", "S 2"):
        with pytest.raises(ValueError):
            node_id("resid.3", "feature", 1, bad)
    with pytest.raises(ValueError):
        parse_node_id("resid.3/12@S/2")
