"""End to end on the bundled tiny model: discover (split, exports, viewer, cards, the exported circuit's
held-out faithfulness), evaluate, export, compare, demo; the command line's conventions (help shows
defaults, options pass through torchrun, ``python -m featcirc``)."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys

import networkx as nx
import pytest

from featcirc.cli import build_parser, main
from featcirc.data import read_pairs


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("discover", "evaluate", "export", "compare", "demo", "view", "features"):
        assert cmd in out


def test_help_texts_show_the_defaults_in_use():
    """Every option with a default value (0 and 0.0 included) says it in its help, and states it once
    (compare's --pairs is 32, discover's 64)."""
    import re

    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        text = " ".join(sub.format_help().split())
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.help is argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            helped = " ".join(formatter._expand_help(action).split())
            where = (name, action.option_strings, helped)
            assert len(re.findall(r"\(default[: ]", helped)) <= 1, where
            if action.default is not None and action.default is not False and action.nargs != 0:
                assert f"(default: {action.default})" in text, where
    flat = lambda cmd: " ".join(_subparsers(parser)[cmd].format_help().split())  # noqa: E731
    assert "prompt pairs to use (--n is an alias, not usable under torchrun) (default: 32)" in flat("compare")
    assert "(default: 64)" in flat("discover")
    assert "OMP_NUM_THREADS" in " ".join(parser.format_help().split())


def test_options_pass_through_torchrun():
    """torchrun's parser also reads the options after the module and rejects or takes a prefix of its own:
    no option may be one, except the documented alias --n (use --pairs under torchrun)."""
    from torch.distributed.run import get_args_parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings if o.startswith("-")]

    def options(parser):
        for action in parser._actions:
            yield from (o for o in action.option_strings if o not in ("-h", "--help"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from options(sub)

    ours = set(options(build_parser()))
    assert {"--pairs", "--threads", "--device", "--out"} <= ours
    clashes = sorted(o for o in ours if any(t.startswith(o) for t in theirs))
    assert clashes == ["--n"]


def test_python_dash_m_featcirc():
    res = subprocess.run([sys.executable, "-m", "featcirc", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "discover" in res.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sva"
    rc = main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "8",
               "--method", "relp", "--max-nodes", "150", "--top-k", "40", "--cards", "--cards-tokens", "512",
               "--slug", "test-slug", "--out", str(out)])
    assert rc == 0
    return out


def test_discover_writes_a_complete_run(run_dir):
    for name in ("circuit.json", "circuit.graphml", "circuit.dot", "neuronpedia.json", "circuit.png", "circuit.html",
                 "cards.json", "summary.json", "nodes.pt", "edges.pt", "run.json", "eval_pairs.jsonl",
                 "graph_files/test-slug.json"):
        assert (run_dir / name).stat().st_size > 0, name
    summ = json.loads((run_dir / "summary.json").read_text())
    assert summ["method"] == "relp" and summ["pairs_used"] == 8
    assert 0 < summ["n_nodes"] <= 40
    assert summ["forward_passes"] > 0 and summ["backward_passes"] > 0
    G = nx.read_graphml(run_dir / "circuit.graphml")
    assert G.number_of_nodes() == summ["n_nodes"] + 1  # + metric
    assert json.loads((run_dir / "neuronpedia.json").read_text())["metadata"]["slug"] == "test-slug"
    page = (run_dir / "circuit.html").read_text()
    assert "<title>tiny \u00b7 relp feature circuit \u00b7 sva-nounpp</title>" in page
    assert '"top_examples"' in page  # the cards are embedded in the viewer
    cards = json.loads((run_dir / "cards.json").read_text())
    features = {f"{d['site']}/{d['feature']}" for _, d in G.nodes(data=True) if d.get("kind") == "feature"}
    assert features and features <= set(cards["cards"])
    assert not list(run_dir.rglob(".*.tmp"))  # atomic writes leave no temporaries
    assert [p.name for p in run_dir.parent.iterdir()] == ["sva"]  # and the staging directory is gone


def test_run_records_versions_and_the_example_pair(run_dir):
    """run.json and summary.json name featcirc's version, the libraries, device and dtype; summary.json
    holds the example pair's own metric (not the mean) and says which direction is better."""
    import importlib.metadata as md

    import torch

    run = json.loads((run_dir / "run.json").read_text())
    summ = json.loads((run_dir / "summary.json").read_text())
    for env in (run["environment"], summ["environment"]):
        assert env["featcirc"] == md.version("featcirc")
        assert env["libraries"]["torch"] == md.version("torch")
        assert env["libraries"]["transformer-lens"] == md.version("transformer-lens")
        assert env["libraries"]["sae-lens"] == md.version("sae-lens")
        assert env["device"] == "cpu" and env["dtype"] == "float32"
    ex = summ["example"]
    assert ex["prompt"] == summ["prompt"] and ex["clean_answer"] != ex["patch_answer"]
    assert ex["n_pairs_mean"] == summ["pairs_used"]
    assert 0 < ex["p_patch_answer"] < 1 and 0 < ex["p_clean_answer"] < 1
    # the example's metric is that pair's own: recompute it from the full logits
    from featcirc.metric import logit_diff_full
    from featcirc.models import load_model

    model = load_model("tiny")
    toks = model.to_tokens(ex["prompt"], prepend_bos=True)
    ids = [model.to_single_token(a) for a in (ex["clean_answer"], ex["patch_answer"])]
    want = float(logit_diff_full(model, toks, torch.tensor([ids[0]]), torch.tensor([ids[1]]))[0])
    assert abs(ex["metric_clean"] - want) < 1e-4, (ex["metric_clean"], want)
    for f in summ["faithfulness"].values():
        assert "higher is better" in f["definitions"]["faithfulness"]
        assert "lower is better" in f["definitions"]["completeness"]


