"""Edge scores: the vectorised pass equals the per-node loop; the direct path is the identity."""

from __future__ import annotations

import pytest
import torch

from conftest import make_dataset, make_model, make_saes
from featcirc.attribution.edges import score_graph
from featcirc.sites import METRIC, parse_node_id


def _compare(a, b, tol=1e-5):
    keys = set(a.edges) | set(b.edges)
    assert keys
    scale = max(abs(w) for w in a.edges.values())
    for k in keys:
        assert abs(a.edges.get(k, 0.0) - b.edges.get(k, 0.0)) <= tol * scale + 1e-7, k


@pytest.mark.parametrize("method,aggregation", [("relp", "none"), ("atp", "sum"), ("ig", "none")])
def test_batched_edges_equal_naive_loop(method, aggregation):
    model = make_model("gpt2")
    saes = make_saes(model, d_sae=24)
    data = make_dataset(n_batches=1, batch=2, length=6)
    kw = dict(method=method, level="feature", saes=saes, aggregation=aggregation, ig_steps=3,
              max_nodes=60, progress=False)
    nodes, fast = score_graph(model, data, max_rows=37, **kw)
    _, slow = score_graph(model, data, naive=True, **kw)
    _compare(fast, slow)
    assert fast.cost.backward_passes < slow.cost.backward_passes
    # every edge joins adjacent sites of the site graph, and only candidates take part
    for u, d in fast.edges:
        if d == METRIC:
            assert parse_node_id(u).site.name == "resid.1"
            continue
        su, sd = parse_node_id(u).site, parse_node_id(d).site
        assert sd.layer == su.layer or (sd.layer == su.layer + 1 and su.kind in ("resid", "embed"))


@pytest.mark.parametrize("max_nodes", [None, 60])
def test_parallel_blocks_have_no_attn_to_mlp_edges(max_nodes):
    model = make_model("pythia")
    saes = make_saes(model, d_sae=24)
    data = make_dataset(n_batches=1, batch=2, length=6)
    _, edges = score_graph(model, data, method="atp", saes=saes, max_nodes=max_nodes, progress=False)
    kinds = {(parse_node_id(u).site.kind, parse_node_id(d).site.kind) for u, d in edges.edges if d != METRIC}
    assert ("attn", "mlp") not in kinds
    if max_nodes is None:
        assert ("attn", "resid") in kinds and ("resid", "mlp") in kinds


def test_direct_resid_path_is_identity_at_component_level():
    """resid.L = resid.(L-1) + attn.L + mlp.L with attn/mlp held constant: e(R@p -> resid.L@q) =
    g_q . delta_p when p == q, else 0."""
    model = make_model("gpt2")
    data = make_dataset(n_batches=1, batch=1, length=6)
    from featcirc.attribution.nodes import ScoreSettings, make_splice, score_nodes_with_splice
    nodes, edges = score_graph(model, data, method="atp", level="component", max_nodes=None, progress=False)
    splice = make_splice(model, "component")
    _, recs = score_nodes_with_splice(splice, data, ScoreSettings("atp", "component"), progress=False,
                                      keep_records=True)
    rec = recs[0]
    g = rec.grads["resid.1"].vector[0]
    delta = (rec.patch["resid.0"].vector - rec.clean["resid.0"].vector)[0]
    checked = 0
    for p in range(6):
        for q in range(6):
            w = edges.edges.get((f"resid.0@{p}", f"resid.1@{q}"), 0.0)
            want = float(g[q] @ delta[p]) if p == q else 0.0
            assert w == pytest.approx(want, abs=1e-5)
            checked += want != 0.0
    assert checked >= 1  # resid.1 is the last layer: only its last position reaches the metric
    # edges into the metric are the last resid site's node scores
    for p in range(6):
        assert edges.edges.get((f"resid.1@{p}", METRIC), 0.0) == pytest.approx(
            float(nodes.vectors["resid.1"][p]), abs=1e-7)
