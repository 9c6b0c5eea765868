"""Plots: circuit drawings (3 and ~150 nodes), faithfulness curves, scatters; all PNG, atomic."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from featcirc.circuit import PruneSettings, full_graph, prune, stream_index
from featcirc.export.plot import circuit_layout, draw_circuit, plot_faithfulness, plot_scatter
from featcirc.attribution.scores import EdgeScores, NodeScores
from featcirc.sites import METRIC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ["embed", "attn.0", "mlp.0", "resid.0", "attn.1", "mlp.1", "resid.1"]


def random_graph(aggregation: str = "none", T: int = 5, F: int = 12, density: float = 0.28,
                 seed: int = 0) -> nx.DiGraph:
    """A random, deterministic full graph over every site kind; ~160 nodes per-position."""
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
    nodes = [(nid, a) for nid, a in ns.iter_nodes()]
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
    return full_graph(ns, EdgeScores(method="relp", aggregation=aggregation, edges=edges))


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
    big = G.subgraph([n for n in G.nodes][:150] + [METRIC]).copy()
    big.graph.update(G.graph)
    assert 140 <= len(big) - 1 <= 200
    for name, graph in (("three", three), ("small", small), ("big", big), ("summed", random_graph("sum"))):
        path = draw_circuit(graph, tmp_path / f"{name}.png", title=name)
        assert path == tmp_path / f"{name}.png"
        assert_png(path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_draw_empty_circuit(tmp_path):
    empty = prune(random_graph(), PruneSettings(node_threshold=1e9))
    assert list(empty.nodes) == [METRIC]
    assert_png(draw_circuit(empty, tmp_path / "empty.png"))


@pytest.mark.parametrize("aggregation", ["none", "sum"])
def test_layout_orders_layers_and_columns(aggregation):
    G = random_graph(aggregation)
    xy = circuit_layout(G)
    assert set(xy) == set(G.nodes)
    # every edge points up: layers bottom to top, and attn < mlp < resid inside a layer band
    for u, v in G.edges:
        assert xy[u][1] < xy[v][1], (u, v)
    assert xy[METRIC][1] == max(y for _, y in xy.values())
    assert min(xy, key=lambda n: xy[n][1]).startswith("embed")
    col = {k: [xy[n][0] for n, d in G.nodes(data=True) if d["site"].startswith(k)] for k in ("attn", "mlp", "resid")}
    assert max(col["attn"]) < min(col["mlp"]) and max(col["mlp"]) < min(col["resid"])
    if aggregation == "none":  # positions run left to right inside a column
        a = {d["position"]: xy[n][0] for n, d in G.nodes(data=True) if d["site"] == "attn.0"}
        assert [a[p] for p in sorted(a)] == sorted(a.values())


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
