"""A run records which model and SAEs it was scored with (``run.json["identity"]``) and every command that
reads it back (``evaluate``, ``features``) refuses other ones; non-finite SAE weights, activations, scores
and metric values are errors naming the site, never results (docs/design.md §11)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import one_line_error

from featcirc.cli import main

TINY_SAES = Path(__file__).resolve().parents[1] / "saes" / "tiny"
SITES = ("resid.0", "mlp.1")
FAST = ["--fractions", "0.1,0.5,1", "--bootstrap", "50"]


def _sae_copy(root: Path) -> Path:
    for site in SITES:
        shutil.copytree(TINY_SAES / site, root / site)
    return root


def _edit_weights(sae_dir: Path, name: str = "W_dec", *, nan: bool = False, scale: float = 1.0) -> None:
    from safetensors.torch import load_file, save_file

    path = sae_dir / "sae_weights.safetensors"
    w = load_file(str(path))
    if nan:
        w[name][0, 0] = float("nan")
    else:
        w[name] = w[name] * scale
    save_file(w, str(path))



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``a/mysaes`` (two tiny SAEs), a run discovered in ``a`` with the relative ``--saes mysaes``, and
    another directory ``b`` whose ``mysaes`` holds other SAEs (the same sites, weights scaled)."""
    base = tmp_path_factory.mktemp("ident")
    a, b = base / "a", base / "b"
    _sae_copy(a / "mysaes")
    _sae_copy(b / "mysaes")
    for site in SITES:
        _edit_weights(b / "mysaes" / site, "W_dec", scale=0.3)
    cwd = os.getcwd()
    os.chdir(a)
    try:
        rc = main(["-q", "discover", "--model", "tiny", "--saes", "mysaes", "--task", "sva-nounpp", "--pairs", "8",
                   "--max-nodes", "60", "--top-k", "15", "--out", "run"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return dict(base=base, a=a, b=b, run=a / "run", saes=a / "mysaes")


def _run_copy(world, tmp_path: Path, **changes) -> Path:
    """A copy of the run (evaluations write into it), with ``run.json`` keys changed (None: removed)."""
    d = tmp_path / "run"
    shutil.copytree(world["run"], d)
    raw = json.loads((d / "run.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (d / "run.json").write_text(json.dumps(raw))
    return d


def _exported_f(run: Path) -> float:
    return json.loads((run / "faithfulness-mean.json").read_text())["exported"]["faithfulness"]["value"]


def test_run_json_records_the_absolute_set_and_its_hash(world):
    from featcirc.saes.identity import sae_set_identity

    raw = json.loads((world["run"] / "run.json").read_text())
    assert raw["saes"] == str(world["saes"])  # typed as "mysaes": resolved at discover time
    ident = raw["identity"]
    assert ident["saes"]["kind"] == "directory" and ident["saes"]["path"] == str(world["saes"])
    assert list(ident["saes"]["sites"]) == list(SITES)
    assert ident["saes"]["sha256"] == sae_set_identity(str(world["saes"]))["sha256"]
    assert ident["saes"]["sha256"] != sae_set_identity(str(world["b"] / "mysaes"))["sha256"]
    assert ident["model"]["name"] == "tiny" and len(ident["model"]["sha256"]) == 64
    assert sae_set_identity("tiny")["sites"]["resid.0"] == ident["saes"]["sites"]["resid.0"]  # content, not place


def test_evaluate_from_another_directory_uses_the_runs_saes(world, tmp_path, monkeypatch):
    """It used to load ``b/mysaes`` (other SAEs) and report their faithfulness with exit 0."""
    run = _run_copy(world, tmp_path)
    monkeypatch.chdir(world["b"])
    assert main(["-q", "evaluate", str(run), *FAST]) == 0
    discovered = json.loads((run / "summary.json").read_text())["faithfulness"]["mean"]["faithfulness"]["value"]
    assert _exported_f(run) == pytest.approx(discovered, abs=1e-6)


def test_other_saes_are_refused_naming_the_expected_set(world, tmp_path, monkeypatch, capsys):
    """A shared run whose SAE directory is not on this machine: other SAEs under the same name are
    refused (path and hash named); a copy of the same SAEs passed with --saes is accepted."""
    want = json.loads((world["run"] / "run.json").read_text())["identity"]["saes"]["sha256"]
    gone = str(tmp_path / "elsewhere" / "mysaes")
    run = _run_copy(world, tmp_path, saes=gone)
    summary = (run / "summary.json").read_bytes()
    monkeypatch.chdir(world["b"])
    assert main(["-q", "evaluate", str(run), *FAST]) == 2
    err = one_line_error(capsys)
    assert gone in err and want in err and "is not there" in err and "--saes" in err
    assert main(["-q", "evaluate", str(run), "--saes", "mysaes", *FAST]) == 2  # b/mysaes: other weights
    err = one_line_error(capsys)
    assert want in err and str(world["b"] / "mysaes") in err and "resid.0, mlp.1" in err
    assert (run / "summary.json").read_bytes() == summary and not (run / "faithfulness-mean.json").exists()
    copy = _sae_copy(tmp_path / "copy")
    assert main(["-q", "evaluate", str(run), "--saes", str(copy), *FAST]) == 0
    assert _exported_f(run) == pytest.approx(
        json.loads(summary)["faithfulness"]["mean"]["faithfulness"]["value"], abs=1e-6)


def test_a_changed_sae_directory_is_refused(world, tmp_path, capsys):
    saes = _sae_copy(tmp_path / "mysaes")
    run = _run_copy(world, tmp_path, saes=str(saes))
    _edit_weights(saes / "mlp.1", "b_enc", scale=1.01)
    summary = (run / "summary.json").read_bytes()
    t0 = time.perf_counter()
    assert main(["-q", "evaluate", str(run), *FAST]) == 2
    err = one_line_error(capsys)
    assert str(saes) in err and "SAEs that differ: mlp.1" in err and "rediscover" in err
    assert time.perf_counter() - t0 < 5  # refused before the model loads
    assert (run / "summary.json").read_bytes() == summary


def test_features_refuses_other_saes(world, tmp_path, capsys):
    saes = _sae_copy(tmp_path / "mysaes")
    run = _run_copy(world, tmp_path, saes=str(saes))
    _edit_weights(saes / "resid.0", "W_enc", scale=2.0)
    assert main(["-q", "features", str(run), "--max-tokens", "256"]) == 2
    err = one_line_error(capsys)
    assert "SAEs that differ: resid.0" in err and not (run / "cards.json").exists()


def test_an_old_run_without_identity_evaluates_with_a_warning(world, tmp_path, caplog):
    run = _run_copy(world, tmp_path, identity=None)
    with caplog.at_level("WARNING", logger="featcirc"):
        assert main(["-q", "evaluate", str(run), *FAST]) == 0
    assert any("cannot be checked" in r.getMessage() for r in caplog.records)
    assert (run / "faithfulness-mean.json").exists()


# ------------------------------------------------------------------------------------ non-finite values
def test_load_saes_refuses_nan_weights_naming_the_site(tmp_path):
    from featcirc.models.loading import load_model
    from featcirc.saes.loading import load_saes

    saes = _sae_copy(tmp_path / "nan")
    _edit_weights(saes / "mlp.1", "W_dec", nan=True)
    model = load_model("tiny")
    with pytest.raises(ValueError, match=r"site mlp\.1 .*non-finite weights: W_dec holds 1 NaN"):
        load_saes(model, saes)
    assert list(load_saes(model, saes, sites=["resid.0"])) == ["resid.0"]


def test_discover_with_nan_weights_exits_2_naming_the_site(tmp_path, capsys):
    saes = _sae_copy(tmp_path / "nan")
    _edit_weights(saes / "resid.0", "W_enc", nan=True)
    out = tmp_path / "o"
    t0 = time.perf_counter()
    assert main(["-q", "discover", "--model", "tiny", "--saes", str(saes), "--task", "sva-nounpp", "--pairs", "8",
                 "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "site resid.0" in err and "non-finite" in err
    assert time.perf_counter() - t0 < 8  # at load, not after the node pass
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]


def test_evaluate_of_a_run_whose_saes_got_nan_is_refused(world, tmp_path, capsys):
    saes = _sae_copy(tmp_path / "mysaes")
    _edit_weights(saes / "mlp.1", "W_dec", nan=True)
    for changes in (dict(saes=str(saes)), dict(saes=str(saes), identity=None)):  # with and without identity
        d = tmp_path / ("new" if "identity" not in changes else "old")
        d.mkdir()
        run = _run_copy(world, d, **changes)
        summary = (run / "summary.json").read_bytes()
        assert main(["-q", "evaluate", str(run), *FAST]) == 2
        err = one_line_error(capsys)
        assert "mlp.1" in err
        assert (run / "summary.json").read_bytes() == summary and not (run / "faithfulness-mean.json").exists()


def test_non_finite_activations_are_named_by_site_in_attribution_and_evaluation():
    """SAEs given in memory skip load_saes's check: the node pass and the ablator still refuse NaN."""
    import torch

    from featcirc.attribution import AttributionSettings, attribute
    from featcirc.data import tokenize_pairs
    from featcirc.data.tasks import make_task
    from featcirc.evaluate.faithfulness import Ablator
    from featcirc.models.loading import load_model
    from featcirc.saes.loading import load_saes

    model = load_model("tiny")
    saes = load_saes(model, "tiny", sites=["resid.0", "mlp.1"])
    with torch.no_grad():
        saes["mlp.1"].W_enc[:, :] = float("nan")
    data = tokenize_pairs(model, make_task("sva-nounpp", 4), batch_size=4)
    with pytest.raises(ValueError, match=r"non-finite node activations at site mlp\.1"):
        attribute(model, data, "relp", saes, settings=AttributionSettings(max_nodes=20, progress=False))
    with pytest.raises(ValueError, match=r"metric is NaN or infinite .*site mlp\.1"):
        Ablator(model, data, level="feature", saes=saes, ablation="mean", progress=False)


def test_a_named_set_is_identified_by_the_files_it_was_loaded_from(tmp_path, monkeypatch):
    """Named sets: the files SAELens read (here from a local hub mirror) are hashed in site order; a changed
    file changes the hash and is refused once loaded."""
    from test_saes import _mirror, tiny_model

    from featcirc.saes.identity import IdentityMismatchError, check_run_identity, sae_set_identity
    from featcirc.saes.loading import SAE_HUB_ENV, load_saes

    _mirror(tmp_path, "gpt2-small")
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path))
    model = tiny_model(n_layers=12, d_model=768, name="gpt2")
    saes = load_saes(model, "gpt2-small", sites=["resid.0", "resid.3"])
    ident = sae_set_identity("gpt2-small", saes)
    assert ident["kind"] == "named" and list(ident["sites"]) == ["resid.0", "resid.3"] and ident["sha256"]
    assert sae_set_identity("gpt2-small")["sha256"] is None  # before loading: unknown, checked after
    raw = {"identity": {"model": None, "saes": ident}}
    check_run_identity(raw, model_name="gpt2", saes_spec="gpt2-small")
    check_run_identity(raw, model_name="gpt2", saes_spec="gpt2-small", saes=saes)
    weights = sorted(tmp_path.rglob("blocks.4.hook_resid_pre/sae_weights.safetensors"))[0]  # resid.3
    _edit_weights(weights.parent, "W_dec", scale=2.0)
    again = load_saes(model, "gpt2-small", sites=["resid.0", "resid.3"])
    with pytest.raises(IdentityMismatchError, match=r"named set 'gpt2-small'.*SAEs that differ: resid\.3"):
        check_run_identity(raw, model_name="gpt2", saes_spec="gpt2-small", saes=again)
