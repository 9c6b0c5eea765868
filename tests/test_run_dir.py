"""The run directory's file names are spelled once, in ``featcirc.run_dir`` (docs/design.md §1, §11):
what a tiny ``discover`` writes is exactly what :class:`RunDir` names, evaluations are named by
:meth:`RunDir.evaluation`, and no other module spells a run file's name."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import featcirc
from featcirc import run_dir as rd
from featcirc.run_dir import FILES, RunDir, evaluation_name, evaluation_stem

PKG = Path(featcirc.__file__).resolve().parent


def test_every_name_has_its_property_and_the_paths_are_plain():
    files = RunDir("some/run")
    assert files.path == Path("some/run") and RunDir(Path("some/run")) == files
    props = {"run_json": rd.RUN_JSON, "eval_pairs_jsonl": rd.EVAL_PAIRS_JSONL, "nodes_pt": rd.NODES_PT,
             "edges_pt": rd.EDGES_PT, "circuit_json": rd.CIRCUIT_JSON, "circuit_graphml": rd.CIRCUIT_GRAPHML,
             "circuit_dot": rd.CIRCUIT_DOT, "neuronpedia_json": rd.NEURONPEDIA_JSON, "graph_files": rd.GRAPH_FILES_DIR,
             "circuit_png": rd.CIRCUIT_PNG, "circuit_html": rd.CIRCUIT_HTML, "cards_json": rd.CARDS_JSON,
             "summary_json": rd.SUMMARY_JSON}
    assert sorted(props.values()) == sorted(FILES) and len(set(FILES)) == len(FILES)
    for prop, name in props.items():
        assert getattr(files, prop) == Path("some/run") / name, prop
    assert files.files() == tuple(Path("some/run") / name for name in FILES)
    assert files.summary_json.name == "summary.json" and files.graph_files.name == "graph_files"
    with pytest.raises(dataclasses.FrozenInstanceError):
        files.path = Path("elsewhere")  # type: ignore[misc]


def test_evaluations_are_named_by_ablation_and_selector():
    files = RunDir("r")
    assert evaluation_name("mean") == "mean" and evaluation_name("patch", [5, 10]) == "patch-sizes"
    assert evaluation_stem("mean", []) == "faithfulness-mean-sizes"
    assert files.evaluation("mean") == {ext: Path("r") / f"faithfulness-mean.{ext}" for ext in ("csv", "json", "png")}
    assert files.evaluation("patch", [10]) == {ext: Path("r") / f"faithfulness-patch-sizes.{ext}"
                                               for ext in ("csv", "json", "png")}
    # evaluate writes where RunDir says: in the run directory, or in an --out directory
    from featcirc.commands.evaluate import output_paths

    assert output_paths(Path("r"), None, "mean", None) == files.evaluation("mean")
    assert output_paths(Path("r"), "elsewhere", "zero", [5]) == RunDir("elsewhere").evaluation("zero", [5])
    assert output_paths(Path("r"), "res.v1.json", "mean") == {ext: Path(f"res.v1.{ext}") for ext in ("csv", "json", "png")}


def test_run_dir_imports_nothing():
    code = ("import sys\nimport featcirc.run_dir\n"
            "assert 'torch' not in sys.modules and 'networkx' not in sys.modules\n"
            "assert sorted(m for m in sys.modules if m.startswith('featcirc')) == ['featcirc', 'featcirc.run_dir']\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def _spelled_names(path: Path) -> list[tuple[int, str]]:
    """String constants of ``path`` that are a run file's name, except dict keys and subscripts
    (``paths["graph_files"]``, the key of what ``export_run_graphs`` returns, is no file name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            keys.add(id(node.slice))
    names = set(FILES)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in keys]


def test_no_other_module_spells_a_run_file_name():
    found = {str(p.relative_to(PKG)): hits for p in sorted(PKG.rglob("*.py"))
             if p.name != "run_dir.py" and (hits := _spelled_names(p))}
    assert found == {}, f"use featcirc.run_dir (RunDir or its constants): {found}"


def test_a_tiny_discover_writes_exactly_the_files_run_dir_names(tmp_path, monkeypatch):
    """8 tiny pairs with cards: every file of the run directory is one RunDir names, and every name
    is there (eval_pairs.jsonl with the default held-out split, cards.json with --cards). ``discover``
    passes what it wrote on in memory: it reads none of its JSON files back (docs/design.md §11)."""
    import featcirc.export.formats
    import featcirc.run_files
    from featcirc.cli import main

    read_back = []

    def refuse(real):
        def read(path, *args, **kwargs):
            if Path(path).name in FILES:
                read_back.append(Path(path).name)
            return real(path, *args, **kwargs)
        return read

    monkeypatch.setattr(featcirc.run_files, "read_json_file", refuse(featcirc.run_files.read_json_file))
    monkeypatch.setattr(featcirc.export.formats, "read_json", refuse(featcirc.export.formats.read_json))
    out = tmp_path / "run"
    assert main(["-q", "--threads", "1", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp",
                 "--pairs", "8", "--cards", "--cards-tokens", "256", "--out", str(out)]) == 0
    assert read_back == [], read_back  # run.json, circuit.json, summary.json: never read back
    files = RunDir(out)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(FILES), set(written) ^ set(FILES)
    for path in files.files():
        assert path.is_dir() if path == files.graph_files else path.is_file(), path
    assert not any(p.name.startswith(rd.EVALUATION_PREFIX) for p in out.iterdir())  # evaluate writes those
