"""Plots: circuit drawings (3 to ~150 nodes; layout, labels, edge thinning, tokens, legend, the
example prompt's own metric at the star, the exported circuit's faithfulness in the title),
faithfulness curves, scatters; all PNG, atomic."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from matplotlib.collections import PatchCollection
from matplotlib.image import imread

from featcirc.attribution.scores import EdgeScores, NodeScores
from featcirc.circuit import PruneSettings, full_graph, prune, stream_index
from featcirc.export.plot import (SIGN_LEGEND, circuit_figure, circuit_layout, draw_circuit, plot_faithfulness,
                                  plot_scatter)
from featcirc.sites import METRIC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ["embed", "attn.0", "mlp.0", "resid.0", "attn.1", "mlp.1", "resid.1"]
TOKENS = ["<bos>", "The", " keys", " to", " the"]

# the demo's example pair and its exported circuit's faithfulness, as summary.json holds them
EXAMPLE = {"prompt": "The uncle above the benches", "patch_prompt": "The uncles above the benches",
           "clean_answer": " has", "patch_answer": " have", "metric_clean": 7.7149, "metric_patch": -3.7311,
           "p_clean_answer": 0.6213, "p_patch_answer": 0.0412, "n_pairs_mean": 32}


def faithfulness(n_nodes: int, split: str = "held-out") -> dict:
    """One ablation's record of summary.json's ``faithfulness`` for an exported circuit of ``n_nodes``
    nodes: alone, the shape runs written before both ablations were reported have."""
    return {"ablation": "mean", "split": split, "pairs": 32, "n_nodes": n_nodes,
            "data": "/home/someone/pairs/heldout_sva.jsonl, held-out pairs (eval_pairs.jsonl)",
            "faithfulness": {"value": 0.35667, "lo": 0.31254, "hi": 0.40388},
            "completeness": {"value": 0.01216, "lo": -0.00269, "hi": 0.02747}, "m_full": 5.88, "m_empty": -0.27,
            "intervals": "95% percentile bootstrap over 1000 pair resamples"}


def faithfulness_both(n_nodes: int, split: str = "held-out") -> dict:
    """summary.json's ``faithfulness`` as ``discover`` writes it: ablation -> record, mean and patch."""
    patch = dict(faithfulness(n_nodes, split), ablation="patch", m_empty=-5.9,
                 faithfulness={"value": 0.00045, "lo": 0.00014, "hi": 0.0009},
                 completeness={"value": -0.0009, "lo": -0.0051, "hi": 0.0025})
    return {"mean": faithfulness(n_nodes, split), "patch": patch}


def random_scores(aggregation: str = "none", T: int = 5, F: int = 12, density: float = 0.28,
                  seed: int = 0) -> tuple[NodeScores, EdgeScores]:
    """Random, deterministic node and edge scores over every site kind; ~160 nodes per-position."""
    g = torch.Generator().manual_seed(seed)
    feats, vecs = {}, {}
    for s in SITES:
        mask = (torch.rand(T, F, generator=g) < density).float()
        feats[s] = torch.randn(T, F, generator=g) * mask
        vecs[s] = torch.randn(T, generator=g) * 0.3
    if aggregation == "sum":
        feats = {s: v.sum(0) for s, v in feats.items()}
        vecs = {s: v.sum(0) for s, v in vecs.items()}
    ns = NodeScores(method="relp", level="feature", aggregation=aggregation, sites=SITES, features=feats,
                    vectors=vecs, n_pairs=3, metric_clean=1.7, info={"n_layers": 2})
    G0 = full_graph(ns)
    nodes = [(n, d) for n, d in G0.nodes(data=True) if n != METRIC]
    rng = np.random.default_rng(seed)
    edges = {}
    for u, au in nodes:
        su = stream_index(au["site"], 2)
        for v, av in nodes:
            sv = stream_index(av["site"], 2)
            if su < sv <= su + 3 and au["position"] <= av["position"] and rng.random() < 0.05:
                edges[(u, v)] = float(rng.normal())
        if au["site"] == "resid.1":
            edges[(u, METRIC)] = float(rng.normal())
    return ns, EdgeScores(method="relp", aggregation=aggregation, edges=edges)


