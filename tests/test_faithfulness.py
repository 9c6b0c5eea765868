"""Faithfulness: empty circuit 0, full circuit 1, ablating nothing changes nothing; patch ablation;
per-pair values computed once per circuit; degenerate completeness is detected."""

from __future__ import annotations

import pytest
import torch

from conftest import make_dataset, make_model, make_saes
from featcirc.attribution import AttributionSettings, attribute
from featcirc.circuit import circuit_nodes, full_graph, prune, PruneSettings
from featcirc.evaluate.curves import evaluate_curves
from featcirc.evaluate.faithfulness import ABLATIONS, Ablator, curve_area
from featcirc.metric import logit_diff_from_resid

DIFF_FROM = 3  # make_dataset's clean and patch prompts agree before this position


@pytest.fixture(scope="module")
def setup():
    model = make_model("gpt2")
    saes = make_saes(model, d_sae=24)
    data = make_dataset(n_batches=2, batch=3, length=6, diff_from=DIFF_FROM)
    return model, saes, data


@pytest.fixture(scope="module")
def graph(setup):
    model, saes, data = setup
    nodes, edges = attribute(model, data, "relp", saes, settings=AttributionSettings(max_nodes=None, progress=False))
    return full_graph(nodes, edges)


def _all_node_ids(ab, T, from_pos=0):
    ids = set()
    for s in ab.splice.site_names:
        for p in range(from_pos, T):
            ids.add(f"{s}/err@{p}")
            ids.update(f"{s}/{i}@{p}" for i in range(ab.splice.n_features(s)))
    return ids


def _patch_metric(model, data):
    vals = []
    for b in data.batches:
        with torch.no_grad():
            resid = model(b.patch, stop_at_layer=model.cfg.n_layers)
            vals.append(logit_diff_from_resid(model, resid, b.clean_answer, b.patch_answer))
    return torch.cat(vals).double().numpy()


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_full_circuit_is_one_and_empty_is_zero(setup, ablation):
    model, saes, data = setup
    ab = Ablator(model, data, saes=saes, ablation=ablation, progress=False)
    everything = _all_node_ids(ab, data.max_len)
    assert ab.faithfulness(everything) == pytest.approx(1.0, abs=1e-5)
    assert ab.faithfulness(set()) == pytest.approx(0.0, abs=1e-9)
    assert ab.completeness(set()) == pytest.approx(1.0, abs=1e-5)
    assert ab.completeness(everything) == pytest.approx(0.0, abs=1e-5)
    assert abs(ab.m_full - ab.m_empty) > 1e-3  # the ablation does something


def test_ablating_nothing_changes_nothing(setup):
    model, saes, data = setup
    ab = Ablator(model, data, saes=saes, progress=False)
    total = 0.0
    for b in data.batches:
        with torch.no_grad():
            resid = model(b.clean, stop_at_layer=model.cfg.n_layers)
            total += float(logit_diff_from_resid(model, resid, b.clean_answer, b.patch_answer).sum())
    assert ab.m_full == pytest.approx(total / data.n_pairs, abs=1e-6)
    # keeping every node through the masks (hooks installed) is the same as no hooks at all
    assert ab.metric(_all_node_ids(ab, data.max_len)) == pytest.approx(ab.m_full, abs=1e-5)


def test_patch_ablation_of_everything_is_the_patch_run(setup):
    model, saes, data = setup
    ab = Ablator(model, data, saes=saes, ablation="patch", progress=False)
    assert ab.m_empty_values == pytest.approx(_patch_metric(model, data), abs=1e-4)  # per pair
    assert len(ab.m_empty_values) == data.n_pairs == len(ab.pairs)


def test_patch_ablation_keeps_positions_before_the_first_difference(setup):
    """Nodes before the first token where clean and patch differ have the same value in both runs:
    under patch ablation a circuit need not hold them; under mean ablation it must."""
    model, saes, data = setup
    patch = Ablator(model, data, saes=saes, ablation="patch", progress=False)
    after = _all_node_ids(patch, data.max_len, from_pos=DIFF_FROM)
    mean = Ablator(model, data, saes=saes, ablation="mean", progress=False)
    assert patch.faithfulness(after) == pytest.approx(1.0, abs=1e-5)
    assert abs(mean.faithfulness(after) - 1.0) > 1e-2


def test_per_pair_values_are_cached_and_curves_evaluate_each_circuit_once(setup, graph):
    model, saes, data = setup
    ab = Ablator(model, data, saes=saes, ablation="patch", progress=False)
    assert ab.n_evaluations == 2  # m(M) and m(∅)
    thresholds = [1e-4, 1e-4, 1e-3, 1e-2, 1.0, 1e3, 1e3]
    distinct = {frozenset(circuit_nodes(prune(graph, PruneSettings(node_threshold=t)))) for t in thresholds}
    assert 1 < len(distinct) < len(thresholds)
    rep = evaluate_curves(ab, graph, thresholds=thresholds, fractions=None, progress=False)
    new_keep = len(distinct - {frozenset()})  # the empty circuit's metric is m(∅), already known
    assert ab.n_evaluations == 2 + new_keep + len(distinct)
    assert len(rep.circuits) == len(distinct) and len(rep.requests) == len(thresholds)
    before = ab.n_evaluations
    pts = ab.curve(graph, thresholds)
    assert ab.n_evaluations == before  # everything cached
    assert [p.faithfulness for p in pts] == pytest.approx([rep.circuits[r.circuit].faithfulness.value
                                                          for r in rep.requests])
    nodes = next(iter(distinct - {frozenset()}))
    vals = ab.metric_values(nodes)
    assert vals.shape == (data.n_pairs,)
    assert ab.faithfulness(nodes) == pytest.approx((vals.mean() - ab.m_empty) / (ab.m_full - ab.m_empty))


