"""The learned-mask pruner (featcirc/pruning/mask.py): its forward is the Ablator's, its gradient is the
metric's derivative in the mask, it finds a circuit from the model when the scores carry no information,
it is deterministic, and never returns a circuit that fits the discovery pairs worse than thresholding."""

from __future__ import annotations

import random

import networkx as nx
import numpy as np
import pytest
import torch

from featcirc.attribution import AttributionSettings, attribute
from featcirc.circuit import circuit_from_nodes, circuit_nodes, full_graph, prune, PruneSettings
from featcirc.evaluate.faithfulness import Ablator
from featcirc.pruning.mask import MaskSettings, MaskTrainer, learn_masks, ranked_candidates
from featcirc.sites import METRIC


@pytest.fixture(scope="module")
def tiny_sva():
    """The bundled tiny model and SAEs on 32 SVA pairs, RelP-scored, 300 candidates."""
    from featcirc.commands.common import load_model_and_saes
    from featcirc.data import tokenize_pairs
    from featcirc.data.load import run_pairs

    torch.manual_seed(0)
    model, saes = load_model_and_saes("tiny", "tiny", "feature")
    pairs = run_pairs(task="sva-nounpp", n=32, seed=0, eval_fraction=0.5)
    data = tokenize_pairs(model, pairs.discovery, batch_size=16, max_pairs=32)
    nodes, edges = attribute(model, data, "relp", saes,
                             settings=AttributionSettings(level="feature", max_nodes=300, progress=False))
    G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
    return model, saes, data, nodes, G


def _ablator(tiny_sva, ablation):
    model, saes, data, nodes, _ = tiny_sva
    return Ablator(model, data, level="feature", saes=saes, sites=nodes.sites, ablation=ablation, progress=False)


@pytest.mark.parametrize("ablation", ["mean", "patch"])
def test_binary_mask_forward_is_the_ablators(tiny_sva, ablation):
    """A 0/1 mask through the differentiable forward gives exactly the Ablator's per-pair metric for that
    node set, so a binarised mask's F is the Ablator's F."""
    ab = _ablator(tiny_sva, ablation)
    cands = ranked_candidates(tiny_sva[4], None)
    trainer = MaskTrainer(ab, cands, progress=False)
    rng = np.random.default_rng(0)
    for keep in (np.ones(len(cands), bool), rng.random(len(cands)) < 0.3):
        metric, _ = trainer.metric_and_gradient(keep)
        kept = {c for c, k in zip(cands, keep) if k}
        np.testing.assert_allclose(metric, ab.metric_values(kept), rtol=1e-5, atol=1e-5)
    assert not np.allclose(ab.metric_values(set(cands[:20])), ab.m_full_values)  # the set matters


def test_mask_gradient_is_the_derivative_of_the_metric(tiny_sva):
    """``G[p, i]`` equals a finite difference of the mixed forward in node i's mask value."""
    ab = _ablator(tiny_sva, "mean")
    cands = ranked_candidates(tiny_sva[4], None)
    trainer = MaskTrainer(ab, cands, progress=False)
    keep = np.zeros(len(cands), bool)
    keep[:150] = True
    metric, grad = trainer.metric_and_gradient(keep)
    b, h = ab.data.batches[0], 1e-2
    B = b.clean.shape[0]
    for i in (0, 3, 40):
        m = torch.tensor(keep, dtype=torch.float32).expand(B, -1).clone()
        m[:, i] -= h
        with torch.no_grad():
            lower = ab.mixed_metric(0, b, trainer._masks(0, m)).double().numpy()
        fd = (metric[:B] - lower) / h
        np.testing.assert_allclose(grad[:B, i], fd, rtol=0.05, atol=2e-3 * max(1.0, np.abs(fd).max()))
    assert np.abs(grad[:, :3]).max() > 1e-3  # top nodes have an effect