def random_graph(aggregation: str = "none", **kw) -> nx.DiGraph:
    """The full graph of :func:`random_scores`."""
    return full_graph(*random_scores(aggregation, **kw))


def big_circuit() -> nx.DiGraph:
    G = random_graph()
    big = G.subgraph([n for n in G.nodes][:150] + [METRIC]).copy()
    big.graph.update(G.graph)
    return big


def assert_png(path, min_bytes: int = 2000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes
    img = imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas


def test_draw_circuit_small_and_large(tmp_path):
    G = random_graph()
    small = prune(G, PruneSettings(top_k=8))
    assert 1 <= len(small) - 1 <= 8
    three = nx.DiGraph(G.subgraph(["embed/err@0", "attn.0/err@1", "resid.1/err@4", METRIC]))
    three.graph.update(G.graph)
    assert len(three) - 1 == 3
    big = big_circuit()
    assert 140 <= len(big) - 1 <= 200
    for name, graph in (("three", three), ("small", small), ("big", big), ("summed", random_graph("sum"))):
        path = draw_circuit(graph, tmp_path / f"{name}.png", title=name, tokens=TOKENS)
        assert path == tmp_path / f"{name}.png"
        assert_png(path)
    assert_png(draw_circuit(big, tmp_path / "no_tokens.png"))
    assert not list(tmp_path.glob(".*.tmp"))


def test_draw_empty_circuit(tmp_path):
    empty = prune(random_graph(), PruneSettings(node_threshold=1e9))
    assert list(empty.nodes) == [METRIC]
    assert_png(draw_circuit(empty, tmp_path / "empty.png", tokens=TOKENS))


def _labels(fig):
    ax = fig.axes[0]
    return [t for t in ax.texts if t.get_gid() == "node-label"]


def test_labels_never_overlap_each_other_or_nodes():
    fig = circuit_figure(big_circuit(), tokens=TOKENS, max_labels=60)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in _labels(fig)]
    assert 10 <= len(boxes) <= 60  # the biggest nodes get labels, but not all 150 fit
    for a, b in itertools.combinations(boxes, 2):
        assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0, (a, b)
    # labels name the nodes of largest |score| first: the top node is labelled
    assert _labels(circuit_figure(big_circuit(), tokens=TOKENS, max_labels=1))[0].get_text().startswith(("f", "err"))
    assert _labels(circuit_figure(big_circuit(), max_labels=0)) == []


def test_edges_thinned_to_the_strongest_and_said_so():
    big = big_circuit()
    n_edges = big.number_of_edges()
    assert n_edges > 40
    fig = circuit_figure(big, max_edges=25, title="runs/sva")
    ax = fig.axes[0]
    (edges,) = [c for c in ax.collections if isinstance(c, PatchCollection)]
    assert len(edges.get_paths()) == 25
    title = ax.get_title(loc="left")
    assert title.startswith("runs/sva\n")  # the caller's title, as given
    assert f"{n_edges} edges; drawn: the 25 strongest edges by |weight|" in title
    fig_all = circuit_figure(big, max_edges=10_000)
    assert "drawn:" not in fig_all.axes[0].get_title(loc="left")
    (all_edges,) = [c for c in fig_all.axes[0].collections if isinstance(c, PatchCollection)]
    assert len(all_edges.get_paths()) == n_edges
    widths = all_edges.get_linewidths()  # drawn weakest first: width grows with |weight|
    assert list(widths) == sorted(widths) and widths[-1] > 3 * widths[0]


def test_tokens_label_the_position_axis_and_legend_states_the_sign_convention():
    G = random_graph()
    fig = circuit_figure(G, tokens=TOKENS)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == len(TOKENS)
    for pos, tok in enumerate(TOKENS):
        assert tok in ticks[pos] and str(pos) in ticks[pos]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert SIGN_LEGEND[0] in legend and "supports the clean answer" in SIGN_LEGEND[0]
    assert SIGN_LEGEND[1] in legend and "opposes" in SIGN_LEGEND[1]
    # more tokens than positions: empty columns for the rest of the prompt
    assert len(circuit_figure(G, tokens=TOKENS + [" are"]).axes[0].get_xticklabels()) == len(TOKENS) + 1
    with pytest.raises(ValueError, match="tokens has 2 entries"):
        circuit_figure(G, tokens=TOKENS[:2])