def test_curve_is_monotone_in_size_and_area_bounded(setup, graph):
    model, saes, data = setup
    ab = Ablator(model, data, saes=saes, progress=False)
    pts = ab.curve(graph, thresholds=[1e-4, 1e-2, 1.0, 1e3])
    sizes = [p.n_nodes for p in pts]
    assert sizes == sorted(sizes, reverse=True)
    assert pts[-1].n_nodes == 0 and pts[-1].faithfulness == pytest.approx(0.0, abs=1e-9)
    area = curve_area(pts, n_max=max(sizes))
    assert 0.0 <= area <= 1.0
    by_size = ab.curve(graph, sizes=[0, 3, 10])
    assert [p.size for p in by_size] == [0, 3, 10]
    assert all(p.n_nodes <= p.size for p in by_size) and by_size[0].n_nodes == 0


def test_report_intervals_fractions_and_exported_circuit(setup, graph):
    model, saes, data = setup
    ab = Ablator(model, data, saes=saes, ablation="patch", progress=False)
    exported = prune(graph, PruneSettings(top_k=5))
    rep = evaluate_curves(ab, graph, sizes=[2, 5, 40], exported=exported, n_resamples=200, progress=False)
    assert rep.n_graph == len(circuit_nodes(prune(graph, PruneSettings())))
    fr = rep.points("fraction")
    assert [r.value for r, _ in fr] == list(rep.fractions)
    assert fr[-1][1].n_nodes == rep.n_graph  # fraction 1 = the whole graph
    assert rep.points("exported")[0][0].circuit == rep.points("size")[1][0].circuit  # top 5 twice: one circuit
    for c in rep.circuits:
        f = c.faithfulness
        assert f.lo - 1e-9 <= f.value <= f.hi + 1e-9
    assert rep.cpr.lo <= rep.cpr.value <= rep.cpr.hi and rep.cmd.lo <= rep.cmd.value <= rep.cmd.hi
    assert rep.cmd.value >= 0
    js = rep.to_json()
    assert js["exported"]["n_nodes"] == rep.exported.n_nodes
    assert len(rep.csv_rows()) == len(rep.requests)


def test_component_level_ablation_and_degenerate_completeness(setup):
    model, _, data = setup
    ab = Ablator(model, data, level="component", progress=False)
    everything = {f"{s}@{p}" for s in ab.splice.site_names for p in range(data.max_len)}
    assert ab.faithfulness(everything) == pytest.approx(1.0, abs=1e-5)
    # nodes in the circuit are recomputed from the ablated stream (Marks et al.), so the final
    # residual stream alone is not a faithful circuit: what feeds it is ablated
    last_resid = {f"resid.1@{p}" for p in range(data.max_len)}
    assert ab.faithfulness(last_resid) != pytest.approx(1.0, abs=1e-3)
    # ...but ablating it ablates everything: completeness is 0 whatever the circuit also holds
    assert ab.holds_final_site(last_resid) and ab.completeness_is_degenerate(last_resid)
    assert ab.completeness(last_resid | {"attn.0@4"}) == pytest.approx(0.0, abs=1e-6)
    early = {f"attn.0@{p}" for p in range(data.max_len)}
    assert not ab.holds_final_site(early) and not ab.completeness_is_degenerate(early)
    assert not ab.completeness_is_degenerate(set())


def test_degenerate_completeness_is_reported(setup):
    """A graph whose every circuit holds the last residual site: the report says so."""
    import networkx as nx

    model, _, data = setup
    ab = Ablator(model, data, level="component", progress=False)
    G = nx.DiGraph(has_edges=False)
    G.add_node("metric", kind="metric", site="metric", layer=2, score=1.0)
    for p in range(data.max_len):
        G.add_node(f"resid.1@{p}", kind="component", site="resid.1", layer=1, score=10.0 + p)
        G.add_node(f"attn.0@{p}", kind="component", site="attn.0", layer=0, score=0.01 * (p + 1))
    rep = evaluate_curves(ab, G, sizes=[len(range(data.max_len)) + 1, 2 * data.max_len], fractions=None,
                          progress=False)
    assert all(c.completeness_degenerate for c in rep.circuits)
    assert rep.completeness_note and "degenerate at every circuit size" in rep.completeness_note
    assert "last residual site" in rep.completeness_note


def test_bad_ablation_and_node_are_clear_errors(setup):
    model, saes, data = setup
    with pytest.raises(ValueError, match="unknown ablation"):
        Ablator(model, data, saes=saes, ablation="noise", progress=False)
    ab = Ablator(model, data, saes=saes, progress=False)
    with pytest.raises(ValueError, match="has only 24 features"):
        ab.faithfulness({"resid.0/99@1"})