def test_mask_finds_a_circuit_when_scores_carry_no_information(tiny_sva):
    """Scores shuffled among the candidates: thresholding them keeps random nodes, the mask (in-context
    effects only) recovers most of the faithfulness of thresholding the true scores (measured: 0.66 vs 0.90,
    shuffled 0.03)."""
    ab = _ablator(tiny_sva, "mean")
    G = tiny_sva[4]
    k = 150
    true_f = ab.faithfulness(circuit_nodes(prune(G, PruneSettings(top_k=k))))
    cands = ranked_candidates(G, 300)
    H = G.subgraph(cands + [METRIC]).copy()
    scores = [H.nodes[c]["score"] for c in cands]
    random.Random(0).shuffle(scores)
    for c, s in zip(cands, scores):
        H.nodes[c]["score"] = s
    shuffled_f = ab.faithfulness(circuit_nodes(prune(H, PruneSettings(top_k=k))))
    res = learn_masks(ab, H, [k], MaskSettings(context_weight=1.0, shrink=0.1), progress=False)
    got = res.circuits[k]
    mask_f = ab.faithfulness(got.nodes)
    assert got.learned
    assert true_f > 0.8 and shuffled_f < 0.5 * true_f, (true_f, shuffled_f)
    assert mask_f >= 0.6 * true_f and mask_f >= shuffled_f + 0.4, (mask_f, true_f, shuffled_f)


def test_mask_is_deterministic_and_never_worse_than_thresholding(tiny_sva):
    ab = _ablator(tiny_sva, "patch")
    G = tiny_sva[4]
    sizes = [250, 150, 60]
    a = learn_masks(ab, G, sizes, progress=False)
    b = learn_masks(_ablator(tiny_sva, "patch"), G, sizes, progress=False)
    assert {k: c.nodes for k, c in a.circuits.items()} == {k: c.nodes for k, c in b.circuits.items()}
    trainer = MaskTrainer(ab, a.candidates, progress=False)
    for k, c in a.circuits.items():
        assert len(c.nodes) == k
        assert c.loss <= c.warm_loss + 1e-12
        assert c.loss == pytest.approx(trainer.shortfall(c.nodes))
        assert c.warm_loss == pytest.approx(trainer.shortfall(a.candidates[:k]))
    assert any(c.learned for c in a.circuits.values())
    assert a.forward_passes >= 1 and a.backward_passes >= 1
    C = circuit_from_nodes(G, a.circuits[150].nodes)
    assert circuit_nodes(C) <= set(a.circuits[150].nodes) and METRIC in C
    assert all(nx.has_path(C, n, METRIC) for n in C)


def test_circuit_from_nodes_is_prunes_last_steps(tiny_sva):
    G = tiny_sva[4]
    C = prune(G, PruneSettings(top_k=80))
    top = [n for n, _ in sorted(((n, abs(d["score"])) for n, d in G.nodes(data=True) if n != METRIC),
                                key=lambda t: (-t[1], t[0]))[:80]]
    D = circuit_from_nodes(G, top)
    assert set(C.nodes) == set(D.nodes) and set(C.edges) == set(D.edges)
    with pytest.raises(ValueError, match="not in the scored graph"):
        circuit_from_nodes(G, ["resid.0/999999@0"])


@pytest.mark.parametrize("kwargs", [dict(shrink=0.0), dict(shrink=1.0), dict(candidates=0),
                                    dict(context_weight=1.5)])
def test_mask_settings_are_checked(kwargs):
    with pytest.raises(ValueError):
        MaskSettings(**kwargs)