def _metric_label(fig):
    (label,) = [t for t in fig.axes[0].texts if t.get_gid() == "metric-label"]
    return label


def test_star_gives_the_examples_own_metric_and_answers_and_calls_the_mean_a_mean():
    C = prune(random_graph(), PruneSettings(top_k=30))  # its metric node: the mean 1.7 over 3 pairs
    fig = circuit_figure(C, tokens=TOKENS, example=EXAMPLE)
    assert _metric_label(fig).get_text() == ('m = 7.71 on this prompt: " has" vs " have"\n(patch prompt: -3.73)\n'
                                            "mean m over 32 pairs: 1.7")  # narrow: the patch m on its own line
    wide = circuit_figure(C, tokens=TOKENS + [" long"] * 12, example=EXAMPLE)  # the star far right
    assert _metric_label(wide).get_text() == ('m = 7.71 on this prompt: " has" vs " have" (patch prompt: -3.73)\n'
                                             "mean m over 32 pairs: 1.7")
    # an older run (no example): only the mean, said to be one; never "metric = <mean>" at the star
    old = circuit_figure(C, tokens=TOKENS)
    assert _metric_label(old).get_text() == "mean m over 3 pairs: 1.7"
    assert not any("metric =" in t.get_text() for t in old.axes[0].texts)
    # an example without answers or the patch value: what is known, nothing made up
    part = circuit_figure(C, example={"metric_clean": 2.5, "n_pairs_mean": 3})
    assert _metric_label(part).get_text() == "m = 2.5 on this prompt\nmean m over 3 pairs: 1.7"
    # node labels keep clear of the star's label
    renderer = fig.canvas.get_renderer()
    star = _metric_label(fig).get_window_extent(renderer)
    for t in _labels(fig):
        b = t.get_window_extent(renderer)
        assert b.x1 <= star.x0 or star.x1 <= b.x0 or b.y1 <= star.y0 or star.y1 <= b.y0, t.get_text()


def test_star_label_stays_inside_a_narrow_drawing():
    """One column (positions summed): the star sits mid-axes, so its label wraps and the figure
    widens rather than run into the row labels."""
    C = prune(random_graph("sum"), PruneSettings(top_k=30))
    fig = circuit_figure(C, example=EXAMPLE)
    label = _metric_label(fig)
    assert label.get_text() == ('m = 7.71 on this prompt: " has" vs " have"\n(patch prompt: -3.73)\n'
                                "mean m over 32 pairs: 1.7")
    renderer = fig.canvas.get_renderer()
    box, axes = label.get_window_extent(renderer), fig.axes[0].get_window_extent(renderer)
    assert axes.x0 <= box.x0 and box.x1 <= axes.x1 and axes.y0 <= box.y0 and box.y1 <= axes.y1
    for tick in fig.axes[0].get_yticklabels():
        t = tick.get_window_extent(renderer)
        assert t.x1 <= box.x0 or box.x1 <= t.x0 or t.y1 <= box.y0 or box.y1 <= t.y0, tick.get_text()


