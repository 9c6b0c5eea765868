"""Run directories one can share and trust (docs/design.md §11-§12): reading a run's files back never
runs code from them, and a damaged, foreign or other-version file is a one-line error (exit 2) that
names the file, through `featcirc view`, `evaluate` and `export`."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

from featcirc.attribution.scores import EdgeScores, NodeScores
from featcirc.cli import main
from featcirc.run_files import check_run_config, check_run_values, read_json_file, read_run_json


@pytest.fixture(scope="module")
def built_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "run"
    assert main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "8",
                 "--max-nodes", "80", "--top-k", "20", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_dir(built_run, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(built_run, d)
    return d


COMMANDS = {
    "view": lambda d: ["-q", "view", str(d)],
    "evaluate": lambda d: ["-q", "evaluate", str(d), "--bootstrap", "10"],
    "export": lambda d: ["-q", "export", str(d), "--format", "neuronpedia"],
    "export-json": lambda d: ["-q", "export", str(d), "--format", "json"],
}


def fails_with_one_line(capsys, argv, *needles) -> str:
    """``main(argv)`` exits 2 with exactly one line on stderr holding every needle."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


class _Payload:
    """Pickles as a call that writes a marker file: what a malicious nodes.pt would run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


# ---------------------------------------------------------------------------------------- code
@pytest.mark.parametrize("command", ["view", "evaluate"])
@pytest.mark.parametrize("name", ["nodes.pt", "edges.pt"])
def test_a_score_file_with_code_is_refused_and_never_run(run_dir, tmp_path, capsys, command, name):
    marker = tmp_path / "marker"
    d = torch.load(run_dir / name, weights_only=True)
    d["info"] = _Payload(marker)  # otherwise a valid file
    torch.save(d, run_dir / name)
    err = fails_with_one_line(capsys, COMMANDS[command](run_dir), name, "could run code", "refuses")
    assert not marker.exists(), err


class _ShellPayload:
    """A payload through a blocked module (``os.system``): torch words its refusal differently."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {str(self.marker)!r}",)


@pytest.mark.parametrize("payload", [_Payload, _ShellPayload])
def test_the_library_refuses_code_too(run_dir, tmp_path, payload):
    marker = tmp_path / "marker"
    torch.save(payload(marker), run_dir / "nodes.pt")
    with pytest.raises(ValueError, match="could run code"):
        NodeScores.load(run_dir / "nodes.pt")
    assert not marker.exists()


# ------------------------------------------------------------------------- foreign score files
def _not_a_dict(d):
    return list(d["vectors"].values())


def _missing_key(d):
    del d["vectors"]
    return d


def _extra_key(d):
    d["frobnicate"] = torch.zeros(3)
    return d


def _bad_shape(d):
    site = next(iter(d["vectors"]))
    d["vectors"][site] = torch.zeros(2, 2)
    return d


def _bad_site(d):
    d["sites"] = d["sites"] + ["nowhere.3"]
    return d


@pytest.mark.parametrize("command", ["view", "evaluate"])
@pytest.mark.parametrize("change, needles", [
    (_not_a_dict, ["not a featcirc node scores file", "list"]),
    (_missing_key, ["missing keys ['vectors']", "another featcirc version", "format 2", "featcirc 0."]),
    (_extra_key, ["unexpected keys ['frobnicate']", "another featcirc version", "format 2"]),
    (_bad_shape, ["vectors[", "float tensor"]),
    (_bad_site, ["not a site: 'nowhere.3'"]),
])
def test_a_foreign_nodes_file_is_one_line_naming_it(run_dir, capsys, command, change, needles):
    d = torch.load(run_dir / "nodes.pt", weights_only=True)
    torch.save(change(d), run_dir / "nodes.pt")
    fails_with_one_line(capsys, COMMANDS[command](run_dir), "nodes.pt", "featcirc discover", *needles)


