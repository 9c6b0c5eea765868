"""Feature cards: one pass equals a brute-force computation; batch-size independence; quantile
ranges; logit lens; cache reuse; cards.json schema; circuit-tracer feature files; the CLI."""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest
import torch

from featcirc.features import cards as cards_mod
from featcirc.features.cards import (CardSettings, FeatureRequestError, bucket_edges, bucket_of, compute_cards,
                                     logit_lens, uniform_keys)
from featcirc.features.tracer_files import tracer_feature
from featcirc.sites import Site
from tests.conftest import make_model, make_saes

FEATURES = {"resid.0": [1, 5, 7], "mlp.1": [0, 3], "embed": [2]}


@pytest.fixture(scope="module")
def setup():
    model = make_model("gpt2")
    saes = make_saes(model, d_sae=16)
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(1, model.cfg.d_vocab, (23, 12), generator=g)
    return model, saes, windows


def brute_force(model, saes, features, windows):
    """Every requested activation over every window, with a full forward per site: [N, T] each."""
    out = {}
    with torch.no_grad():
        for site, idx in features.items():
            hook = Site.parse(site).hook_name
            _, cache = model.run_with_cache(windows, names_filter=hook)
            acts = saes[site].encode(cache[hook])
            for i in idx:
                out[f"{site}/{i}"] = acts[..., i]
    return out


def test_one_pass_matches_brute_force(setup):
    model, saes, windows = setup
    st = CardSettings(top_k=4, context_before=3, context_after=2)
    cards, n_tokens = compute_cards(model, saes, FEATURES, windows, settings=st, batch_size=5, progress=False)
    ref = brute_force(model, saes, FEATURES, windows)
    assert n_tokens == windows.numel()  # no tokenizer: no BOS to skip
    assert set(cards) == set(ref)
    for key, acts in ref.items():
        c = cards[key]
        assert c["site"] == key.split("/")[0] and c["feature"] == int(key.split("/")[1])
        assert c["density"] == pytest.approx(float((acts > 0).float().mean()))
        assert c["max_activation"] == pytest.approx(float(acts.max().clamp_min(0)), rel=1e-5)
        win_max = acts.max(dim=1).values
        order = sorted(range(len(win_max)), key=lambda w: (-float(win_max[w]), w))
        expected = [w for w in order if win_max[w] > 0][: st.top_k]
        assert len(c["top_examples"]) == len(expected)
        for ex, w in zip(c["top_examples"], expected):
            p = int(acts[w].argmax())
            lo = max(0, p - st.context_before)
            assert ex["max_index"] == p - lo
            assert ex["tokens"] == [str(t) for t in windows[w, lo:p + st.context_after + 1].tolist()]
            assert ex["activations"] == pytest.approx(acts[w, lo:p + st.context_after + 1].tolist(), abs=1e-3)
            assert ex["activations"][ex["max_index"]] == pytest.approx(float(win_max[w]), abs=1e-3)


def test_batch_size_does_not_change_cards(setup):
    model, saes, windows = setup
    a, _ = compute_cards(model, saes, FEATURES, windows, batch_size=3, progress=False)
    b, _ = compute_cards(model, saes, FEATURES, windows, batch_size=23, progress=False)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c, _ = compute_cards(model, saes, FEATURES, windows, batch_size=3, progress=False,
                         settings=CardSettings(seed=1))
    assert any(a[k]["quantiles"] != c[k]["quantiles"] for k in a)  # the seed picks the samples


def test_quantile_examples_lie_in_their_ranges(setup):
    model, saes, windows = setup
    st = CardSettings(top_k=2, quantile_ranges=4, per_range=3)
    cards, _ = compute_cards(model, saes, FEATURES, windows, settings=st, progress=False)
    seen_ranges = 0
    for c in cards.values():
        top_windows = {json.dumps(e["tokens"]) for e in c["top_examples"]}
        for q in c["quantiles"]:
            lo, hi = (float(x) for x in q["label"].removesuffix(" of max").split("-"))
            assert 1 <= len(q["examples"]) <= st.per_range
            for e in q["examples"]:
                a = e["activations"][e["max_index"]] / c["max_activation"]
                assert lo - 1e-3 <= a <= hi + 1e-3, (q["label"], a)
                assert json.dumps(e["tokens"]) not in top_windows
            seen_ranges += 1
    assert seen_ranges >= 4


