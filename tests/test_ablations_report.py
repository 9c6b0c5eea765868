"""Every exported circuit's faithfulness is reported under mean AND patch ablation (docs/design.md §9,
§11): ``discover`` measures both on the same held-out pairs (``--ablations``, checked before the model
loads), ``summary.json``'s ``faithfulness`` maps ablation -> record, the printed line names the ablation
beside every F, older runs' single record is still read (:func:`featcirc.run_files.faithfulness_by_ablation`),
and ``evaluate --ablation mean,patch`` evaluates several in one run."""

from __future__ import annotations

import json
import re

import pytest

from conftest import one_line_error, set_tripwires
from featcirc.cli import main
from featcirc.commands.checks import InputError, parse_ablations
from featcirc.commands.discover import result_line
from featcirc.run_files import faithfulness_by_ablation

IV = r"-?\d+\.\d{3} \[-?\d+\.\d{2}, -?\d+\.\d{2}\]"


def _record(ablation: str, value: float, **extra) -> dict:
    return dict(ablation=ablation, split="held-out", pairs=64, n_nodes=100,
                faithfulness={"value": value, "lo": value - 0.05, "hi": value + 0.05},
                completeness={"value": 0.002, "lo": -0.01, "hi": 0.01}, **extra)


# ------------------------------------------------------------------------------------ discover, end to end
def test_discover_reports_the_exported_circuit_under_mean_and_patch_ablation(tmp_path, capsys):
    """On tiny SVA, mean ablation lets the 100-node circuit look far more faithful than the
    counterfactual (patch) test does; both are in summary.json with intervals and in the printed line."""
    out = tmp_path / "sva"
    assert main(["-q", "--threads", "1", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp",
                 "--pairs", "16", "--out", str(out)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("circuit:")][-1]
    summ = json.loads((out / "summary.json").read_text())
    faith = summ["faithfulness"]
    assert list(faith) == ["mean", "patch"]
    for ablation, f in faith.items():
        assert f["ablation"] == ablation and f["split"] == "held-out" and f["pairs"] == summ["eval_pairs"]
        assert f["n_nodes"] == summ["n_nodes"] == 100 and "percentile bootstrap" in f["intervals"]
        for key in ("faithfulness", "completeness"):
            assert f[key]["lo"] <= f[key]["value"] <= f[key]["hi"], (ablation, key)
        assert {"m_full", "m_empty", "definitions", "data"} <= set(f)
    mean, patch = faith["mean"]["faithfulness"], faith["patch"]["faithfulness"]
    assert patch["value"] < mean["value"] - 0.3 and patch["hi"] < mean["lo"]  # the intervals do not overlap
    # the line names the ablation beside every F, mean first, and the values are summary.json's
    m = re.search(rf"faithfulness ({IV}) under mean ablation, ({IV}) under patch ablation \(higher is better\), "
                  rf"completeness ({IV}) under mean ablation \(lower is better\)", line)
    assert m, line
    for printed, iv in ((m.group(1), mean), (m.group(2), patch)):
        value, lo, hi = (float(x) for x in re.findall(r"-?\d+\.\d+", printed))
        assert (value, lo, hi) == pytest.approx((iv["value"], iv["lo"], iv["hi"]), abs=0.0051), printed
    assert f"on {summ['eval_pairs']} held-out pairs" in line
    assert list(summ["seconds"]).count("faithfulness") == 1
    # the drawing and the viewer name both ablations too
    html = (out / "circuit.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="featcirc-data">(.*?)</script>', html, re.S)
                      .group(1))
    assert [f["ablation"] for f in data["faithfulness"]] == ["mean", "patch"]
    assert data["faithfulness"][1]["faithfulness"]["value"] == pytest.approx(patch["value"])


def test_discover_measures_only_the_ablations_asked_for(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4",
                 "--max-nodes", "60", "--top-k", "20", "--ablations", "patch", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert list(json.loads((out / "summary.json").read_text())["faithfulness"]) == ["patch"]
    assert "under patch ablation (higher is better)" in line and "mean ablation" not in line


@pytest.mark.parametrize("value, fragment", [
    ("mean,foo", "unknown ablation 'foo' in --ablations 'mean,foo'; choose from mean, zero, resample, patch"),
    ("", "--ablations '' has an empty name"),
    ("mean,,patch", "has an empty name"),
    ("patch,patch", "--ablations 'patch,patch' names patch more than once"),
    ("Mean", "unknown ablation 'Mean'"),
])
def test_a_bad_ablations_value_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, value, fragment):
    set_tripwires(monkeypatch, "discover started loading although --ablations was bad")
    out = tmp_path / "o"
    assert main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4",
                 "--ablations", value, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert err.startswith("featcirc discover: error: ") and fragment in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--ablation", "mean,resampled"], "unknown ablation 'resampled' in --ablation 'mean,resampled'"),
    (["--ablation", "mean,patch", "--out", "{tmp}/res.json"], "--out {tmp}/res.json names one set of files"),
])
def test_evaluate_checks_its_ablations_before_the_model_loads(tmp_path, capsys, monkeypatch, argv, fragment):
    set_tripwires(monkeypatch, "evaluate started loading although --ablation was bad")
    assert main(["-q", "evaluate", str(tmp_path), *[a.format(tmp=tmp_path) for a in argv]]) == 2
    assert fragment.format(tmp=tmp_path) in one_line_error(capsys)