def test_title_gives_the_exported_circuits_faithfulness(tmp_path):
    C = prune(random_graph(), PruneSettings(top_k=30))
    n = len(C) - 1
    flat = lambda fig: " ".join(fig.axes[0].get_title(loc="left").split())  # noqa: E731  (the F line wraps)
    # as discover writes it: F under each ablation, each value with its ablation named
    title = circuit_figure(C, title="tiny", faithfulness=faithfulness_both(n)).axes[0].get_title(loc="left")
    assert title.startswith("tiny\nF = ") and f"nodes\n{n} nodes, " in title
    assert " ".join(title.split()).startswith(
        "tiny F = 0.357 [0.313, 0.404] under mean ablation, 0.000 [0.000, 0.001] under patch ablation "
        f"(95% intervals; held-out, 32 pairs) for these {n} nodes {n} nodes, ")
    assert "/home/someone" not in title  # the data file's path stays out
    # an older run's single record: the same line with one F
    assert flat(circuit_figure(C, title="tiny", faithfulness=faithfulness(n))).startswith(
        f"tiny F = 0.357 [0.313, 0.404] under mean ablation (95% interval; held-out, 32 pairs) for these {n} nodes")
    other = flat(circuit_figure(C, faithfulness=faithfulness_both(n + 20, "in-sample")))
    assert (f"under patch ablation (95% intervals; in-sample, 32 pairs), measured for the exported circuit "
            f"({n + 20} nodes), not the {n} nodes drawn") in other
    unknown = faithfulness_both(n)
    unknown["patch"]["faithfulness"] = {"value": None, "lo": None, "hi": None}
    assert ("F = 0.357 [0.313, 0.404] under mean ablation, n/a under patch ablation (95% interval; held-out, "
            "32 pairs)") in flat(circuit_figure(C, faithfulness=unknown))
    assert "F =" not in circuit_figure(C, title="tiny").axes[0].get_title(loc="left")  # older runs: no F
    assert_png(draw_circuit(C, tmp_path / "c.png", title="tiny", tokens=TOKENS, example=EXAMPLE,
                            faithfulness=faithfulness_both(n)))
    with pytest.raises(ValueError, match="faithfulness must be a dict"):
        circuit_figure(C, faithfulness=0.36)
    with pytest.raises(ValueError, match="'patch' is a number, not a JSON object"):
        circuit_figure(C, faithfulness={"mean": faithfulness(n), "patch": 0.0})


@pytest.mark.parametrize("aggregation", ["none", "sum"])
def test_layout_rows_by_site_columns_by_position(aggregation):
    G = random_graph(aggregation)
    L = circuit_layout(G)
    xy = L.xy
    assert set(xy) == set(G.nodes)
    # every edge points up: rows are sites in forward order, the metric on top
    for u, v in G.edges:
        assert xy[u][1] < xy[v][1], (u, v)
    assert list(L.rows) == sorted(SITES, key=lambda s: stream_index(s, 2)) + [METRIC]
    assert xy[METRIC][1] == max(y for _, y in xy.values())
    for n, d in G.nodes(data=True):
        y0, y1 = L.rows[d["site"]]
        assert y0 < xy[n][1] < y1, n
    # no two nodes on top of each other
    points = sorted(xy.values())
    assert all(np.hypot(a[0] - b[0], a[1] - b[1]) >= 0.5 for a, b in zip(points, points[1:]))
    if aggregation == "none":  # one column per token position, left to right
        assert len(L.columns) == 5
        for n, d in G.nodes(data=True):
            if n != METRIC:
                x0, x1 = L.columns[d["position"]]
                assert x0 < xy[n][0] < x1, n
    else:
        assert len(L.columns) == 1


def test_plot_faithfulness(tmp_path):
    curves = {"relp": [(0, 0.0), (3, 0.4), (30, 0.8), (300, 0.97)],
              "atp": [(300, 0.9), (0, 0.0), (30, 0.6), (3, 0.2)]}
    assert_png(plot_faithfulness(curves, tmp_path / "f.png", title="SVA"))
    with pytest.raises(ValueError, match="no faithfulness curves"):
        plot_faithfulness({}, tmp_path / "g.png")


def test_plot_scatter(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + 0.1 * rng.normal(size=200)
    assert_png(plot_scatter(x, y, tmp_path / "s.png", xlabel="exact", ylabel="relp", title="IE"))
    assert_png(plot_scatter(torch.tensor([1.0, 2.0, float("nan")]), [1.0, 1.0, 3.0], tmp_path / "t.png",
                            xlabel="a", ylabel="b"), min_bytes=500)
    with pytest.raises(ValueError, match="same length"):
        plot_scatter([1.0, 2.0], [1.0], tmp_path / "u.png", xlabel="a", ylabel="b")