def test_stop_at_layer_runs_only_the_blocks_needed(setup):
    model, saes, windows = setup
    fired = []
    model.blocks[1].hook_resid_post.add_hook(lambda act, hook: fired.append(hook.name))
    try:
        compute_cards(model, saes, {"resid.0": [1]}, windows[:4], progress=False)
        assert fired == []  # block 1 never ran
        compute_cards(model, saes, {"resid.1": [1]}, windows[:4], progress=False)
        assert fired  # it does when a layer-1 site is asked for
    finally:
        model.reset_hooks(including_permanent=True)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_logit_lens_follows_the_final_norm(arch):
    model = make_model(arch)
    saes = make_saes(model, d_sae=8)
    d = saes["resid.1"].W_dec[3]
    w = model.ln_final.w
    direct = (d - d.mean()) * w if arch == "gpt2" else d * w  # LayerNorm centres, RMSNorm does not
    logits = direct @ model.W_U
    (top, bottom), = logit_lens(model, d[None], n=5)
    assert [t for t, _ in top] == torch.topk(logits, 5).indices.tolist()
    assert [t for t, _ in bottom] == torch.topk(-logits, 5).indices.tolist()
    assert [v for _, v in top] == pytest.approx(torch.topk(logits, 5).values.tolist(), rel=1e-5)
    cards, _ = compute_cards(model, saes, {"resid.1": [3]}, torch.randint(1, 50, (4, 6)), progress=False,
                             settings=CardSettings(n_logits=5))
    assert [t for t, _ in cards["resid.1/3"]["logit_lens"]["top"]] == [str(t) for t, _ in top]


def test_z_site_decoders_go_through_W_O():
    from featcirc.sites import SITE_KINDS

    if "z" not in SITE_KINDS:
        pytest.skip("this featcirc has no z.L sites")
    model = make_model("gpt2")
    W_dec = torch.randn(4, model.cfg.n_heads * model.cfg.d_head)
    sae = type("S", (), {"W_dec": W_dec})()
    got = cards_mod.decoder_directions(model, "z.1", sae, torch.tensor([2]))
    want = torch.einsum("hd,hdm->m", W_dec[2].view(model.cfg.n_heads, model.cfg.d_head), model.blocks[1].attn.W_O)
    assert torch.allclose(got[0], want, atol=1e-5)


def test_bos_positions_are_not_counted():
    model = make_model("gpt2")
    saes = make_saes(model, d_sae=8)
    model.tokenizer = type("Tok", (), {"bos_token_id": 0, "pad_token_id": None, "padding_side": "right",
                                       "decode": staticmethod(lambda ids: f"t{ids[0]}")})()
    windows = torch.randint(1, 50, (6, 8))
    windows[:, 0] = 0
    cards, n_tokens = compute_cards(model, saes, {"resid.0": [0, 1, 2]}, windows, progress=False)
    assert n_tokens == 6 * 7
    acts = brute_force(model, saes, {"resid.0": [0, 1, 2]}, windows)
    for i in range(3):
        a = acts[f"resid.0/{i}"][:, 1:]
        c = cards[f"resid.0/{i}"]
        assert c["density"] == pytest.approx(float((a > 0).float().mean()))
        assert all(e["tokens"][0].startswith("t") for e in c["top_examples"])  # decoded by the tokenizer
        assert all(e["max_index"] != 0 or e["tokens"][0] != "t0" for e in c["top_examples"])


