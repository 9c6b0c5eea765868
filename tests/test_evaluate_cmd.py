"""``featcirc evaluate`` end to end on the bundled tiny model: held-out vs in-sample pairs, results
named by ablation, sizes, CPR/CMD and the exported circuit with intervals, input errors."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from featcirc.cli import main
from featcirc.data import write_pairs
from featcirc.data.split import write_split
from featcirc.data.tasks import make_task

FAST = ["--fractions", "0.1,0.5,1", "--bootstrap", "200"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run discovered without a held-out split (--eval-fraction 0)."""
    out = tmp_path_factory.mktemp("eval") / "sva"
    rc = main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "8",
               "--eval-fraction", "0", "--method", "relp", "--max-nodes", "80", "--top-k", "20", "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def held_out(run_dir, tmp_path_factory):
    """A copy of the run with held-out pairs (another seed's pairs) in eval_pairs.jsonl."""
    d = tmp_path_factory.mktemp("held") / "sva"
    shutil.copytree(run_dir, d)
    write_split(d, make_task("sva-nounpp", 8, seed=123), eval_fraction=None, seed=123)
    return d


def _first_line(capsys, prefix):
    """The report's first line starts with ``prefix`` (the model loader may print before it)."""
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("Moving model")]
    return lines[0].startswith(prefix)


def _json(path):
    return json.loads(path.read_text())


def test_in_sample_fallback_is_stated(run_dir, capsys):
    assert main(["-q", "evaluate", str(run_dir), *FAST]) == 0
    assert _first_line(capsys, "in-sample:")
    res = _json(run_dir / "faithfulness-mean.json")
    assert res["split"] == "in-sample" and res["in_sample"] is True
    assert not (run_dir / "faithfulness.csv").exists()


def test_held_out_patch_evaluation(held_out, capsys):
    assert main(["-q", "evaluate", str(held_out), "--ablation", "patch", *FAST]) == 0
    assert _first_line(capsys, "held-out:")
    res = _json(held_out / "faithfulness-patch.json")
    assert res["split"] == "held-out" and res["in_sample"] is False and res["ablation"] == "patch"
    assert "eval_pairs.jsonl" in res["data"] and res["n_pairs"] >= 6
    for key in ("cpr", "cmd"):
        iv = res[key]
        assert iv["lo"] <= iv["value"] <= iv["hi"]
    assert res["mib"]["fractions"] == [0.1, 0.5, 1.0]
    exported = res["exported"]
    circuit = _json(held_out / "circuit.json")
    assert exported["n_nodes"] == len([n for n in circuit["nodes"] if n["id"] != "metric"])
    f = exported["faithfulness"]
    assert f["lo"] <= f["value"] <= f["hi"]
    rows = list(csv.DictReader(open(held_out / "faithfulness-patch.csv")))
    assert len(rows) == len(res["requests"]) == 15 + 3 + 1  # thresholds, fractions, the exported circuit
    assert {r["selector"] for r in rows} == {"threshold", "fraction", "exported"}
    # every distinct circuit evaluated once: F and completeness for each, plus m(M), m(∅)
    assert res["n_evaluations"] <= 2 + 2 * len(res["circuits"])
    assert len(res["circuits"]) < len(rows)
    assert (held_out / "faithfulness-patch.png").stat().st_size > 0
    assert not list(held_out.glob(".*.tmp"))


def test_ablations_do_not_overwrite_each_other(held_out):
    assert main(["-q", "evaluate", str(held_out), "--ablation", "mean", *FAST]) == 0
    mean = (held_out / "faithfulness-mean.json").read_text()
    assert main(["-q", "evaluate", str(held_out), "--ablation", "zero", *FAST]) == 0
    assert (held_out / "faithfulness-mean.json").read_text() == mean
    assert _json(held_out / "faithfulness-zero.json")["ablation"] == "zero"


