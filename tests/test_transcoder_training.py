"""Transcoder training (``featcirc train-saes --transcoders``, :func:`featcirc.saes.training.train_transcoders`)
and the bundled tiny transcoders ``saes/tiny-transcoders`` (docs/design.md §4b)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from featcirc.cli import main
from featcirc.sites import Site, transcoder_site_from_hook_name

FAST = ["--width", "64", "--tokens", "15360", "--batch-tokens", "256", "--eval-tokens", "1024",
        "--ce-eval-tokens", "256"]
"""60 steps of 256 tokens, 64 features: a few seconds on one thread."""

BUNDLE_FVE_FLOOR = 0.85
"""Every bundled tiny transcoder explains at least this much of its MLP's output variance on tiny-corpus
text (its card: 0.89 at tc.0, 0.94-0.96 at tc.1-3)."""


@pytest.fixture(scope="module")
def tiny():
    import featcirc

    return featcirc.load_model("tiny")


def _load_dir(path):
    """A SAELens SAE directory, loaded by SAELens itself (the architecture from its cfg.json)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device="cpu")


def _mlp_fve(model, transcoders: dict[int, object], texts: list[str]) -> dict[int, float]:
    """FVE of each transcoder's output against block L's MLP output on ``texts`` (BOS left out),
    recomputed here from the recorded MLP input and output."""
    from featcirc.models.mlp_io import recording_mlp_io

    toks = model.to_tokens(texts, prepend_bos=True, padding_side="right")
    keep = toks != model.tokenizer.bos_token_id
    if model.tokenizer.pad_token_id is not None:
        keep &= toks != model.tokenizer.pad_token_id
    with torch.no_grad(), recording_mlp_io(model, list(transcoders)) as io_:
        model(toks, prepend_bos=False, stop_at_layer=max(transcoders) + 1)
        out = {}
        for layer, tc in transcoders.items():
            x_in, y = (t[keep].float() for t in io_[layer])
            y_hat = tc.decode(tc.encode(x_in))
            out[layer] = 1.0 - float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tc") / "transcoders"
    rc = main(["-q", "--threads", "1", "train-saes", "--model", "tiny", "--transcoders", "--sites", "tc.1,tc.2",
               "--out", str(out), *FAST])
    assert rc == 0
    return out


def test_training_lowers_the_loss_and_writes_loadable_tc_dirs(trained, tiny):
    from sae_lens.saes.transcoder import Transcoder

    from featcirc.attribution.splice import is_transcoder

    assert sorted(p.name for p in trained.iterdir() if p.is_dir()) == ["tc.1", "tc.2"]
    info = json.loads((trained / "metrics.json").read_text())
    assert info["architecture"] == "transcoder" and set(info["saes"]) == {"tc.1", "tc.2"}
    card = (trained / "README.md").read_text()
    assert "Transcoders for tiny" in card and "| tc.1 |" in card and "CE with transcoder" in card
    loaded = {}
    for name, m in info["saes"].items():
        # 60 steps from a random initialisation: the loss, and its squared error, fall well below their start
        assert m["train_loss_end"] < 0.7 * m["train_loss_start"], (name, m)
        assert m["train_mse_end"] < 0.5 * m["train_mse_start"], (name, m)
        for key in ("l0", "fve", "ce_recovered", "dead_fraction", "ce_clean", "ce_sae", "ce_zero"):
            assert key in m, (name, key)
        assert 0 < m["l0"] < 64 and m["fve"] > 0.3, (name, m)
        tc = _load_dir(trained / name)
        assert isinstance(tc, Transcoder) and is_transcoder(tc)
        assert (tc.cfg.d_in, tc.cfg.d_out, tc.cfg.d_sae) == (tiny.cfg.d_model, tiny.cfg.d_model, 64)
        layer = Site.parse(name).layer
        assert tc.cfg.metadata.hook_name == f"blocks.{layer}.hook_mlp_in"
        assert tc.cfg.metadata.hook_name_out == f"blocks.{layer}.hook_mlp_out"
        assert transcoder_site_from_hook_name(tc.cfg.metadata.hook_name) == name
        loaded[layer] = tc
    import featcirc

    assert {k: type(v).__name__ for k, v in featcirc.load_saes(tiny, trained).items()} == {
        "tc.1": "Transcoder", "tc.2": "Transcoder"}  # featcirc's loader puts them at tc.L too
    # the saved weights compute what the card measured (the scalings folded in): same FVE, recomputed
    from featcirc.data.corpus import load_corpus

    texts = list(load_corpus("tiny").texts[:300])
    fve = _mlp_fve(tiny, loaded, texts)
    for layer, v in fve.items():
        assert abs(v - info["saes"][f"tc.{layer}"]["fve"]) < 0.1, (layer, v)


