"""End to end on the bundled tiny model: discover, evaluate, export, compare, and input errors."""

from __future__ import annotations

import csv
import json

import networkx as nx
import pytest

from featcirc.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("discover", "evaluate", "export", "compare", "demo"):
        assert cmd in out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sva"
    rc = main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--n", "8",
               "--method", "relp", "--max-nodes", "150", "--top-k", "40", "--out", str(out)])
    assert rc == 0
    return out


def test_discover_writes_everything(run_dir):
    for name in ("circuit.json", "circuit.graphml", "circuit.dot", "neuronpedia.json", "circuit.png",
                 "summary.json", "nodes.pt", "edges.pt", "run.json"):
        assert (run_dir / name).stat().st_size > 0, name
    summ = json.loads((run_dir / "summary.json").read_text())
    assert summ["method"] == "relp" and summ["pairs_used"] >= 6
    assert 0 < summ["n_nodes"] <= 40
    assert summ["forward_passes"] > 0 and summ["backward_passes"] > 0
    G = nx.read_graphml(run_dir / "circuit.graphml")
    assert G.number_of_nodes() == summ["n_nodes"] + 1  # + metric
    assert not list((run_dir).glob(".*.tmp"))  # atomic writes leave no temporaries


def test_rerun_needs_force(run_dir, capsys):
    rc = main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--n", "8",
               "--out", str(run_dir)])
    assert rc == 2
    assert "--force" in capsys.readouterr().err


def test_evaluate_and_export(run_dir):
    assert main(["-q", "evaluate", str(run_dir)]) == 0
    rows = list(csv.DictReader(open(run_dir / "faithfulness.csv")))
    assert len(rows) == 15
    assert set(rows[0]) == {"threshold", "n_nodes", "n_edges", "faithfulness", "completeness"}
    sizes = [int(r["n_nodes"]) for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert (run_dir / "faithfulness.png").stat().st_size > 0
    (run_dir / "circuit.dot").unlink()
    assert main(["-q", "export", str(run_dir), "--format", "dot"]) == 0
    assert "digraph" in (run_dir / "circuit.dot").read_text()


def test_compare_component_level(tmp_path):
    out = tmp_path / "cmp"
    assert main(["-q", "compare", "--model", "tiny", "--task", "ioi", "--n", "8", "--level", "component",
                 "--methods", "exact,atp,relp", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "correlations.csv")))
    assert {r["site_kind"] for r in rows} == {"resid", "attn", "mlp"}
    assert {r["method"] for r in rows} == {"atp", "relp"}
    for r in rows:
        assert -1.0 <= float(r["pearson_r"]) <= 1.0 and int(r["n"]) > 0
    cost = {r["method"]: r for r in csv.DictReader(open(out / "cost.csv"))}
    assert set(cost) == {"exact", "atp", "relp"}
    assert int(cost["atp"]["backward_passes"]) == int(cost["relp"]["backward_passes"])
    assert list(out.glob("scatter_*_relp.png"))


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clean_prefix": "The key"}\n')
    rc = main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--data", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 1" in err
    rc = main(["-q", "discover", "--model", "no-such-model-xyz", "--task", "ioi", "--out", str(tmp_path / "o2")])
    assert rc == 2


def test_compare_feature_level_adds_faithfulness(tmp_path):
    out = tmp_path / "cmpf"
    assert main(["-q", "compare", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--n", "4",
                 "--level", "feature", "--methods", "exact,atp,relp", "--max-nodes", "60", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "correlations.csv")))
    groups = {(r["site_kind"], r["node_kind"]) for r in rows}
    assert {(k, n) for k in ("embed", "resid", "attn", "mlp") for n in ("feature", "error")} <= groups
    faith = list(csv.DictReader(open(out / "faithfulness.csv")))
    assert {r["method"] for r in faith} == {"atp", "relp"}
    cost = {r["method"]: r for r in csv.DictReader(open(out / "cost.csv"))}
    assert 0.0 <= float(cost["relp"]["faithfulness_auc"]) <= 1.0
    assert float(cost["relp"]["edge_seconds"]) > 0