def test_bad_requests_fail_before_the_pass(setup):
    model, saes, windows = setup
    with pytest.raises(FeatureRequestError, match="resid.0 features \\[99\\].*16 features"):
        compute_cards(model, saes, {"resid.0": [99]}, windows, progress=False)
    with pytest.raises(FeatureRequestError, match="attn.7 \\(no SAE there"):
        compute_cards(model, saes, {"attn.7": [1]}, windows, progress=False)
    with pytest.raises(FeatureRequestError, match="no features"):
        compute_cards(model, saes, {}, windows, progress=False)
    with pytest.raises(ValueError, match="windows"):
        compute_cards(model, saes, FEATURES, torch.zeros(0, 4, dtype=torch.long), progress=False)


def test_hash_keys_and_buckets():
    t = torch.arange(20000)
    k = uniform_keys(t, torch.full_like(t, 7), seed=0)
    assert 0.0 <= float(k.min()) and float(k.max()) < 1.0 and abs(float(k.mean()) - 0.5) < 0.02
    assert torch.equal(k, uniform_keys(t, torch.full_like(t, 7), seed=0))
    assert not torch.equal(k, uniform_keys(t, torch.full_like(t, 8), seed=0))
    edges = bucket_edges()
    x = torch.tensor([0.01, 0.5, 1.0, 3.7, 100.0])
    b = bucket_of(x)
    assert torch.all(edges[b] <= x) and torch.all(x < edges[b + 1])


def test_distribution_extras_match_the_activations():
    acts = torch.rand(5000, generator=torch.Generator().manual_seed(0)) * 8 + 0.05
    counts = torch.bincount(bucket_of(acts), minlength=cards_mod.N_BUCKETS)
    d = cards_mod._distribution(counts, bucket_edges(), float(acts.max()))
    assert sum(d["histogram"]) == pytest.approx(5000)
    assert len(d["quantile_values"]) == 100 and d["quantile_values"][-1] == pytest.approx(float(acts.max()))
    ratio = 2 ** (1 / cards_mod.BUCKETS_PER_OCTAVE)  # within one bucket
    for q in (10, 50, 90):
        true = float(acts.quantile(q / 100))
        assert true / ratio <= d["quantile_values"][q - 1] <= true * ratio


