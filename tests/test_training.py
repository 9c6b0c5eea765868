"""featcirc train-saes on the tiny model: the saved set loads, the card's metrics are right, bad
input fails early, a killed run leaves nothing behind, and the fresh SAEs discover a circuit."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

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


def _dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "saes"
    # what runs killed outright (SIGKILL) left beside --out: this run removes them (featcirc.io.staged_dir)
    stale = [out.parent / f".saes.partial-{_dead_pid()}-x1", out.parent / f".saes.partial-{_dead_pid()}"]
    for d in stale:
        d.mkdir()
        (d / "cfg.json").write_text("{}")
    rc = main(["-q", "train-saes", "--model", "tiny", "--sites", "all", "--corpus", "tiny", "--out", str(out),
               *FAST])
    assert rc == 0
    assert not any(d.exists() for d in stale)
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
    # what to expect: the advice and where the tiny defaults are measured, in the card and metrics.json
    assert "## What to expect" in card and info["expectations"] in card
    assert "experiments/tiny_saes_faithfulness.sh" in info["expectations"]


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
    # 3,072 training tokens leave FVE about 0.2-0.37, below the fit check's 0.3 (docs/design.md §10b): skip it
    rc = main(["-q", "discover", "--model", "tiny", "--saes", str(trained), "--task", "sva-nounpp", "--n", "4",
               "--max-nodes", "50", "--skip-fit-check", "--out", str(out)])
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
    plan = _plan(args)
    assert plan.out == trained_set_path("gemma-3-270m-local") == tmp_path / "saes" / "gemma-3-270m-local"
    assert plan.settings["k"] == 16 and plan.settings["width"] == recipe["settings"]["width"]  # flags override
    assert plan.settings["context_size"] == recipe["settings"]["context_size"] and plan.corpus == "default"
    assert recipe_command("gemma-3-270m") == "featcirc train-saes --recipe gemma-3-270m"
    # the Gemma Scope 2 layout recipe trains its own set, gemma-3-270m-scope-local, beside the 19-site one
    scope = load_recipe("gemma-3-270m-scope")
    TrainSettings(**scope["settings"]).check()
    assert scope["model"] == "gemma-3-270m" and len(scope["sites"].split(",")) == 12
    plan = _plan(argparse.Namespace(**{**vars(args), "recipe": "gemma-3-270m-scope", "k": None}))
    assert plan.out == tmp_path / "saes" / "gemma-3-270m-scope-local" and plan.model == "gemma-3-270m"
    with pytest.raises(TrainedSetMissing, match="featcirc train-saes --recipe gemma-3-270m-scope$"):
        trained_set_dir("gemma-3-270m-scope-local")


def test_bad_recipe(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"model": "tiny", "sites": "all", "corpus": "tiny", "settings": {"widht": 3}}))
    with pytest.raises(ValueError, match="widht"):
        load_recipe(p)
    with pytest.raises(FileNotFoundError, match="bundled recipes are"):
        load_recipe("no-such-recipe")


# --------------------------------------------------------------------------------------------------
# what the user typed is checked first, before torch, and before what the machine lacks
# --------------------------------------------------------------------------------------------------
_CLI_PROBE = """
    import contextlib, io, json, sys
    from featcirc.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["-q", "train-saes", *argv])
        results.append({"rc": rc, "err": err.getvalue(), "torch": "torch" in sys.modules})
    print(json.dumps(results))