def test_bundled_transcoders_splice_exactly_and_fit(tiny):
    from featcirc.attribution.splice import Splice
    from featcirc.data.corpus import load_corpus
    from featcirc.saes.bundled_path import bundled_sae_dir

    bundle = bundled_sae_dir() / "tiny-transcoders"
    names = sorted(p.name for p in bundle.iterdir() if p.is_dir())
    assert names == [f"tc.{layer}" for layer in range(tiny.cfg.n_layers)]
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size < 5e6, size
    tcs = {name: _load_dir(bundle / name) for name in names}
    for name, tc in tcs.items():
        assert transcoder_site_from_hook_name(tc.cfg.metadata.hook_name) == name
    info = json.loads((bundle / "metrics.json").read_text())
    assert set(info["saes"]) == set(names) and info["architecture"] == "transcoder"

    texts = list(load_corpus("tiny").texts[-200:])
    toks = tiny.to_tokens(texts[:16], prepend_bos=True, padding_side="right")
    splice = Splice(tiny, tcs)
    with torch.no_grad():
        clean = tiny(toks, prepend_bos=False)
        with splice.record() as store:
            spliced_record = tiny(toks, prepend_bos=False)
    with splice.leaves():
        spliced = tiny(toks, prepend_bos=False)
    assert (spliced.detach() - clean).abs().max() < 1e-4
    assert (spliced_record - clean).abs().max() < 1e-4
    for name in names:  # features are read from the MLP's input: sparse, and not all zero
        f = store[Site.parse(name)].features
        l0 = (f[:, 1:] != 0).float().sum(-1).mean()
        assert 1 <= l0 < 64, (name, float(l0))

    fve = _mlp_fve(tiny, {Site.parse(n).layer: tc for n, tc in tcs.items()}, texts)
    for layer, v in fve.items():
        assert v > BUNDLE_FVE_FLOOR, (layer, v)
        assert info["saes"][f"tc.{layer}"]["fve"] > BUNDLE_FVE_FLOOR


@pytest.mark.parametrize("extra,message", [
    (["--transcoders", "--sites", "resid.0,tc.1"], "not resid.0"),
    (["--transcoders", "--sites", "tc.4"], "beyond the model"),
    (["--transcoders", "--sites", "tc.1,tc.1"], "listed twice"),
    (["--transcoders", "--sites", "all-resid"], "all-resid"),
    (["--transcoders", "--k", "8"], "--l1-coefficient"),
    (["--transcoders", "--l1-coefficient", "-1"], "--l1-coefficient must be"),
    (["--sites", "tc.0"], "--transcoders"),
    (["--sites", "resid.0", "--l1-coefficient", "3"], "--transcoders"),
])
def test_bad_transcoder_input_exits_2_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = main(["-q", "train-saes", "--model", "tiny", "--out", str(out), *FAST, *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and err.startswith("featcirc train-saes: error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_transcoders_default_to_every_layer():
    from featcirc.commands.train_saes import _plan, check

    args = argparse.Namespace(recipe=None, model="tiny", sites=None, corpus=None, out="x-never-made", width=None,
                              k=None, tokens=None, lr=None, context_size=None, batch_tokens=None, seed=None,
                              sae_dtype=None, windows=None, eval_tokens=None, ce_eval_tokens=None, transcoders=True,
                              l1_coefficient=2.5, device="cpu", force=False)
    plan = _plan(args)
    assert plan.transcoders and plan.sites == "all" and plan.settings["l1_coefficient"] == 2.5
    check(args)  # every check passes (all layers fit the model)


def test_parse_transcoder_sites(tiny):
    from featcirc.saes.training import parse_transcoder_sites

    assert parse_transcoder_sites(tiny, None) == ["tc.0", "tc.1", "tc.2", "tc.3"]
    assert parse_transcoder_sites(tiny, "tc.2,tc.0") == ["tc.0", "tc.2"]
    with pytest.raises(ValueError, match="not mlp.1"):
        parse_transcoder_sites(tiny, "mlp.1")
    with pytest.raises(ValueError, match="beyond the model"):
        parse_transcoder_sites(tiny, ["tc.7"])


def test_demo_transcoders_uses_the_bundled_set():
    from featcirc.cli import build_parser
    from featcirc.commands import demo

    args = build_parser().parse_args(["demo", "--transcoders", "--out", "x"])
    assert args.transcoders is True
    cfg = demo.demo_config(args)
    assert cfg.saes == "tiny-transcoders"
    cfg.check()  # the set name (or the bundled directory) passes the --saes checks
    assert demo.demo_config(build_parser().parse_args(["demo", "--out", "x"])).saes == "tiny"