def test_a_foreign_or_truncated_edges_file_is_one_line_naming_it(run_dir, capsys):
    d = torch.load(run_dir / "edges.pt", weights_only=True)
    d["upstream"] = d["upstream"] + 10_000
    torch.save(d, run_dir / "edges.pt")
    fails_with_one_line(capsys, COMMANDS["view"](run_dir), "edges.pt", "out of range")
    d = (run_dir / "nodes.pt").read_bytes()
    (run_dir / "nodes.pt").write_bytes(d[: len(d) // 2])
    fails_with_one_line(capsys, COMMANDS["view"](run_dir), "nodes.pt", "not a featcirc node scores file")


def test_safe_files_of_every_format_still_load(run_dir, tmp_path):
    nodes = NodeScores.load(run_dir / "nodes.pt")
    edges = EdgeScores.load(run_dir / "edges.pt")
    assert nodes.sites and len(edges) > 0
    old = torch.load(run_dir / "nodes.pt", weights_only=True)  # format 1: no 'format', no 'pair_effects'
    del old["format"], old["pair_effects"]
    torch.save(old, tmp_path / "old_nodes.pt")
    assert NodeScores.load(tmp_path / "old_nodes.pt").sites == nodes.sites
    old_edges = dict(method="atp", aggregation="none", edges=[("resid.0/1@2", "resid.1/3@2", 0.5)],
                     cost=dict(seconds=1.0, forward_passes=2, backward_passes=1), info={})
    torch.save(old_edges, tmp_path / "old_edges.pt")
    assert EdgeScores.load(tmp_path / "old_edges.pt").as_dict() == {("resid.0/1@2", "resid.1/3@2"): 0.5}
    newer = torch.load(run_dir / "edges.pt", weights_only=True)
    newer["format"] = 99
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="newer featcirc .*format 99.*upgrade"):
        EdgeScores.load(tmp_path / "newer.pt")


# ----------------------------------------------------------------------------------- run.json
@pytest.mark.parametrize("command", ["view", "evaluate", "export"])
@pytest.mark.parametrize("field, value, needle", [
    ("max_nodes", "lots", "--max-nodes must be a whole number"),
    ("method", "magic", "unknown method 'magic'"),
])
def test_a_bad_run_json_value_names_the_file_and_field(run_dir, capsys, command, field, value, needle):
    raw = json.loads((run_dir / "run.json").read_text())
    raw[field] = value
    (run_dir / "run.json").write_text(json.dumps(raw))
    fails_with_one_line(capsys, COMMANDS[command](run_dir), "run.json", f"field {field!r}", needle,
                        "written by featcirc 0.")


def test_run_json_checks(run_dir):
    cfg, raw = read_run_json(run_dir)
    assert cfg.model == "tiny" and cfg.max_nodes == 80 and raw["environment"]["featcirc"]
    for field, value, needle in [("level", "neuron", "unknown --level 'neuron'"), ("seed", -1, "--seed"),
                                 ("top_k", 2.5, "--top-k"), ("edge_threshold", None, "--edge-threshold"),
                                 ("dtype", "float8", "unknown --dtype"), ("task", "nope", "unknown --task"),
                                 ("device", 3, "--device"), ("method", "exact", "scores nodes only")]:
        bad = dict(raw, **{field: value})
        with pytest.raises(ValueError, match=needle) as e:
            check_run_config(bad, run_dir / "run.json")
        assert "run.json" in str(e.value) and repr(field) in str(e.value)
    with pytest.raises(ValueError, match="lacks 'level'.*featcirc 0."):
        check_run_config({k: v for k, v in raw.items() if k != "level"}, "run.json")
    with pytest.raises(ValueError, match="'data' and 'task' both name pairs"):
        check_run_config(dict(raw, data="pairs.jsonl"), "run.json")
    with pytest.raises(ValueError, match="neither field 'data' nor 'task'"):
        check_run_config(dict(raw, task=None), "run.json")
    # view and export read only names from run.json: the fields it has are checked, not a full set
    assert check_run_values({"model": "tiny", "method": "relp", "task": "a-newer-task"}, "run.json",
                            known_task=False)["task"] == "a-newer-task"
    with pytest.raises(ValueError, match="field 'max_nodes'"):
        check_run_values({"model": "tiny", "max_nodes": 0}, "run.json")
    (run_dir / "run.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="run.json holds an array, not a JSON object"):
        read_run_json(run_dir)


# ------------------------------------------------------------------------ truncated JSON files
@pytest.mark.parametrize("command, name", [
    ("view", "summary.json"), ("view", "circuit.json"),
    ("evaluate", "summary.json"), ("evaluate", "circuit.json"),
    ("export", "summary.json"), ("export", "circuit.json"), ("export-json", "circuit.json"),
])
def test_a_truncated_json_file_names_the_file(run_dir, capsys, command, name):
    path = run_dir / name
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    err = fails_with_one_line(capsys, COMMANDS[command](run_dir), str(path), "not valid JSON", "rerun")
    assert "featcirc discover" in err or "rerun the discovery" in err


def test_read_json_file_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="x.json not found"):
        read_json_file(tmp_path / "x.json", "thing")
    (tmp_path / "x.json").write_text("")
    with pytest.raises(ValueError, match="x.json is empty"):
        read_json_file(tmp_path / "x.json", "thing")
    (tmp_path / "x.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_json_file(tmp_path / "x.json", "thing")
    (tmp_path / "x.json").write_text('"a string"')
    with pytest.raises(ValueError, match="holds a string, not a JSON object"):
        read_json_file(tmp_path / "x.json", "thing")
    (tmp_path / "x.json").write_text('{"a": 1}')
    assert read_json_file(tmp_path / "x.json", "thing") == {"a": 1}


# ------------------------------------------------------------------ RunRecord, Summary, format versions
def test_run_json_and_summary_json_round_trip_through_their_types(run_dir):
    from featcirc.run_files import RUN_FORMAT, SUMMARY_FORMAT, RunConfig, RunRecord, Summary

    raw = json.loads((run_dir / "run.json").read_text())
    assert list(raw)[0] == "format" and raw["format"] == RUN_FORMAT  # written from now on, first
    record = RunRecord.read(run_dir)
    assert record.to_json() == raw and list(record.to_json()) == list(raw)  # the same file, key order included
    assert RunRecord.from_json(raw).to_json() == raw
    assert isinstance(record.run_config(), RunConfig) and record.model == "tiny" and record.data_name == "sva-nounpp"
    assert record.get("identity") == raw["identity"] and record.get("split") == raw["split"]
    summ = json.loads((run_dir / "summary.json").read_text())
    assert list(summ)[0] == "format" and summ["format"] == SUMMARY_FORMAT
    summary = Summary.read(run_dir)
    assert summary.to_json() == summ and list(summary.to_json()) == list(summ)
    assert set(summary.faithfulness) == {"mean", "patch"} and summary.prompt == summ["prompt"]
    added = summary.with_evaluation("mean", {"file": "faithfulness-mean.json"})
    assert added.get("evaluations") == {"mean": {"file": "faithfulness-mean.json"}} and summary.get("evaluations") is None
    assert {k: v for k, v in added.to_json().items() if k != "evaluations"} == summ
    # files written before format versions (format 0), an older run without identity or fit: read, kept as they were
    old = {k: v for k, v in raw.items() if k not in ("format", "identity", "sae_fit")}
    rec = RunRecord.from_json(old)
    assert rec.format == 0 and rec.to_json() == old and list(rec.to_json()) == list(old) and rec.get("identity") is None
    old_summary = {k: v for k, v in summ.items() if k != "format"}
    assert Summary.from_json(old_summary).format == 0 and Summary.from_json(old_summary).to_json() == old_summary
    (run_dir / "run.json").write_text(json.dumps(old))
    cfg, again = read_run_json(run_dir)
    assert again == old and cfg == record.run_config()


@pytest.mark.parametrize("command", ["view", "evaluate", "export"])
@pytest.mark.parametrize("name", ["run.json", "summary.json"])
def test_a_newer_format_says_upgrade_and_a_bad_one_names_the_file(run_dir, capsys, command, name):
    raw = json.loads((run_dir / name).read_text())
    (run_dir / name).write_text(json.dumps(dict(raw, format=99)))
    fails_with_one_line(capsys, COMMANDS[command](run_dir), name, "format 99", "written by a newer featcirc",
                        "upgrade featcirc")
    (run_dir / name).write_text(json.dumps(dict(raw, format="one")))
    fails_with_one_line(capsys, COMMANDS[command](run_dir), name, "field 'format'", "not a format version")


def test_summary_objects_are_checked_naming_the_file(run_dir, capsys):
    from featcirc.run_files import Summary

    raw = json.loads((run_dir / "summary.json").read_text())
    for key, value in (("example", [1]), ("faithfulness", "high"), ("evaluations", 3)):
        with pytest.raises(ValueError, match=f"summary.json.*{key}") as e:
            Summary.from_json(dict(raw, **{key: value}), run_dir / "summary.json")
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="holds an array"):
        Summary.from_json([raw])
    (run_dir / "summary.json").write_text(json.dumps(dict(raw, example="x")))
    fails_with_one_line(capsys, COMMANDS["view"](run_dir), "summary.json", "'example' is not a JSON object")