# ------------------------------------------------------------------------------- cache, run, CLI
def test_cache_reuses_cards_and_computes_only_missing(setup, tmp_path, monkeypatch):
    from featcirc.data.corpus import Corpus
    from featcirc.features import run as run_mod

    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path))
    model, saes, _ = setup
    model.tokenizer = None
    corpus = Corpus.from_texts("mine", ["a b c"])
    windows = torch.randint(1, 50, (10, 8), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr("featcirc.data.corpus.token_windows", lambda *a, **k: windows)
    asked = []
    real = run_mod.compute_cards

    def spy(model, saes, features, windows, **kw):
        asked.append({s: list(v) for s, v in features.items()})
        return real(model, saes, features, windows, **kw)

    monkeypatch.setattr(run_mod, "compute_cards", spy)
    kw = dict(model_name="m", saes_name="/some/dir/my-saes", context_size=8, max_tokens=None, progress=False)
    first = run_mod.build_cards(model, saes, {"resid.0": [1, 5]}, corpus, **kw)
    again = run_mod.build_cards(model, saes, {"resid.0": [1, 5]}, corpus, **kw)
    more = run_mod.build_cards(model, saes, {"resid.0": [1, 5], "mlp.1": [3]}, corpus, **kw)
    assert asked == [{"resid.0": [1, 5]}, {"mlp.1": [3]}]
    assert first["cards"] == again["cards"] and more["cards"]["resid.0/1"] == first["cards"]["resid.0/1"]
    assert first["saes"] == "my-saes" and first["corpus"] == {"name": "mine", "sha256": corpus.sha256, "n_tokens": 80}
    assert len(list(tmp_path.rglob("*.json"))) == 1
    # other SAE weights under the same name do not reuse the cards
    other = make_saes(model, d_sae=16, seed=5)
    run_mod.build_cards(model, other, {"resid.0": [1]}, corpus, **kw)
    assert asked[-1] == {"resid.0": [1]}


def test_tracer_feature_file_fields():
    card = {"site": "resid.2", "feature": 7, "density": 0.25, "max_activation": 3.0,
            "top_examples": [{"tokens": ["a", "b"], "activations": [0.0, 3.0], "max_index": 1}],
            "quantiles": [{"label": "0.5-0.75 of max", "examples": [{"tokens": ["c"], "activations": [2.0],
                                                                    "max_index": 0}]}],
            "logit_lens": {"top": [[" x", 1.0]], "bottom": [[" y", -1.0]]}}
    doc = tracer_feature(card, transcoder_id="m.s/resid.2", extras={"histogram": [1.0], "quantile_values": [3.0]})
    assert doc["index"] == 7 and doc["act_max"] == 3.0 and doc["activation_frequency"] == 0.25
    assert [q["quantile_name"] for q in doc["examples_quantiles"]] == ["Top activations", "0.5-0.75 of max"]
    ex = doc["examples_quantiles"][0]["examples"][0]
    assert ex == {"tokens": ["a", "b"], "tokens_acts_list": [0.0, 3.0], "train_token_ind": 1,
                  "is_repeated_datapoint": False}
    assert doc["top_logits"] == [" x"] and doc["bottom_logits"] == [" y"]
    assert "histogram" not in tracer_feature(card, transcoder_id="t")  # optional for the viewer


def _tiny_run(tmp_path):
    """A run directory of the tiny model with a small hand-made circuit (no discover needed)."""
    from featcirc.attribution.scores import EdgeScores, NodeScores
    from featcirc.circuit import full_graph
    from featcirc.export.formats import write_json as write_graph

    run = tmp_path / "run"
    run.mkdir()
    T = 3
    feats = {"resid.0": torch.zeros(T, 768), "mlp.1": torch.zeros(T, 768), "embed": torch.zeros(T, 768)}
    feats["resid.0"][2, 5] = 0.9
    feats["mlp.1"][2, 5] = -0.4  # the same index at another site and layer
    feats["embed"][1, 11] = 0.3
    ns = NodeScores(method="relp", level="feature", aggregation="none", sites=list(feats), features=feats,
                    vectors={s: torch.tensor([0.0, 0.0, 0.1]) for s in feats}, n_pairs=2, metric_clean=2.0,
                    info={"n_layers": 4, "model": "tiny"})
    es = EdgeScores(method="relp", aggregation="none",
                    edges={("embed/11@1", "resid.0/5@2"): 0.2, ("resid.0/5@2", "mlp.1/5@2"): 0.3,
                           ("mlp.1/5@2", "metric"): 0.5, ("resid.0/5@2", "metric"): 0.4})
    write_graph(full_graph(ns, es, n_layers=4), run / "circuit.json")
    (run / "run.json").write_text(json.dumps({"model": "tiny", "saes": "tiny", "method": "relp", "level": "feature",
                                              "aggregation": "none", "data": "/abs/path/heldout_sva.jsonl",
                                              "task": None}))
    (run / "summary.json").write_text(json.dumps({"prompt": "The keys", "prompt_tokens": ["<|bos|>", "The", " keys"],
                                                  "pairs_used": 2}))
    return run


def test_features_command_writes_cards_and_tracer_files(tmp_path, monkeypatch):
    from featcirc.cli import main
    from featcirc.export.graph_files import export_run_graphs
    from featcirc.export.neuronpedia import feature_number, validate_neuronpedia
    from featcirc.features.run import validate_cards

    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path / "cache"))
    run = _tiny_run(tmp_path)
    assert main(["-q", "features", str(run), "--max-tokens", "2400", "--top-k", "3",
                 "--feature", "resid.3/7"]) == 0
    doc = json.loads((run / "cards.json").read_text())
    validate_cards(doc)
    assert sorted(doc["cards"]) == ["embed/11", "mlp.1/5", "resid.0/5", "resid.3/7"]
    assert doc["model"] == "tiny" and doc["saes"] == "tiny" and doc["corpus"]["name"] == "tiny"
    assert 0 < doc["corpus"]["n_tokens"] <= 2400
    for c in doc["cards"].values():
        assert len(c["top_examples"]) <= 3 and len(c["logit_lens"]["top"]) == 10
        examples = c["top_examples"] + [e for q in c["quantiles"] for e in q["examples"]]
        # one sentence per window for the tiny model: examples start at BOS and show no padding
        assert all("<|pad|>" not in e["tokens"] for e in examples)
        assert all(e["tokens"][0] == "<|bos|>" for e in examples if e["max_index"] < 24)
    assert doc["cards"]["resid.0/5"] != doc["cards"]["mlp.1/5"]
    fdir = run / "graph_files" / "features" / "tiny.tiny"
    assert sorted(int(p.stem) for p in fdir.glob("*.json")) == sorted(
        feature_number(s, i) for s, i in (("embed", 11), ("mlp.1", 5), ("resid.0", 5), ("resid.3", 7)))
    # the exported graph points its feature panel at those files, and every feature node has one
    summary = json.loads((run / "summary.json").read_text())
    summary["example"] = {"prompt": "The keys", "patch_prompt": "The key", "clean_answer": " are",
                          "patch_answer": " is", "metric_clean": 1.5, "metric_patch": -0.5, "p_clean_answer": 0.25,
                          "p_patch_answer": 0.05, "n_pairs_mean": 2}
    (run / "summary.json").write_text(json.dumps(summary))
    paths = export_run_graphs(run)
    graph = json.loads(paths["graph_files"].read_text())
    # circuit-tracer's local viewer reads {scan}/{feature}.json for a './' scan: the files above...
    assert graph["metadata"]["scan"] == "./data/features/tiny.tiny"
    validate_neuronpedia(graph, local_viewer=True)
    with pytest.raises(ValueError, match="scan"):  # ...a value Neuronpedia's upload rejects
        validate_neuronpedia(graph)
    upload = json.loads(paths["neuronpedia"].read_text())  # the upload file carries the model id
    assert upload["metadata"]["scan"] == "tiny" and upload["metadata"]["slug"] == graph["metadata"]["slug"]
    validate_neuronpedia(upload)
    for g in (graph, upload):  # the metric node: the example's clean answer and its probability
        m = [n for n in g["nodes"] if n["feature_type"] == "logit"]
        assert [(n["clerp"], n["token_prob"], n["activation"]) for n in m] == [('Output " are" (p=0.250)', 0.25, 1.5)]
    for n in graph["nodes"]:
        if n["feature_type"] == "cross layer transcoder":
            f = json.loads((fdir / f"{n['feature']}.json").read_text())
            assert f["index"] == int(n["node_id"].split("/")[1].split("@")[0])
    assert "/abs/path" not in (run / "neuronpedia.json").read_text()