def test_discover_splits_the_pairs_and_measures_the_exported_circuit_held_out(run_dir):
    run = json.loads((run_dir / "run.json").read_text())
    split = run["split"]
    assert split["eval_fraction"] == 0.5 and split["split_seed"] == 0 and split["n_overlap"] == 0
    assert split["n_discovery"] == 8 and split["n_eval"] == 8 and split["eval_pairs"] == "eval_pairs.jsonl"
    held_out = read_pairs(run_dir / "eval_pairs.jsonl")
    assert len(held_out) == 8
    summ = json.loads((run_dir / "summary.json").read_text())
    faith = summ["faithfulness"]
    assert list(faith) == ["mean", "patch"]  # the exported circuit under both ablations, on the same pairs
    for ablation, f in faith.items():
        assert f["split"] == "held-out" and f["pairs"] == 8 and f["ablation"] == ablation
        for key in ("faithfulness", "completeness"):
            assert f[key]["lo"] <= f[key]["value"] <= f[key]["hi"]
        assert f["n_nodes"] == summ["n_nodes"]
        assert "featcirc evaluate" in f["curves"]  # where the curves are
    assert faith["mean"]["m_full"] == pytest.approx(faith["patch"]["m_full"])  # nothing ablated: the same
    assert faith["patch"]["m_empty"] < faith["mean"]["m_empty"] - 1  # everything patched: the other answer wins
    assert list(summ["seconds"]).count("faithfulness") == 1 and summ["seconds"]["faithfulness"] > 0