def test_several_ablations_in_one_run(held_out, tmp_path, capsys, monkeypatch):
    """``--ablation mean,patch``: the model loads once, each ablation's files and summary entry are those
    of a run with that ablation alone, and the output ends with the smallest circuit with F >= 0.8
    under each ablation, named (or that none reached it)."""
    import featcirc.commands.common as common

    d = tmp_path / "sva"
    shutil.copytree(held_out, d)
    for name in ("faithfulness-mean.json", "faithfulness-patch.json"):
        (d / name).unlink(missing_ok=True)
    loads = []
    load = common.load_model_and_saes
    monkeypatch.setattr(common, "load_model_and_saes", lambda *a, **k: loads.append(a) or load(*a, **k))
    assert main(["-q", "evaluate", str(d), "--ablation", "mean,patch", "--sizes", "1,5,20,1000", *FAST]) == 0
    assert len(loads) == 1
    out = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("Moving model")]
    ev = _json(d / "summary.json")["evaluations"]
    tail = []
    for ablation in ("mean", "patch"):
        res = _json(d / f"faithfulness-{ablation}-sizes.json")
        assert res["ablation"] == ablation and ev[f"{ablation}-sizes"]["ablation"] == ablation
        best = res["smallest_faithful"]
        tail.append(f"smallest circuit with F >= 0.8 under {ablation} ablation: {best['n_nodes']} nodes (F = "
                    if best else f"no circuit evaluated reaches F >= 0.8 under {ablation} ablation")
        for ext in ("csv", "png"):
            assert (d / f"faithfulness-{ablation}-sizes.{ext}").is_file()
    assert len(out) > 4 and [ln[:len(t)] for ln, t in zip(out[-2:], tail)] == tail, out[-2:]
    # as if run alone: the patch evaluation by itself gives the same numbers
    both = _json(d / "faithfulness-patch-sizes.json")
    assert main(["-q", "evaluate", str(d), "--ablation", "patch", "--sizes", "1,5,20,1000", *FAST]) == 0
    alone = _json(d / "faithfulness-patch-sizes.json")
    assert [c["faithfulness"] for c in alone["circuits"]] == [c["faithfulness"] for c in both["circuits"]]
    assert alone["exported"] == both["exported"]
    lines = capsys.readouterr().out.splitlines()
    assert sum("F >= 0.8" in ln for ln in lines) == 1  # one ablation: its line once, no summary block


def test_smallest_faithful_line_names_the_ablation_or_says_none_reached_it():
    from types import SimpleNamespace

    from featcirc.commands.evaluate import smallest_faithful_line
    from featcirc.evaluate.bootstrap import Interval

    best = SimpleNamespace(n_nodes=120, faithfulness=Interval(0.83, 0.8, 0.86))
    found = SimpleNamespace(ablation="patch", smallest_faithful=lambda: best)
    assert smallest_faithful_line(found) == ("smallest circuit with F >= 0.8 under patch ablation: 120 nodes "
                                             "(F = 0.830 [0.800, 0.860])")
    none = SimpleNamespace(ablation="mean", smallest_faithful=lambda: None)
    assert smallest_faithful_line(none) == "no circuit evaluated reaches F >= 0.8 under mean ablation"


def test_sizes_do_not_overwrite_the_threshold_curve(held_out):
    """An evaluation by --sizes is kept beside the one by thresholds: its own files and summary entry."""
    assert main(["-q", "evaluate", str(held_out), "--ablation", "mean", *FAST]) == 0
    by_threshold = (held_out / "faithfulness-mean.json").read_text()
    assert main(["-q", "evaluate", str(held_out), "--ablation", "mean", "--sizes", "2,5", *FAST]) == 0
    assert (held_out / "faithfulness-mean.json").read_text() == by_threshold
    sized = _json(held_out / "faithfulness-mean-sizes.json")
    assert [r["k"] for r in sized["requests"] if r["selector"] == "size"] == [2, 5]
    assert (held_out / "faithfulness-mean-sizes.csv").exists() and (held_out / "faithfulness-mean-sizes.png").exists()
    ev = _json(held_out / "summary.json")["evaluations"]
    assert ev["mean"]["file"] == "faithfulness-mean.json" and ev["mean"]["selector"] == "threshold"
    assert ev["mean-sizes"]["file"] == "faithfulness-mean-sizes.json" and ev["mean-sizes"]["selector"] == "size"
    assert "lower is better" in ev["mean"]["definitions"]["completeness"]


def test_sizes_and_out_file(held_out, tmp_path):
    target = tmp_path / "results" / "sizes.json"
    assert main(["-q", "evaluate", str(held_out), "--sizes", "1,5,10", "--out", str(target), *FAST]) == 0
    res = _json(target)
    assert [r["k"] for r in res["requests"] if r["selector"] == "size"] == [1, 5, 10]
    sizes = [res["circuits"][r["circuit"]]["n_nodes"] for r in res["requests"] if r["selector"] == "size"]
    assert all(n <= k for n, k in zip(sizes, [1, 5, 10]))
    assert (tmp_path / "results" / "sizes.csv").exists() and (tmp_path / "results" / "sizes.png").exists()


def test_bad_input_is_a_clear_error(tmp_path, held_out, capsys):
    assert main(["-q", "evaluate", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["-q", "evaluate", str(held_out), "--sizes", "ten"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["-q", "evaluate", str(held_out), "--fractions", "0.5,0.1"])
    bad = tmp_path / "bad"
    shutil.copytree(held_out, bad)
    (bad / "eval_pairs.jsonl").write_text('{"clean_prefix": "x"}\n')
    assert main(["-q", "evaluate", str(bad)]) == 2
    assert "eval_pairs.jsonl, line 1" in capsys.readouterr().err
    write_pairs(tmp_path / "ok.jsonl", make_task("sva-nounpp", 4, seed=5))
    assert main(["-q", "evaluate", str(bad), "--data", str(tmp_path / "ok.jsonl"), *FAST]) == 0
    assert _json(bad / "faithfulness-mean.json")["split"] == "given"