def test_features_command_errors(tmp_path, capsys, monkeypatch):
    from featcirc.cli import main

    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path / "cache"))
    assert main(["features", str(tmp_path / "nowhere")]) == 2
    assert "run.json" in capsys.readouterr().err
    run = _tiny_run(tmp_path)
    assert main(["features", str(run), "--feature", "resid.0/9999"]) == 2
    assert "9999" in capsys.readouterr().err and not (run / "cards.json").exists()
    assert main(["features", str(run), "--feature", "bogus"]) == 2
    assert "SITE/INDEX" in capsys.readouterr().err
    comp = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**comp, "level": "component", "saes": None}))
    assert main(["features", str(run)]) == 2
    assert "component-level" in capsys.readouterr().err


def test_unpacked_windows_cut_padding_and_count_text_tokens():
    from featcirc.data.corpus import load_corpus
    from featcirc.features.run import corpus_windows
    from featcirc.models.loading import load_model

    model = load_model("tiny")
    tok = model.tokenizer
    w = corpus_windows(model, load_corpus("tiny"), 48, 3000, pack=False)
    real = w != tok.pad_token_id
    assert bool(real[:, -1].any())  # no column of padding only is left
    assert 3000 - 48 < int(real.sum()) <= 3000  # max_tokens counts text tokens, not padding
    assert bool((w[:, 0] == tok.bos_token_id).all()) and int((w == tok.bos_token_id).sum()) == len(w)