# ------------------------------------------------------------------------------------------ model-free
def test_parse_ablations():
    assert parse_ablations("mean,patch") == ("mean", "patch")
    assert parse_ablations(" patch , zero ") == ("patch", "zero")
    assert parse_ablations(["resample"]) == ("resample",)
    for bad in ("", "mean,", "x", "mean,mean", 3, [], ["mean", 2]):
        with pytest.raises(InputError):
            parse_ablations(bad)


def test_faithfulness_by_ablation_reads_both_shapes():
    new = {"mean": _record("mean", 0.69), "patch": _record("patch", 0.0)}
    assert faithfulness_by_ablation(new) == new and list(faithfulness_by_ablation(new)) == ["mean", "patch"]
    old = _record("mean", 0.69, curves="run `featcirc evaluate DIR` ...")  # one record: 'ablation' at the top
    assert faithfulness_by_ablation(old) == {"mean": old}
    assert faithfulness_by_ablation({"faithfulness": {"value": 0.5}}) == {"unknown": {"faithfulness": {"value": 0.5}}}
    assert faithfulness_by_ablation(None) is None
    with pytest.raises(ValueError, match="faithfulness must be a dict"):
        faithfulness_by_ablation([old])
    with pytest.raises(ValueError, match=r"run/summary.json: 'faithfulness' -> 'patch' is a number"):
        faithfulness_by_ablation({"mean": old, "patch": 0.0}, "run/summary.json")


def test_result_line_names_the_ablation_beside_every_value():
    summ = dict(n_nodes=100, n_edges=1426, pairs_used=64,
                faithfulness={"mean": _record("mean", 0.69), "patch": _record("patch", 0.0)})
    line = result_line(summ, "runs/sva")
    assert ("circuit: 100 nodes, 1426 edges from 64 pairs; on 64 held-out pairs: faithfulness 0.690 [0.64, 0.74] "
            "under mean ablation, 0.000 [-0.05, 0.05] under patch ablation (higher is better), completeness "
            "0.002 [-0.01, 0.01] under mean ablation (lower is better) -> runs/sva/ (") in line
    # an older run's single record
    old = result_line(dict(summ, faithfulness=_record("mean", 0.69)), "runs/sva")
    assert "faithfulness 0.690 [0.64, 0.74] under mean ablation (higher is better)" in old
    assert "patch" not in old
