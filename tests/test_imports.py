"""featcirc's import graph, read from the source with ``ast`` (every import statement, those inside
functions too: a lazy import is still a dependency; not those under ``if TYPE_CHECKING:``, which never run). The cycles once closed through SAE loading and
training (``saes.loading -> saes.trained -> saes.training -> saes.loading``) and between evaluation
and export (``export.plot -> evaluate.stats``, ``evaluate.figure -> export.style``) stay broken:
the shared pieces live a layer below (``saes.train_settings``, ``featcirc.colours``). So do those once
closed through the run files (``attribution.scores -> run_files -> commands.common -> distributed ->
evaluate.faithfulness -> circuit -> attribution.scores``: ``RunConfig``, the schema of ``run.json``, now
lives in ``run_files``) and between SAE loading and identity (``saes.identity -> saes.loading ->
saes.identity``: reading a set description lives in ``saes.identity``), and inside the attribution core
(the registry's estimators import the node pass when they run, which needed the rules' ``LRPRules`` from
the registry and ``Cost`` from the score files: both now live below, in ``rule_set`` and ``cost``). The
package has no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

import featcirc

PKG = Path(featcirc.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = ("featcirc",) + path.relative_to(PKG).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> nx.DiGraph:
    """Module -> the featcirc modules it imports (``from a.b import c`` counts as ``a.b.c`` when that
    is a module, else ``a.b``)."""
    mods = _modules()

    def owner(name: str) -> "str | None":
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    G = nx.DiGraph()
    for name, path in mods.items():
        G.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {id(n) for block in ast.walk(tree)
                     if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                     for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                target = owner(t) if t.startswith("featcirc") else None
                if target is not None and target != name:
                    G.add_edge(name, target)
    return G


def _cycle(G: nx.DiGraph, a: str, b: str) -> "list[str] | None":
    """A cycle through ``a`` and ``b`` (as the path a ~> b ~> a), or None."""
    if nx.has_path(G, a, b) and nx.has_path(G, b, a):
        return nx.shortest_path(G, a, b) + nx.shortest_path(G, b, a)[1:]
    return None


def test_sae_loading_and_training_import_each_other_in_one_direction_only():
    G = import_graph()
    trio = ("featcirc.saes.loading", "featcirc.saes.trained", "featcirc.saes.training")
    for i, a in enumerate(trio):
        for b in trio[i + 1:]:
            assert _cycle(G, a, b) is None, " -> ".join(_cycle(G, a, b))
    # the settings and the spec parser sit below them, and import no other part of featcirc.saes
    for low in ("featcirc.saes.train_settings", "featcirc.saes.spec"):
        assert nx.descendants(G, low) <= {"featcirc.saes.trained", "featcirc.saes.train_settings",
                                          "featcirc.saes.bundled_path"}, low
    assert G.has_edge("featcirc.saes.trained", "featcirc.saes.train_settings")
    assert G.has_edge("featcirc.saes.training", "featcirc.saes.train_settings")


def test_evaluate_imports_nothing_of_export():
    G = import_graph()
    back = [(u, v) for u, v in G.edges if u.startswith("featcirc.evaluate") and v.startswith("featcirc.export")]
    assert back == [], back  # export reads evaluate (plot -> stats), never the other way
    for name in ("featcirc.evaluate.figure", "featcirc.export.plot", "featcirc.export.style", "featcirc.colours",
                 "featcirc.evaluate.stats", "featcirc.evaluate.bootstrap"):
        scc = next(c for c in nx.strongly_connected_components(G) if name in c)
        assert scc == {name}, (name, sorted(scc))
    assert nx.descendants(G, "featcirc.colours") == set()


def test_the_modules_import_alone_in_dependency_order():
    """In a fresh interpreter, the torch-free modules of the two former cycles import one by one in
    dependency order (the ones each needs first), and none of them imports torch (the input checks
    parse ``--saes`` with them before torch loads). The matplotlib and torch ones (``export.plot``,
    ``evaluate.figure``, ``saes.loading``) are imported by the other tests."""
    G = import_graph()
    light = ["featcirc.colours", "featcirc.saes.train_settings", "featcirc.saes.trained", "featcirc.saes.spec",
             "featcirc.saes.training", "featcirc.export.style", "featcirc.evaluate.stats", "featcirc.evaluate.bootstrap"]
    order = [m for m in reversed(list(nx.topological_sort(G.subgraph(light))))]
    code = ("import importlib, sys\n"
            f"for m in {order!r}:\n"
            "    importlib.import_module(m)\n"
            "    assert 'torch' not in sys.modules, m\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_no_import_cycle_in_the_whole_package():
    G = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(G) if len(c) > 1]
    assert cycles == [], cycles
    for a, b in [("featcirc.saes.loading", "featcirc.saes.identity"), ("featcirc.run_files", "featcirc.commands.common"),
                 ("featcirc.circuit", "featcirc.run_files"), ("featcirc.attribution.scores", "featcirc.commands.common"),
                 ("featcirc.run_files", "featcirc.attribution.scores"),
                 ("featcirc.attribution.estimators", "featcirc.attribution.nodes"),
                 ("featcirc.attribution.methods", "featcirc.attribution.rules")]:
        assert _cycle(G, a, b) is None, " -> ".join(_cycle(G, a, b))


def test_the_run_files_sit_below_every_stage():
    """``run_dir`` and ``run_files`` (the run directory's names and records) import no stage: no command
    but the input checks, no attribution module (the method registry through the package's lazy names),
    nothing of export (but its leaf of names), features, view or evaluate; and ``run_files`` imports neither torch nor networkx."""
    G = import_graph()
    below = nx.descendants(G, "featcirc.run_files")
    stages = ("featcirc.commands.common", "featcirc.commands.discover", "featcirc.attribution.", "featcirc.export",
              "featcirc.features", "featcirc.view", "featcirc.evaluate", "featcirc.circuit", "featcirc.distributed")
    leaves = {"featcirc.export.names"}  # the names Neuronpedia accepts (--slug / --scan checks): imports nothing
    assert all(nx.descendants(G, m) == set() for m in leaves)
    assert [m for m in below - leaves if m.startswith(stages)] == [], sorted(below)
    assert nx.descendants(G, "featcirc.run_dir") == set()
    code = ("import sys\nimport featcirc.run_files\n"
            "assert 'torch' not in sys.modules and 'networkx' not in sys.modules, sorted(sys.modules)\nprint('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