def test_rerun_needs_force_and_leaves_the_run_alone(run_dir, capsys):
    before = sorted(p.name for p in run_dir.iterdir())
    rc = main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "8",
               "--out", str(run_dir)])
    assert rc == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_evaluate_and_export(run_dir, capsys):
    assert main(["-q", "evaluate", str(run_dir), "--bootstrap", "200"]) == 0
    assert "Moving model" not in capsys.readouterr().out  # TransformerLens's print goes to the log
    rows = [r for r in csv.DictReader(open(run_dir / "faithfulness-mean.csv")) if r["selector"] == "threshold"]
    assert len(rows) == 15
    sizes = [int(r["n_nodes"]) for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert (run_dir / "faithfulness-mean.png").stat().st_size > 0
    ev = json.loads((run_dir / "summary.json").read_text())["evaluations"]["mean"]
    assert ev["file"] == "faithfulness-mean.json" and ev["split"] == "held-out" and ev["pairs"] == 8
    assert ev["exported"]["faithfulness"]["lo"] <= ev["exported"]["faithfulness"]["value"]
    (run_dir / "circuit.dot").unlink()
    assert main(["-q", "export", str(run_dir), "--format", "dot"]) == 0
    assert "digraph" in (run_dir / "circuit.dot").read_text()
    assert main(["-q", "export", str(run_dir), "--format", "neuronpedia", "--slug", "other-slug"]) == 0
    assert json.loads((run_dir / "neuronpedia.json").read_text())["metadata"]["slug"] == "other-slug"
    assert (run_dir / "graph_files" / "other-slug.json").is_file()
    assert main(["-q", "export", str(run_dir), "--format", "dot", "--slug", "x"]) == 2


def test_compare_component_level(tmp_path):
    out = tmp_path / "cmp"
    assert main(["-q", "compare", "--model", "tiny", "--task", "ioi", "--pairs", "8", "--level", "component",
                 "--methods", "exact,atp,relp", "--bootstrap", "200", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "correlations.csv")))
    assert {r["site_kind"] for r in rows} == {"resid", "attn", "mlp"}
    assert {r["method"] for r in rows} == {"atp", "relp"}
    for r in rows:
        for k in ("pearson", "spearman"):
            lo, r_, hi = float(r[f"{k}_lo"]), float(r[f"{k}_r"]), float(r[f"{k}_hi"])
            assert -1.0 <= lo <= r_ <= hi <= 1.0
        assert int(r["n"]) > 0 and int(r["n_pairs"]) == 8
    cost = {r["method"]: r for r in csv.DictReader(open(out / "cost.csv"))}
    assert set(cost) == {"exact", "atp", "relp"}
    assert int(cost["atp"]["backward_passes"]) == int(cost["relp"]["backward_passes"])
    assert list(out.glob("scatter_*_relp.png"))
    res = json.loads((out / "compare.json").read_text())
    assert res["pairs"] == 8 and "faithfulness" not in res  # component level: correlations on every pair
    for d in res["dropped"]:
        assert d["why"] and d["group"] and d["method"] in ("atp", "relp")


def test_compare_feature_level_splits_pairs_and_adds_faithfulness(tmp_path):
    out = tmp_path / "cmpf"
    assert main(["-q", "compare", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4",
                 "--level", "feature", "--methods", "exact,atp,relp", "--max-nodes", "60", "--bootstrap", "100",
                 "--ablation", "patch", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "correlations.csv")))
    groups = {(r["site_kind"], r["node_kind"]) for r in rows}
    assert {(k, "error") for k in ("embed", "resid", "attn", "mlp")} <= groups
    faith = list(csv.DictReader(open(out / "faithfulness.csv")))
    assert {r["method"] for r in faith} == {"atp", "relp"}
    assert {r["selector"] for r in faith} == {"threshold", "fraction"}
    cost = {r["method"]: r for r in csv.DictReader(open(out / "cost.csv"))}
    assert 0.0 <= float(cost["relp"]["faithfulness_auc"]) <= 1.0
    assert float(cost["relp"]["cpr_lo"]) <= float(cost["relp"]["cpr"]) <= float(cost["relp"]["cpr_hi"])
    assert float(cost["relp"]["edge_seconds"]) > 0
    res = json.loads((out / "compare.json").read_text())
    assert res["pairs"] == 4
    f = res["faithfulness"]
    assert f["split"] == "held-out" and f["pairs"] == 4 and f["ablation"] == "patch"


def test_demo_writes_a_complete_evaluated_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--pairs", "4", "--max-nodes", "60", "--cards-tokens", "256",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out evaluation (4 pairs" in printed and "Moving model" not in printed
    for name in ("circuit.html", "cards.json", "faithfulness-mean.csv", "faithfulness-mean.json", "neuronpedia.json"):
        assert (out / name).is_file(), name
    summ = json.loads((out / "summary.json").read_text())
    assert list(summ["faithfulness"]) == ["mean", "patch"] and summ["evaluations"]["mean"]["pairs"] == 4
    assert all(f["split"] == "held-out" for f in summ["faithfulness"].values())
    assert " under mean ablation, " in printed and " under patch ablation " in printed
    assert str(out / "eval_pairs.jsonl") in summ["evaluations"]["mean"]["data"]  # not the staging name