"""


def _probe(tmp_path, argvs: list[list[str]]) -> list[dict]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FEATCIRC_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), FEATCIRC_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_CLI_PROBE), json.dumps(argvs)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_site_error_wins_over_a_missing_default_corpus(tmp_path):
    """HOME and the cache empty, so the default corpus cannot be assembled from the cache: the site
    the user mistyped is reported, not the corpus, and torch was never imported."""
    out = tmp_path / "out"
    for corpus in ("default", None):
        argv = ["--model", "tiny", "--sites", "resid.9", "--out", str(out)] + (["--corpus", corpus] if corpus else [])
        (res,) = _probe(tmp_path, [argv])
        assert res["rc"] == 2
        assert "resid.9 is beyond the model: it has 4 layers" in res["err"], res["err"]
        assert "corpus" not in res["err"] and res["err"].count("\n") == 1
        assert res["torch"] is False
    assert not out.exists()


BAD_OPTIONS = [
    (["--sites", "resid.4"], "beyond the model"),
    (["--sites", "mlp.7,resid.0"], "beyond the model"),
    (["--sites", "bogus.1"], "not a site"),
    (["--sites", "resid.0,resid.0"], "listed twice"),
    (["--sites", "resid.0", "--context-size", "64"], "exceeds the model's context of 48"),
    (["--sites", "resid.0", "--context-size", "1"], "--context-size must be at least 2"),
    (["--sites", "resid.0", "--width", "0"], "--width must be a whole number >= 1"),
    (["--sites", "resid.0", "--k", "500", "--width", "96"], "must not exceed"),
    (["--sites", "resid.0", "--tokens", "100"], "less than one batch"),
    (["--sites", "resid.0", "--lr", "nan"], "--lr must be a finite number"),
    (["--sites", "resid.0", "--lr", "-1"], "--lr must be a finite number"),
    (["--sites", "resid.0", "--seed", "-3"], "--seed must be a whole number >= 0"),
    (["--sites", "resid.0", "--eval-tokens", "5"], "less than one window"),
    (["--sites", "resid.0", "--batch-tokens", "4096"], "mixing buffer"),
    (["--sites", "resid.0", "--device", "gpu"], "unknown --device"),
    (["--sites", "resid.0", "--corpus", "no/such/path.txt"], "no corpus"),
    (["--sites", "resid.0", "--corpus", "EMPTY"], "no text"),
    (["--sites", "resid.0", "--corpus", "NOTTEXT"], "must be .txt"),
    (["--sites", "resid.0", "--recipe", "no-such-recipe"], "bundled recipes are"),
    (["--sites", "resid.0", "--out", "EXISTS"], "--force"),
    ([], "--model and --sites"),
]


def test_option_errors_exit_2_in_one_line_before_torch(tmp_path):
    """Every option error: exit 2, one line naming the problem, and torch not imported (so it comes
    in well under a second, not after 6-7 s of imports)."""
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("a,b\n", encoding="utf-8")
    (tmp_path / "exists").mkdir()
    subs = {"EMPTY": str(tmp_path / "empty.txt"), "NOTTEXT": str(tmp_path / "notes.csv"),
            "EXISTS": str(tmp_path / "exists")}
    argvs = []
    for extra, _ in BAD_OPTIONS:
        base = ["--model", "tiny", "--out", str(tmp_path / "out")] if extra else ["--out", str(tmp_path / "out")]
        argvs.append(base + [subs.get(a, a) for a in extra])
    results = _probe(tmp_path, argvs)
    for (extra, message), res in zip(BAD_OPTIONS, results):
        assert res["rc"] == 2, (extra, res)
        assert message in res["err"], (extra, res["err"])
        assert res["err"].startswith("featcirc train-saes: error: ") and res["err"].count("\n") == 1, res["err"]
        assert res["torch"] is False, (extra, "torch was imported before the error")
    assert not (tmp_path / "out").exists()


def test_tiny_defaults_fit_the_model(tiny):
    """The tiny model's shape read without torch matches the loaded model, and its default context
    fits n_ctx and holds every sentence of the tiny corpus whole (BOS included)."""
    from featcirc.commands.checks import tiny_model_config
    from featcirc.commands.train_saes import _plan
    from featcirc.data.corpus import load_corpus
    from featcirc.saes.training import MODEL_DEFAULTS, default_settings

    cfg = tiny_model_config()
    assert (cfg["n_ctx"], cfg["n_layers"], cfg["d_model"]) == (tiny.cfg.n_ctx, tiny.cfg.n_layers, tiny.cfg.d_model)
    ctx = default_settings("tiny", tiny.cfg.n_ctx)["context_size"]
    assert ctx == MODEL_DEFAULTS["tiny"]["context_size"] <= tiny.cfg.n_ctx
    ids = tiny.tokenizer(list(load_corpus("tiny").texts), add_special_tokens=False)["input_ids"]
    assert 1 + max(len(i) for i in ids) <= ctx
    TrainSettings(**default_settings("tiny", tiny.cfg.n_ctx)).check(n_ctx=tiny.cfg.n_ctx)
    # generic defaults are cut to a short model's context
    assert default_settings("some-model", 48)["context_size"] == 48
    assert default_settings("some-model", 2048)["context_size"] == 128

    args = argparse.Namespace(recipe=None, model="tiny", sites="all-resid", corpus=None, out="x", width=None, k=None,
                              tokens=None, lr=None, context_size=None, batch_tokens=None, seed=None, sae_dtype=None,
                              windows=None, eval_tokens=None, ce_eval_tokens=None)
    plan = _plan(args)
    assert plan.corpus == "tiny" and plan.n_ctx == tiny.cfg.n_ctx
    assert {k: plan.settings[k] for k in MODEL_DEFAULTS["tiny"]} == MODEL_DEFAULTS["tiny"]
    args.width, args.windows = 96, "packed"
    plan = _plan(args)
    assert plan.settings["width"] == 96 and plan.settings["pack"] is True  # flags win over the model's defaults


def test_help_states_every_default_once(capsys):
    """``train-saes --help``: no option states its default twice (the old '(default auto) (default:
    auto)'), and every option that has a default states it."""
    from featcirc.cli import build_parser

    with pytest.raises(SystemExit):
        main(["train-saes", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # line breaks as the terminal's width puts them
    assert "(default: auto)" in text and "(default auto)" not in text
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train-saes"]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        help_text = formatter._expand_help(action)
        n = len(re.findall(r"\(default\b", help_text))
        needs = action.dest not in ("recipe", "model", "sites", "out", "force")
        assert n == (1 if needs else 0), (action.dest, help_text)


def test_cache_root_matches_the_models_one(tmp_path, monkeypatch):
    """:func:`featcirc.saes.trained.cache_root` (torch-free) agrees with the model loader's."""
    from featcirc.models.loading import cache_root as loader_root
    from featcirc.saes.trained import cache_root

    monkeypatch.delenv("FEATCIRC_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == loader_root() == tmp_path / ".cache" / "featcirc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == loader_root()
    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path / "fc"))
    assert cache_root() == loader_root() == tmp_path / "fc"


def test_expectations_point_to_the_measurement():
    """The card gives the generic advice, and for the tiny model points to the script that measures
    sets of its defaults (no numbers copied into code); the script exists."""
    from pathlib import Path

    from featcirc.saes.training import GENERIC_EXPECTATION, expectations

    text = expectations("tiny")
    assert text.startswith(GENERIC_EXPECTATION) and "experiments/tiny_saes_faithfulness.sh" in text
    assert not re.search(r"\d\.\d\d \[", text)
    assert (Path(__file__).resolve().parents[1] / "experiments" / "tiny_saes_faithfulness.sh").is_file()
    assert expectations("gpt2-small") == GENERIC_EXPECTATION


def test_card_marks_ce_recovered_where_zero_ablation_barely_matters(tmp_path):
    from featcirc.saes.training import write_card

    m = {"tokens_seen": 1024, "l0": 8.0, "fve": 0.9, "dead_fraction": 0.1, "eval_tokens": 100, "ce_eval_tokens": 50,
         "ce_clean": 1.50}
    info = {"model": "m", "command": "featcirc train-saes ...", "device": "cpu", "threads": 1,
            "settings": {**TrainSettings().__dict__, "steps": 1},
            "corpus": {"name": "c", "sha256": "0" * 64, "train_documents": 9, "heldout_documents": 1,
                       "train_windows": 9},
            "train_seconds": 1.0, "eval_seconds": 1.0,
            "saes": {"resid.0": {**m, "ce_sae": 1.6, "ce_zero": 5.0, "ce_recovered": 0.97},
                     "attn.1": {**m, "ce_sae": 1.49, "ce_zero": 1.51, "ce_recovered": 2.0}}}
    write_card(tmp_path, info)
    card = (tmp_path / "README.md").read_text()
    assert "| resid.0 | 1,024 | 8.0 | 0.900 | 0.970 |" in card
    assert "| attn.1 | 1,024 | 8.0 | 0.900 | 2.000 (†) |" in card and "(†) Zero-ablating" in card
    assert json.loads((tmp_path / "metrics.json").read_text())["saes"]["attn.1"]["ce_recovered"] == 2.0


def test_gemma_shape_matches_transformer_lens_config(tmp_path, monkeypatch):
    """Gemma-3-270M's layers and context, known to train-saes without loading it, are TransformerLens's
    (its built-in config: no weights, no hub); so a site beyond layer 17 is an error before torch."""
    from featcirc.commands.train_saes import GEMMA_SHAPE, model_shape
    from featcirc.models.gemma import gemma_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = gemma_config()
    assert {k: getattr(cfg, k) for k in GEMMA_SHAPE} == GEMMA_SHAPE == model_shape("google/gemma-3-270m")
    (res,) = _probe(tmp_path, [["--recipe", "gemma-3-270m", "--sites", "resid.18", "--out", str(tmp_path / "o")]])
    assert res["rc"] == 2 and "it has 18 layers" in res["err"] and res["torch"] is False


def test_z_site_saes_are_as_wide_as_the_heads(tmp_path, tiny):
    """A ``z`` SAE reads ``n_heads * d_head`` values, which need not be ``d_model`` (Gemma-3-270M: 4 x 256
    = 1024 against 640; the tiny model has 128 both ways, so it never showed): it trains, loads and
    splices on a model whose heads are narrower than its stream."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from featcirc.data.corpus import Corpus, load_corpus
    from featcirc.saes import load_saes
    from featcirc.saes.training import train_saes

    cfg = HookedTransformerConfig(n_layers=1, d_model=64, n_heads=2, d_head=16, d_mlp=128, n_ctx=48,
                                  d_vocab=tiny.cfg.d_vocab, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg, tokenizer=tiny.tokenizer).eval()
    out = tmp_path / "z"
    train_saes(model, ["z.0", "resid.0"], Corpus.from_texts("t", load_corpus("tiny").texts[:400]), out,
               TrainSettings(width=48, k=4, tokens=1024, batch_tokens=256, context_size=32, pack=False,
                             eval_tokens=256, ce_eval_tokens=64), model_name="narrow-heads", progress=False)
    saes = load_saes(model, out)
    assert int(saes["z.0"].cfg.d_in) == 32 and int(saes["resid.0"].cfg.d_in) == 64


def test_sae_training_refuses_transcoder_sites(tmp_path, tiny):
    """``train_saes`` trains SAEs only: a ``tc.L`` site (a transcoder, trained by ``train_transcoders``)
    is refused before anything is written."""
    from featcirc.data.corpus import load_corpus
    from featcirc.saes.training import train_saes

    out = tmp_path / "saes"
    with pytest.raises(ValueError, match="transcoders"):
        train_saes(tiny, ["resid.0", "tc.1"], load_corpus("tiny"), out, model_name="tiny", progress=False)
    assert not out.exists()


def test_l1_coefficient_is_checked():
    TrainSettings(l1_coefficient=0.0).check()
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="--l1-coefficient"):
            TrainSettings(l1_coefficient=bad).check()