# ------------------------------------------------------------------------------------ command line
def test_discover_prune_mask_writes_the_learned_circuit(tmp_path, capsys):
    """``discover --prune mask``: the exported circuit is the mask's (its nodes are the mask result's, dead
    ends aside), summary.json records the pruner, its cost and its guard, and faithfulness under both
    ablations."""
    from featcirc.cli import main
    from featcirc.export.formats import read_json as read_circuit

    out = tmp_path / "mask"
    assert main(["-q", "--threads", "1", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp",
                 "--pairs", "32", "--max-nodes", "400", "--prune", "mask", "--top-k", "250",
                 "--out", str(out)]) == 0
    import json

    summ = json.loads((out / "summary.json").read_text())
    p = summ["prune"]
    assert p["method"] == "mask" and p["mask_ablation"] == "patch" and p["top_k"] == 250
    m = p["mask"]
    assert m["ablation"] == "patch" and m["n_candidates"] == 400 and m["forward_passes"] >= 1
    entry = m["sizes"]["250"]
    assert entry["shortfall"] <= entry["threshold_shortfall"] and isinstance(entry["learned"], bool)
    assert summ["seconds"]["mask"] > 0
    C = read_circuit(out / "circuit.json")
    assert 0 < len(circuit_nodes(C)) <= 250
    assert list(summ["faithfulness"]) == ["mean", "patch"]
    assert main(["-q", "--threads", "1", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp",
                 "--pairs", "8", "--max-nodes", "100", "--prune", "mask", "--top-k", "50", "--mask-ablation", "mean",
                 "--ablations", "zero", "--out", str(tmp_path / "m2")]) == 0
    # a mask is reported under the ablation it was trained with and under patch, whatever --ablations says
    assert list(json.loads((tmp_path / "m2" / "summary.json").read_text())["faithfulness"]) == ["zero", "mean", "patch"]
    run = json.loads((out / "run.json").read_text())
    assert run["prune"] == "mask" and run["mask_ablation"] == "patch"
    # the viewer rebuilt from the run directory opens the same circuit
    assert main(["-q", "view", str(out), "--out", str(tmp_path / "v.html")]) == 0


@pytest.mark.parametrize("argv, needle", [
    (["--prune", "mask", "--node-threshold", "0.1"], "--top-k"),
    (["--prune", "mask", "--top-k", "0"], "--top-k"),
])
def test_discover_prune_mask_bad_settings_fail_before_loading(tmp_path, capsys, monkeypatch, argv, needle):
    from conftest import one_line_error, set_tripwires
    from featcirc.cli import main

    set_tripwires(monkeypatch, "the mask settings should have been refused before the model loads")
    code = main(["discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", *argv,
                 "--out", str(tmp_path / "x")])
    assert code == 2 and needle in one_line_error(capsys)


def test_compare_mask_adds_size_rows(tmp_path, capsys):
    """``compare --mask``: sizes.csv has threshold and mask rows under every ablation, measured at the grid."""
    import csv

    from featcirc.cli import main

    out = tmp_path / "cmp"
    assert main(["-q", "--threads", "1", "compare", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp",
                 "--pairs", "16", "--level", "feature", "--methods", "relp", "--max-nodes", "200", "--mask",
                 "--sizes", "50,100,200", "--bootstrap", "100", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "sizes.csv").open()))
    assert [(r["pruner"], r["ablation"]) for r in rows] == [
        ("threshold", "mean"), ("mask (mean)", "mean"), ("threshold", "patch"), ("mask (patch)", "patch")]
    for r in rows:
        assert float(r["f50_lo"]) <= float(r["f50"]) <= float(r["f50_hi"])
        assert float(r["seconds"]) > 0
    mask_secs = {r["ablation"]: float(r["seconds"]) for r in rows if r["pruner"].startswith("mask")}
    thr_secs = {r["ablation"]: float(r["seconds"]) for r in rows if r["pruner"] == "threshold"}
    assert all(mask_secs[a] > thr_secs[a] for a in mask_secs)  # the mask's time is added to RelP's
    assert "smallest F >= 0.8" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [(["--methods", "atp", "--mask"], "relp"),
                                         (["--methods", "relp", "--sizes", "0,50"], "positive")])
def test_compare_size_options_fail_before_loading(tmp_path, capsys, monkeypatch, argv, needle):
    from conftest import one_line_error, set_tripwires
    from featcirc.cli import main

    set_tripwires(monkeypatch, "a bad size-table option should have been refused first")
    code = main(["compare", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--level", "feature",
                 *argv, "--out", str(tmp_path / "x")])
    assert code == 2 and needle in one_line_error(capsys)


def test_compare_sizes_are_parsed_like_evaluates(capsys):
    """One ``--sizes`` parser (commands.checks.size_list) for evaluate and compare: argparse's one-line error."""
    from featcirc.cli import main

    with pytest.raises(SystemExit) as e:
        main(["compare", "--model", "tiny", "--level", "feature", "--sizes", "ten", "--out", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --sizes: expected comma-separated whole numbers" in err
