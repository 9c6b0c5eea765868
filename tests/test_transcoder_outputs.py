"""Transcoder circuits (``tc.L``) through the outputs: attribution-graph JSON (Neuronpedia / circuit-tracer),
graph files and feature files, the drawing, the viewer, feature cards (encoded from the MLP's input) and
the memory estimate. A transcoder's nodes are named apart from an ``mlp.L`` SAE's everywhere."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch

from featcirc.attribution import attribute
from featcirc.attribution.scores import EdgeScores, NodeScores
from featcirc.circuit import PruneSettings, full_graph, prune
from featcirc.colours import SITE_COLOURS
from featcirc.export.graph_files import write_graph_files
from featcirc.export.neuronpedia import (TC_SITE_CODE_BASE, cantor_unpair, feature_number, site_code,
                                         to_neuronpedia, validate_neuronpedia, vector_feature_number)
from featcirc.export.plot import circuit_figure
from featcirc.features.cache import sae_set_fingerprint
from featcirc.features.cards import compute_cards
from featcirc.features.tracer_files import write_tracer_features
from featcirc.memory import estimate_peak_bytes
from featcirc.models.mlp_io import recording_mlp_io
from featcirc.sites import METRIC, stream_index
from featcirc.view import render_html, viewer_data
from tests.conftest import D_VOCAB, make_dataset, make_model, make_saes, make_transcoders
from test_export import check_neuronpedia_schema, viewer_keys
from test_view import browse, chain_graph, needs_chromium

TOKENS = ["<bos>", "a", "b", "c", "d", "e", "f", "g"]  # the dataset's prompts have up to 8 tokens
TC_TEXT = "transcoder: MLP input \u2192 MLP output"


@pytest.fixture(scope="module")
def model():
    return make_model("gpt2")


@pytest.fixture(scope="module")
def scored(model):
    """``attribute()`` with a transcoder at tc.0 beside SAEs at mlp.1 and resid.1: the full graph."""
    saes = make_saes(model, kinds=("mlp", "resid"))
    splice = {**make_transcoders(model, layers=[0]), "mlp.1": saes["mlp.1"], "resid.1": saes["resid.1"]}
    nodes, edges = attribute(model, make_dataset(), "relp", splice)
    return full_graph(nodes, edges)


def test_transcoder_circuit_exports_as_transcoder_features(scored):
    G = prune(scored, PruneSettings(top_k=40))
    tc_feats = [n for n, d in G.nodes(data=True) if d["site"] == "tc.0" and d["kind"] == "feature"]
    assert tc_feats and any(d["site"] == "mlp.1" for _, d in G.nodes(data=True))
    d = to_neuronpedia(G, slug="tc-graph", prompt="a b c", prompt_tokens=TOKENS, scan="gpt2-small")
    check_neuronpedia_schema(d)
    validate_neuronpedia(d)
    assert len(set(viewer_keys(d))) == len(d["nodes"])
    nodes = {n["node_id"]: n for n in d["nodes"]}
    for nid in tc_feats:
        n, a = nodes[nid], G.nodes[nid]
        # circuit-tracer's transcoder features: "cross layer transcoder" at the transcoder's layer
        assert (n["feature_type"], n["layer"], n["site"]) == ("cross layer transcoder", "0", "tc.0")
        assert cantor_unpair(n["feature"]) == (TC_SITE_CODE_BASE, a["feature"])
        assert n["clerp"] == f"tc.0 f{a['feature']} @{a['position']}" and n["ctx_idx"] == a["position"]
    errs = [n for n in d["nodes"] if n["site"] == "tc.0" and n["kind"] == "error"]
    assert errs and all(n["feature_type"] == "mlp reconstruction error" and n["clerp"].startswith("Err: tc.0 ")
                        and n["feature"] == -(1 + TC_SITE_CODE_BASE) for n in errs)
    mlp = [n for n in d["nodes"] if n["site"] == "mlp.1" and n["kind"] == "feature"]
    assert all(cantor_unpair(n["feature"])[0] == stream_index("mlp.1", 2) for n in mlp)
    info = d["metadata"]["info"]["features"]
    assert (info["kind"], info["transcoder_sites"], info["sae_sites"]) == ("mixed", ["tc.0"], ["mlp.1", "resid.1"])
    # only transcoder features: the metadata says so
    only = G.subgraph([n for n, a in G.nodes(data=True) if n == METRIC or a["site"] == "tc.0"]).copy()
    info = to_neuronpedia(only, slug="tc-only", prompt="a", prompt_tokens=TOKENS)["metadata"]["info"]["features"]
    assert info["kind"] == "transcoder" and info["transcoder_sites"] == ["tc.0"] and "MLP input" in info["description"]


def test_mlp_and_tc_of_one_layer_never_share_a_number():
    """An ``mlp.0`` SAE feature and a ``tc.0`` transcoder feature (same index, same position; an SAE set may
    hold both) and their error nodes keep distinct feature numbers, viewer keys and feature files."""
    sites = ["mlp.0", "tc.0", "resid.0"]
    feats = {s: torch.zeros(3, 5) for s in sites}
    for s in sites:
        feats[s][2, 3] = 0.5
    ns = NodeScores(method="relp", level="feature", aggregation="none", sites=sites, features=feats,
                    vectors={s: torch.tensor([0.0, 0.0, 0.2]) for s in sites}, n_pairs=1, metric_clean=1.0,
                    info={"n_layers": 1})
    G = full_graph(ns, EdgeScores(method="relp", aggregation="none",
                                  edges={("tc.0/3@2", "resid.0/3@2"): 0.3, ("mlp.0/3@2", "resid.0/3@2"): 0.2,
                                         ("resid.0/3@2", METRIC): 0.5}))
    d = to_neuronpedia(G, slug="s", prompt="p", prompt_tokens=TOKENS[:3])
    validate_neuronpedia(d)
    nodes = {n["node_id"]: n for n in d["nodes"]}
    assert nodes["tc.0/3@2"]["feature"] != nodes["mlp.0/3@2"]["feature"]
    assert nodes["tc.0/err@2"]["feature"] == vector_feature_number("tc.0") != nodes["mlp.0/err@2"]["feature"]
    assert nodes["tc.0/err@2"]["clerp"] == "Err: tc.0 “b”" and nodes["mlp.0/err@2"]["clerp"] == "Err: mlp.0 “b”"
    assert len(set(viewer_keys(d))) == len(d["nodes"])
    assert site_code("tc.0") != site_code("mlp.0") and site_code("tc.7") == TC_SITE_CODE_BASE + 7
    # tc codes stay clear of every other site of a model of up to 3,000 layers
    others = {site_code(f"{k}.{layer}") for layer in range(3000) for k in ("attn", "mlp", "resid")} | {0}
    assert not others & {site_code(f"tc.{layer}") for layer in range(3000)}
    merged = json.loads(json.dumps(d))
    for n in merged["nodes"]:
        if n["node_id"] == "tc.0/3@2":
            n["feature"] = feature_number("mlp.0", 3)  # what mlp.0's stream index would give
    with pytest.raises(ValueError, match="viewers would merge"):
        validate_neuronpedia(merged)


def test_graph_files_and_feature_files_name_transcoder_features(scored, tmp_path):
    G = prune(scored, PruneSettings(top_k=25))
    path = write_graph_files(G, tmp_path, prompt="a b", prompt_tokens=TOKENS, scan="gpt2-small",
                             feature_set="gpt2.mixed", slug="tc")
    graph = json.loads(path.read_text())
    validate_neuronpedia(graph, local_viewer=True)
    assert any(n["site"] == "tc.0" and n["feature_type"] == "cross layer transcoder" for n in graph["nodes"])
    card = {"density": 0.1, "max_activation": 2.0, "top_examples": [], "quantiles": [],
            "logit_lens": {"top": [["a", 1.0]], "bottom": [["b", -1.0]]}}
    cards = {"tc.0/3": {**card, "site": "tc.0", "feature": 3}, "mlp.0/3": {**card, "site": "mlp.0", "feature": 3}}
    paths = write_tracer_features(cards, tmp_path / "features", feature_set="gpt2.mixed")
    assert len({p.name for p in paths}) == 2
    tc_file = tmp_path / "features" / f"{feature_number('tc.0', 3)}.json"
    doc = json.loads(tc_file.read_text())
    assert (doc["transcoder_id"], doc["index"]) == ("gpt2.mixed/tc.0", 3)


def test_drawing_colours_and_names_the_transcoder_rows(scored):
    G = prune(scored, PruneSettings(top_k=25))
    fig = circuit_figure(G, tokens=TOKENS)
    ax = fig.axes[0]
    ticks = {t.get_text(): t for t in ax.get_yticklabels()}
    assert "tc.0" in ticks and ticks["tc.0"].get_color() == SITE_COLOURS["tc"][1]
    assert SITE_COLOURS["tc"] != SITE_COLOURS["mlp"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "SAE or transcoder feature" in legend and any(TC_TEXT.replace(": ", ", ") in t for t in legend)
    only = G.subgraph([n for n, a in G.nodes(data=True) if n == METRIC or a["site"] == "tc.0"]).copy()
    legend = [t.get_text() for t in circuit_figure(only, tokens=TOKENS).axes[0].get_legend().get_texts()]
    assert "transcoder feature" in legend and "transcoder error node" in legend
    plain = G.subgraph([n for n, a in G.nodes(data=True) if a.get("site") != "tc.0"]).copy()
    plain.graph["sites"] = [s for s in plain.graph["sites"] if s != "tc.0"]  # no tc row left
    legend = [t.get_text() for t in circuit_figure(plain, tokens=TOKENS).axes[0].get_legend().get_texts()]
    assert "SAE feature" in legend and not any("transcoder" in t for t in legend)


def tc_graph() -> nx.DiGraph:
    """A 2-layer graph with transcoders at tc.0 and tc.1 (no mlp sites): a chain at position 5,
    embed -> attn.0 -> tc.0/7 -> resid.0 -> attn.1 -> tc.1/7 -> resid.1 -> metric."""
    return chain_graph(["embed"] + [f"{k}.{layer}" for layer in range(2) for k in ("attn", "tc", "resid")], "tc", 7, 2)


@needs_chromium
def test_viewer_draws_transcoder_rows_in_the_mlps_place(tmp_path):
    G = tc_graph()
    C = prune(G, PruneSettings(top_k=10))
    assert "tc.1/7@5" in C
    data = viewer_data(G, circuit=C, tokens=TOKENS[:6])
    order = ["embed"] + [f"{k}.{layer}" for layer in range(2) for k in ("attn", "tc", "resid")]
    data["sites"] = order[::-1]  # the page sorts its rows itself
    path = tmp_path / "tc.html"
    path.write_text(render_html(data), encoding="utf-8")
    dom = browse(path, profile=tmp_path / "profile")
    assert set(dom.nodes) == set(C)
    assert [site for _, site in sorted(dom.bands, key=lambda b: -b[0])] == order + ["metric"]
    text = "".join(dom.text)
    assert "tc rows: " + TC_TEXT in text and "transcoder feature (size" in text
    assert "mlp rows: MLP output" in text  # the two kinds are told apart
    pinned = "".join(browse(path, "#node=tc.1/7@5", profile=tmp_path / "profile").text)
    assert "tc.1  (" + TC_TEXT + ")" in pinned  # the node's site, named a transcoder's
    assert SITE_COLOURS["tc"][0] in render_html(data)


def test_cards_encode_transcoder_features_from_the_mlp_input(model):
    """A tc feature's card is ``tc.encode(mlp_in)``: its maximum over the corpus is that of the MLP's input
    encoded, not of the MLP's output (what the transcoder decodes to, and the site's hook)."""
    tc = make_transcoders(model, layers=[1], d_sae=16)
    windows = torch.randint(1, D_VOCAB, (6, 10), generator=torch.Generator().manual_seed(3))
    idx = list(range(16))
    cards, n = compute_cards(model, tc, {"tc.1": idx}, windows, batch_size=4, progress=False)
    assert n == windows.numel()
    with torch.no_grad(), recording_mlp_io(model, [1]) as io:
        model(windows, stop_at_layer=2)
        mlp_in, mlp_out = io[1]
        want = tc["tc.1"].encode(mlp_in).amax((0, 1))
        wrong = tc["tc.1"].encode(mlp_out).amax((0, 1))
    got = torch.tensor([cards[f"tc.1/{i}"]["max_activation"] for i in idx])
    assert torch.allclose(got, want.clamp_min(0), atol=1e-5)
    assert not torch.allclose(got, wrong.clamp_min(0), atol=1e-3)
    best = int(torch.argmax(want))
    top = cards[f"tc.1/{best}"]["top_examples"][0]
    assert top["activations"][top["max_index"]] == pytest.approx(float(want[best]), abs=1e-3)


def test_card_cache_tells_a_transcoder_from_an_sae(model):
    from sae_lens import StandardSAE, StandardSAEConfig

    tc = make_transcoders(model, layers=[0])["tc.0"]
    sae = StandardSAE(StandardSAEConfig(d_in=tc.cfg.d_in, d_sae=tc.cfg.d_sae))
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, name).copy_(getattr(tc, name))
    assert sae_set_fingerprint({"tc.0": tc}) != sae_set_fingerprint({"tc.0": sae})
    skip = make_transcoders(model, layers=[0], skip=True)["tc.0"]
    assert sae_set_fingerprint({"tc.0": skip}) != sae_set_fingerprint({"tc.0": tc})


def test_memory_estimate_counts_transcoder_sites(model):
    saes = make_saes(model, kinds=("resid",))
    tc = make_transcoders(model)
    kw = dict(batch_size=2, n_positions=8, n_pairs=4)
    alone = estimate_peak_bytes(model.cfg, {"resid.1": saes["resid.1"]}, **kw)
    both = estimate_peak_bytes(model.cfg, {"resid.1": saes["resid.1"], **tc}, **kw)
    assert both.sae_weights == alone.sae_weights + sum(
        sum(p.numel() * p.element_size() for p in list(t.parameters()) + list(t.buffers())) for t in tc.values())
    assert both.node_pass > alone.node_pass and both.sae_directions > alone.sae_directions
    # shapes only: a transcoder's (d_in, d_sae, d_out); its site holds d_out (the MLP's output)
    shaped = estimate_peak_bytes(model.cfg, {"tc.0": (20, 48, 32), "resid.1": (32, 48)}, **kw)
    assert shaped.sae_weights == ((20 * 48 + 48 * 32 + 48 + 32) + (2 * 32 * 48 + 48 + 32)) * 4
    same = estimate_peak_bytes(model.cfg, {"tc.0": (32, 48, 32), "resid.1": (32, 48)}, **kw)
    assert shaped.node_pass == same.node_pass  # the site's width is d_out, whatever d_in is
