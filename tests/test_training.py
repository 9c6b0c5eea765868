"""featcirc train-saes on the tiny model: the saved set loads, the card's metrics are right, bad
input fails early, a killed run leaves nothing behind, and the fresh SAEs discover a circuit."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from featcirc.cli import main
from featcirc.saes.trained import (TrainedSetMissing, load_recipe, recipe_command, recipe_names, trained_set_dir,
                                   trained_set_path)
from featcirc.saes.training import TrainSettings, evaluate_saes, parse_sites

FAST = ["--width", "96", "--k", "8", "--tokens", "3072", "--batch-tokens", "256", "--context-size", "32",
        "--eval-tokens", "2048", "--ce-eval-tokens", "512"]


@pytest.fixture(scope="module")
def tiny():
    import featcirc

    return featcirc.load_model("tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "saes"
    rc = main(["-q", "train-saes", "--model", "tiny", "--sites", "all", "--corpus", "tiny", "--out", str(out),
               *FAST])
    assert rc == 0
    return out


def test_saved_set_loads_and_card_is_complete(trained, tiny):
    import featcirc

    saes = featcirc.load_saes(tiny, trained)
    assert len(saes) == 1 + 3 * tiny.cfg.n_layers
    assert not [p for p in trained.parent.iterdir() if p.name.startswith(".")]  # no partial directories
    info = json.loads((trained / "metrics.json").read_text())
    assert info["architecture"] == "topk" and info["settings"]["k"] == 8
    assert info["corpus"]["sha256"] and info["train_seconds"] > 0
    for site, m in info["saes"].items():
        assert m["tokens_seen"] == 3072
        assert 0 < m["l0"] <= 8 + 1e-6
        assert -1.0 < m["fve"] <= 1.0
        assert m["ce_clean"] < 3.0  # the tiny model on in-distribution sentences (one per window)
        assert m["ce_recovered"] == pytest.approx((m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_clean"]))
    # resid SAEs must beat zero ablation even after this short training
    assert all(info["saes"][f"resid.{i}"]["ce_recovered"] > 0 for i in range(tiny.cfg.n_layers))
    card = (trained / "README.md").read_text()
    assert "| resid.3 |" in card and info["corpus"]["sha256"] in card and "train-saes" in card


def test_fve_matches_an_independent_recomputation(trained, tiny):
    import featcirc
    from featcirc.data.corpus import load_corpus, token_windows

    saes = featcirc.load_saes(tiny, trained, sites=["resid.1"])
    corpus = load_corpus("tiny")
    windows = token_windows(tiny, corpus, 32, max_tokens=32 * 20, pack=False)
    got = evaluate_saes(tiny, saes, windows, ce_windows=0, pad_id=tiny.tokenizer.pad_token_id)["resid.1"]
    _, cache = tiny.run_with_cache(windows, names_filter="blocks.1.hook_resid_post")
    keep = (windows != tiny.tokenizer.bos_token_id) & (windows != tiny.tokenizer.pad_token_id)
    x = cache["blocks.1.hook_resid_post"][keep].double()
    sae = saes["resid.1"]
    x_hat = sae.decode(sae.encode(x.float())).double()
    fve = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert got["fve"] == pytest.approx(float(fve), abs=1e-4)
    assert got["eval_tokens"] == int(keep.sum())
    assert got["l0"] == pytest.approx(float((sae.encode(x.float()) != 0).sum(-1).float().mean()))


class _Stub(torch.nn.Module):
    """encode = identity; decode = identity (perfect) or zero."""

    def __init__(self, perfect: bool) -> None:
        super().__init__()
        self.perfect = perfect

    def encode(self, x):
        return x

    def decode(self, f):
        return f if self.perfect else torch.zeros_like(f)


def test_ce_recovered_is_one_for_perfect_and_zero_for_zero_reconstruction(tiny):
    from featcirc.data.corpus import load_corpus, token_windows

    windows = token_windows(tiny, load_corpus("tiny"), 32, max_tokens=32 * 8, pack=False)
    res = evaluate_saes(tiny, {"resid.1": _Stub(True), "mlp.2": _Stub(False)}, windows,
                        pad_id=tiny.tokenizer.pad_token_id)
    assert res["resid.1"]["ce_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert res["resid.1"]["fve"] == pytest.approx(1.0, abs=1e-6)
    assert res["mlp.2"]["ce_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert res["resid.1"]["ce_zero"] > res["resid.1"]["ce_clean"]


def test_discover_with_fresh_saes(trained, tmp_path):
    out = tmp_path / "circuit"
    rc = main(["-q", "discover", "--model", "tiny", "--saes", str(trained), "--task", "sva-nounpp", "--n", "4",
               "--max-nodes", "50", "--out", str(out)])
    assert rc == 0
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n_nodes"] > 0 and summ["n_edges"] > 0


@pytest.mark.parametrize("extra,message", [
    (["--sites", "resid.9"], "beyond the model"),
    (["--sites", "bogus.1"], "not a site"),
    (["--sites", "resid.0", "--k", "500", "--width", "96"], "must not exceed"),
    (["--sites", "resid.0", "--corpus", "EMPTY"], "no text"),
    (["--sites", "resid.0", "--corpus", "no/such/path.txt"], "no corpus"),
    (["--sites", "resid.0", "--device", "cuda:7"], "cuda"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, extra, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    extra = [str(empty) if a == "EMPTY" else a for a in extra]
    out = tmp_path / "out"
    rc = main(["-q", "train-saes", "--model", "tiny", "--out", str(out), *FAST, *extra])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_needs_force(trained, capsys):
    rc = main(["-q", "train-saes", "--model", "tiny", "--sites", "resid.0", "--out", str(trained), *FAST])
    assert rc == 2 and "--force" in capsys.readouterr().err


def test_a_failed_run_leaves_nothing(tmp_path, monkeypatch, tiny):
    import featcirc.saes.training as training
    from featcirc.data.corpus import Corpus, load_corpus

    def boom(*a, **k):
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(training, "evaluate_saes", boom)
    out = tmp_path / "saes"
    with pytest.raises(RuntimeError, match="killed"):
        training.train_saes(tiny, ["resid.0"], Corpus.from_texts("t", load_corpus("tiny").texts[:400]), out,
                            TrainSettings(width=64, k=4, tokens=1024, batch_tokens=256, context_size=32, pack=False,
                                          eval_tokens=256, ce_eval_tokens=64),
                            model_name="tiny", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_parse_sites(tiny):
    assert [s.name for s in parse_sites(tiny, "all-resid")] == ["embed"] + [f"resid.{i}" for i in range(4)]
    assert [s.name for s in parse_sites(tiny, "resid.1, embed")] == ["embed", "resid.1"]
    with pytest.raises(ValueError, match="listed twice"):
        parse_sites(tiny, "resid.1,resid.1")


def test_trained_set_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path))
    with pytest.raises(TrainedSetMissing, match="featcirc train-saes --recipe gemma-3-270m$"):
        trained_set_dir("gemma-3-270m-local")
    with pytest.raises(TrainedSetMissing, match="--model tiny --sites all-resid"):
        trained_set_dir("tiny-local")
    with pytest.raises(ValueError, match="<model>-local"):
        trained_set_dir("gemma-3-270m")
    d = tmp_path / "saes" / "gemma-3-270m-local" / "resid.0"
    d.mkdir(parents=True)
    (d / "cfg.json").write_text("{}")
    assert trained_set_dir("gemma-3-270m-local") == tmp_path / "saes" / "gemma-3-270m-local"


def test_gemma_recipe_is_valid_and_writes_to_the_cache(tmp_path, monkeypatch):
    from featcirc.commands.train_saes import _plan

    assert "gemma-3-270m" in recipe_names()
    recipe = load_recipe("gemma-3-270m")
    TrainSettings(**recipe["settings"]).check()
    assert recipe["model"] == "gemma-3-270m" and recipe["corpus"] == "default"
    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path))
    args = argparse.Namespace(recipe="gemma-3-270m", model=None, sites=None, corpus=None, out=None, width=None,
                              k=16, tokens=None, lr=None, context_size=None, batch_tokens=None, seed=None,
                              sae_dtype=None, windows=None, eval_tokens=None, ce_eval_tokens=None)
    model, sites, corpus, out, settings = _plan(args)
    assert out == trained_set_path("gemma-3-270m-local") == tmp_path / "saes" / "gemma-3-270m-local"
    assert settings["k"] == 16 and settings["width"] == recipe["settings"]["width"]  # flags override the recipe
    assert recipe_command("gemma-3-270m") == "featcirc train-saes --recipe gemma-3-270m"


def test_bad_recipe(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"model": "tiny", "sites": "all", "corpus": "tiny", "settings": {"widht": 3}}))
    with pytest.raises(ValueError, match="widht"):
        load_recipe(p)
    with pytest.raises(FileNotFoundError, match="bundled recipes are"):
        load_recipe("no-such-recipe")
