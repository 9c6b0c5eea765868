"""SAEs are checked to fit the sites they are spliced at when a command loads them (docs/design.md §10b,
:mod:`featcirc.saes.fit`): the bundled tiny SAEs pass; an SAE at the wrong hook or made for another model
is a one-line error naming the site, its FVE and the likely cause; ``--skip-fit-check`` and
``FEATCIRC_SKIP_FIT_CHECK=1`` let it through; the measurement is cached per (model, SAEs)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

from featcirc.cli import main
from featcirc.commands.common import load_model_and_saes
from featcirc.saes import fit
from featcirc.saes.fit import MIN_FVE, SKIP_ENV, SAEFitError, check_fit, fit_record, skipping
from featcirc.sites import Site

TINY_SAES = Path(__file__).resolve().parents[1] / "saes" / "tiny"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache of this test's own, and no skip requested by the environment."""
    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(SKIP_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny():
    import featcirc

    model = featcirc.load_model("tiny")
    return model, featcirc.load_saes(model, "tiny")


def _moved(sae, site: str):
    """A copy of ``sae`` that says it belongs at ``site`` (its cfg's hook_name changed)."""
    out = copy.deepcopy(sae)
    out.cfg.metadata.hook_name = Site.parse(site).hook_name
    return out


def _moved_dir(root: Path, source: str, site: str) -> Path:
    """A directory with the bundled SAE of ``source`` whose cfg.json names ``site``'s hook."""
    shutil.copytree(TINY_SAES / source, root / site)
    cfg = json.loads((root / site / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = Site.parse(site).hook_name
    (root / site / "cfg.json").write_text(json.dumps(cfg))
    return root


# ------------------------------------------------------------------------------------------ (a)
def test_the_bundled_tiny_saes_fit_their_sites(tiny):
    model, saes = tiny
    t0 = time.perf_counter()
    record = check_fit(model, saes, model_name="tiny", saes_spec="tiny")
    seconds = time.perf_counter() - t0
    assert list(record) == list(saes)
    for site, r in record.items():
        assert r["fve"] > 0.95, (site, r)  # measured 0.980 (resid.0) to 0.999 (mlp.2)
        assert r["l0"] == pytest.approx(16.0) and r["expected_l0"] == pytest.approx(16.0)  # TopK, k = 16
        assert 500 <= r["tokens"] <= 1000 and r["sample"].startswith("tiny sentences")
    assert fit_record(saes) == record
    assert seconds < 3.0, f"the fit check took {seconds:.2f} s"  # about 0.3 s on a busy 2-core machine


def test_commands_check_and_record_while_the_library_does_not(tmp_path):
    import featcirc

    bad = _moved_dir(tmp_path / "saes", "resid.2", "embed")
    model = featcirc.load_model("tiny")
    saes = featcirc.load_saes(model, bad)  # the library loads what it is given
    assert list(saes) == ["embed"] and fit_record(saes) is None
    model, saes = load_model_and_saes("tiny", "tiny", "feature")
    assert set(fit_record(saes)) == set(saes) and min(r["fve"] for r in fit_record(saes).values()) > 0.95
    _, none = load_model_and_saes("tiny", None, "component")
    assert none is None


# ------------------------------------------------------------------------------------------ (b)
@pytest.mark.parametrize("source,site,fits", [
    ("resid.2", "embed", "blocks.2.hook_resid_post"),  # hook_resid_pre of block 0 for resid_post of block 2
    ("mlp.1", "attn.1", "blocks.1.hook_mlp_out"),  # the MLP's output for the attention's
])
def test_an_sae_at_the_wrong_hook_is_caught_with_its_cause(tiny, source, site, fits):
    model, saes = tiny
    with pytest.raises(SAEFitError) as e:
        check_fit(model, {site: _moved(saes[source], site)}, model_name="tiny")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"site {site}" in msg and Site.parse(site).hook_name in msg
    assert f"below FVE {MIN_FVE}" in msg and re.search(r": FVE (-\d+|0\.[0-2])\.?\d*, L0 16\.0 \(expected 16\)", msg)
    assert f"likely a wrong hook: it reconstructs {fits}" in msg
    assert "--skip-fit-check" in msg and f"{SKIP_ENV}=1" in msg


def test_a_normalised_input_is_named_as_a_pre_or_post_norm_mix_up(tiny, monkeypatch):
    """TopK SAEs are nearly scale-invariant, so the tiny model has no SAE of a normalised input that fails;
    the cause is worded from the hook that fits best."""
    model, saes = tiny
    monkeypatch.setattr(fit, "_best_other_hook", lambda *a, **k: (0.93, "blocks.2.ln1.hook_normalized"))
    with pytest.raises(SAEFitError, match=r"site embed .*pre- vs post-norm mix-up: it reconstructs "
                                          r"blocks\.2\.ln1\.hook_normalized \(FVE 0\.93\)"):
        check_fit(model, {"embed": _moved(saes["resid.2"], "embed")}, model_name="tiny")


# ------------------------------------------------------------------------------------------ (c)
def test_an_sae_of_another_model_is_caught(tiny):
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer

    model, saes = tiny
    cfg = copy.deepcopy(model.cfg)  # the same shapes, other (random) weights
    cfg.model_name, cfg.seed = "other-model", 5
    other = HookedTransformer(cfg, tokenizer=model.tokenizer).eval()
    with pytest.raises(SAEFitError) as e:
        check_fit(other, {"resid.1": saes["resid.1"]}, model_name="tiny")
    msg = str(e.value)
    assert "site resid.1" in msg and "trained for another model (its cfg.json says model 'featcirc-tiny')" in msg
    assert "no hook of blocks 0-3 of its width fits it either" in msg

    torch.manual_seed(0)  # random weights of the right shape
    rnd = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=256)).eval()
    rnd.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    with pytest.raises(SAEFitError, match=r"site resid\.1 at blocks\.1\.hook_resid_post: FVE -\d.*another model"):
        check_fit(model, {"resid.1": rnd}, model_name="tiny")


# ------------------------------------------------------------------------------------------ (d)
def test_skipping_lets_a_bad_sae_through(tmp_path, monkeypatch):
    bad = _moved_dir(tmp_path / "saes", "resid.2", "embed")
    with pytest.raises(SAEFitError):
        load_model_and_saes("tiny", str(bad), "feature")
    _, saes = load_model_and_saes("tiny", str(bad), "feature", fit_check=False)
    assert list(saes) == ["embed"] and fit_record(saes) is None
    with skipping():
        _, saes = load_model_and_saes("tiny", str(bad), "feature")
    assert list(saes) == ["embed"]
    monkeypatch.setenv(SKIP_ENV, "1")
    _, saes = load_model_and_saes("tiny", str(bad), "feature")
    assert list(saes) == ["embed"] and fit_record(saes) is None
    with pytest.raises(SAEFitError):  # an explicit request wins over the environment
        load_model_and_saes("tiny", str(bad), "feature", fit_check=True)


def test_every_command_that_loads_saes_takes_the_flag():
    from featcirc.cli import build_parser

    p = build_parser()
    for argv in (["discover", "--model", "tiny", "--task", "ioi", "--out", "o"],
                 ["compare", "--model", "tiny", "--task", "ioi", "--out", "o"],
                 ["evaluate", "run"], ["features", "run"]):
        assert p.parse_args([*argv, "--skip-fit-check"]).skip_fit_check is True
        assert p.parse_args(argv).skip_fit_check is False


# ------------------------------------------------------------------------------------------ (e)
def test_the_measurement_is_cached_per_model_and_saes(tiny, tmp_path, monkeypatch):
    model, saes = tiny
    calls = []
    measure = fit.measure_fit
    monkeypatch.setattr(fit, "measure_fit", lambda *a, **k: calls.append(1) or measure(*a, **k))
    first = check_fit(model, saes, model_name="tiny", saes_spec="tiny")
    files = list((tmp_path / "cache" / "sae-fit").glob("*.json"))
    assert len(calls) == 1 and len(files) == 1
    assert check_fit(model, saes, model_name="tiny", saes_spec="tiny") == first
    assert len(calls) == 1  # no second forward
    some = {s: saes[s] for s in ("resid.0", "mlp.1")}  # another set: measured again
    check_fit(model, some, model_name="tiny", saes_spec="tiny")
    assert len(calls) == 2
    files[0].write_text("{not json")  # a damaged cache entry is measured again and rewritten
    assert check_fit(model, saes, model_name="tiny", saes_spec="tiny") == first
    assert len(calls) == 3 and json.loads(files[0].read_text())["key"]["format"] == fit.FIT_CACHE_FORMAT
    check_fit(model, saes)  # SAEs without a name (built in memory) are not cached
    assert len(calls) == 4


# ------------------------------------------------------------------------------------------ (f)
def test_discover_with_a_misplaced_sae_exits_2_in_one_line_and_runs_when_told_to(tmp_path, capsys):
    bad = _moved_dir(tmp_path / "saes", "resid.2", "embed")
    out = tmp_path / "run"
    args = ["-q", "discover", "--model", "tiny", "--saes", str(bad), "--task", "sva-nounpp", "--pairs", "4",
            "--max-nodes", "30", "--top-k", "10", "--out", str(out)]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert err.startswith("featcirc discover: error: an SAE does not fit 'tiny'")
    assert "site embed" in err and "FVE -" in err and "likely a wrong hook" in err and "--skip-fit-check" in err
    assert not out.exists()
    assert main([*args, "--skip-fit-check"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["sae_fit"] is None  # not measured


def test_discover_records_the_fit_in_run_json(tmp_path):
    from featcirc.run_files import check_run_values, read_run_json

    out = tmp_path / "run"
    assert main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4",
                 "--max-nodes", "30", "--top-k", "10", "--out", str(out)]) == 0
    _, raw = read_run_json(out)
    assert set(raw["sae_fit"]) == {p.name for p in TINY_SAES.iterdir() if p.is_dir()}
    r = raw["sae_fit"]["resid.2"]
    assert r["fve"] > 0.95 and r["l0"] == 16.0 and r["expected_l0"] == 16.0 and r["tokens"] > 500
    with pytest.raises(ValueError, match="field 'sae_fit' is a number, not a JSON object"):
        check_run_values({**raw, "sae_fit": 0.5}, "run.json")


def test_other_models_are_measured_on_a_packed_english_sample(tiny, monkeypatch):
    """Models other than tiny get the built-in passage (or the default corpus's first documents, when it is
    assembled here) in windows of up to 128 tokens, BOS first and not counted, about 500 tokens in all."""
    from types import SimpleNamespace

    model, _ = tiny
    other = SimpleNamespace(cfg=SimpleNamespace(model_name="other", n_ctx=48), tokenizer=model.tokenizer)
    name, windows, keep = fit.fit_sample(other, "other")
    assert name == "built-in passage"  # this test's cache holds no default corpus
    bos = model.tokenizer.bos_token_id
    assert windows.shape[1] == 48 and bool((windows[:, 0] == bos).all()) and not bool(keep[:, 0].any())
    assert 400 <= int(keep.sum()) <= fit.SAMPLE_TOKENS
    again = fit.fit_sample(other, "other")
    assert torch.equal(again[1], windows) and torch.equal(again[2], keep)  # fixed: the cache key depends on it
    monkeypatch.setattr(fit, "_default_corpus_head", lambda: ["The river rose.", "A short text."])
    name, windows, keep = fit.fit_sample(other, "other")
    assert name.startswith("default corpus") and windows.shape[0] == 1 and int(keep.sum()) < 20


# ------------------------------------------------------------------------------------------ (g) transcoders
def _fitted_transcoder(model, layer: int, *, read: str = "mlp_in", skip: bool = False, d_sae: int = 512):
    """A ReLU transcoder for block ``layer``'s MLP, fitted here on sentences other than the fit sample's: a
    random encoder of ``read`` (``mlp_in``: ln2's output, as featcirc feeds it; or a hook such as
    ``hook_resid_mid``, the pre-norm stream) with about 1 in 6 features active, and the decoder (with ``skip``:
    the decoder and a linear skip ``W_skip``) by ridge least squares onto the MLP's output."""
    from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig

    from featcirc.data.corpus import Corpus, token_windows
    from featcirc.data.tiny_corpus import build_corpus, load_vocab_split
    from featcirc.models.mlp_io import recording_mlp_io

    texts = build_corpus(load_vocab_split(), 7, n_ioi=64, n_sva=16, n_filler=256)[:300]
    windows = token_windows(model, Corpus.from_texts("fit-train", texts), 32, pack=False)
    keep = windows != model.tokenizer.pad_token_id
    keep[:, 0] = False
    hook = f"blocks.{layer}.{read}"
    with torch.no_grad(), recording_mlp_io(model, [layer]) as io:
        _, cache = model.run_with_cache(windows, names_filter=lambda h: h == hook, stop_at_layer=layer + 1,
                                        prepend_bos=False)
    x = io[layer][0][keep] if read == "mlp_in" else cache[hook][keep]
    y = io[layer][1][keep]
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(layer)
    w = torch.randn(d, d_sae, generator=g)
    w = w / ((x - x.mean(0)) @ w).std(0)
    b = -(x.mean(0) @ w) - 1.0
    feats = [torch.relu(x @ w + b)] + ([x] if skip else [])
    a = torch.cat([*feats, torch.ones(len(x), 1)], 1).double()
    sol = torch.linalg.solve(a.T @ a + 1e-2 * torch.eye(a.shape[1], dtype=torch.double), a.T @ y.double()).float()
    cls, cfg_cls = (SkipTranscoder, SkipTranscoderConfig) if skip else (Transcoder, TranscoderConfig)
    tc = cls(cfg_cls(d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.W_enc.copy_(w)
        tc.b_enc.copy_(b)
        tc.W_dec.copy_(sol[:d_sae])
        tc.b_dec.copy_(sol[-1])
        if skip:
            tc.W_skip.copy_(sol[d_sae:d_sae + d].T)
    tc.cfg.metadata.hook_name = f"blocks.{layer}.hook_mlp_in"
    tc.cfg.metadata.model_name = "featcirc-tiny"
    return tc.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def transcoders(tiny):
    model, _ = tiny
    return dict(good=_fitted_transcoder(model, 2), prenorm=_fitted_transcoder(model, 2, read="hook_resid_mid"),
                skip=_fitted_transcoder(model, 2, skip=True), layer3=_fitted_transcoder(model, 3))


def test_a_fitted_transcoder_fits_its_mlp_beside_saes_and_is_recorded(tiny, transcoders, tmp_path):
    model, saes = tiny
    mixed = {"resid.1": saes["resid.1"], "tc.2": transcoders["good"], "resid.2": saes["resid.2"]}
    record = check_fit(model, mixed, model_name="tiny")
    assert record["tc.2"]["fve"] > 0.9  # measured 0.989
    assert 20 < record["tc.2"]["l0"] < 200 and record["tc.2"]["tokens"] == record["resid.1"]["tokens"]
    assert record["resid.2"]["fve"] > 0.95 and fit_record(mixed) == record
    # the skip connection is part of the prediction (SAELens's SkipTranscoder.forward adds x @ W_skip.T)
    skip = transcoders["skip"]
    with_skip = check_fit(model, {"tc.2": skip}, model_name="tiny")["tc.2"]["fve"]
    assert with_skip > 0.9
    cut = copy.deepcopy(skip)
    cut.W_skip.zero_()
    assert fit.measure_fit(model, {"tc.2": cut}, *fit.fit_sample(model, "tiny")[1:])["tc.2"]["fve"] < with_skip - 0.05
    # through a command's loader: a directory mixing SAEs and the transcoder, cached like the SAEs
    from featcirc.saes.loading import save_saes

    save_saes({"resid.2": saes["resid.2"], "tc.2": transcoders["good"]}, tmp_path / "set")
    _, loaded = load_model_and_saes("tiny", str(tmp_path / "set"), "feature")
    rec = fit_record(loaded)
    assert set(rec) == {"resid.2", "tc.2"} and rec["tc.2"]["fve"] == pytest.approx(record["tc.2"]["fve"], abs=1e-4)
    assert len(list((tmp_path / "cache" / "sae-fit").glob("*.json"))) == 1


def test_a_transcoder_reading_the_pre_norm_stream_is_caught_with_its_cause(tiny, transcoders):
    model, _ = tiny
    with pytest.raises(SAEFitError) as e:
        check_fit(model, {"tc.2": transcoders["prenorm"]}, model_name="tiny")
    msg = str(e.value)
    assert "\n" not in msg and "--skip-fit-check" in msg
    assert "site tc.2 a transcoder from block 2's MLP input to blocks.2.hook_mlp_out: FVE" in msg
    assert re.search(r"likely its input is read at the wrong point: it predicts blocks\.2\.hook_mlp_out from "
                     r"blocks\.2\.hook_resid_mid \(FVE 0\.9\d\), the pre-norm residual stream \(ln2's input\), instead "
                     r"of the MLP's input \(ln2's output", msg), msg


def test_a_transcoder_of_another_layer_or_model_is_caught(tiny, transcoders):
    from transformer_lens import HookedTransformer

    model, _ = tiny
    moved = copy.deepcopy(transcoders["layer3"])
    moved.cfg.metadata.hook_name = "blocks.1.hook_mlp_in"
    with pytest.raises(SAEFitError, match=r"site tc\.1 .*likely a transcoder of another layer: it predicts block 3's "
                                          r"MLP output from that MLP's input \(FVE 0\.9\d\) instead"):
        check_fit(model, {"tc.1": moved}, model_name="tiny")
    cfg = copy.deepcopy(model.cfg)  # the same shapes, other (random) weights
    cfg.model_name, cfg.seed = "other-model", 5
    other = HookedTransformer(cfg, tokenizer=model.tokenizer).eval()
    with pytest.raises(SAEFitError) as e:
        check_fit(other, {"tc.2": transcoders["good"]}, model_name="other")
    msg = str(e.value)
    assert "site tc.2" in msg and "likely a transcoder trained for another model (its cfg.json says model " \
                                  "'featcirc-tiny')" in msg
    assert "no input point of blocks 0-3 predicts the MLP's output with it" in msg
