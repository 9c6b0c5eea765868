"""``featcirc view DIR``: write ``DIR/circuit.html``, one self-contained offline page to explore
a discovered circuit (no model needed), with the run's example prompt and the exported circuit's
faithfulness under each ablation from ``summary.json`` when it has them (an older run's single
record too). Its inputs (``--max-nodes``, ``--out``, that ``DIR`` is a run directory, the JSON files)
are checked before torch or networkx is imported."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from featcirc.run_dir import CARDS_JSON, CIRCUIT_JSON, EDGES_PT, NODES_PT, RunDir

if TYPE_CHECKING:
    from featcirc.run_files import RunRecord, Summary

logger = logging.getLogger("featcirc")

_MAKE_ONE = "run `featcirc discover ... --out DIR` (or `featcirc demo --out DIR`) first"


def run_title(summary: "Summary | dict", run: "RunRecord | dict | None" = None) -> str:
    """``model · method level circuit · data``, with the data file's name only (no directories), from a
    run's :class:`~featcirc.run_files.Summary` and :class:`~featcirc.run_files.RunRecord` (or their
    JSON content)."""
    run = {} if run is None else run
    data = run.get("task") or run.get("data") or summary.get("data") or ""
    if data and ("/" in data or "\\" in data) and not data.startswith("task "):
        data = Path(data).name
    head = f"{summary.get('model', run.get('model', '?'))} \u00b7 {summary.get('method', run.get('method', '?'))} "
    head += f"{summary.get('level', run.get('level', ''))} circuit".replace("  ", " ")
    from featcirc.data.align import title_note

    al = summary.get("alignment")
    note = title_note(al.get("mode") if isinstance(al, dict) else None)
    return (f"{head} \u00b7 {data}" if data else head) + note


def check_inputs(run_dir: "str | Path", out: "str | Path | None" = None, *, max_nodes: Optional[int] = None) -> Path:
    """Check what ``view_run`` needs without importing anything heavy (docs/design.md §12): ``max_nodes``
    a whole number >= 1 (or None), ``run_dir`` a run directory (``summary.json`` and ``nodes.pt``),
    ``out`` not a directory and in an existing one. Returns the HTML path to write."""
    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1):
        raise ValueError(f"--max-nodes must be a positive integer, got {max_nodes!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run directory; {_MAKE_ONE}")
    files = RunDir(run_dir)
    for path in (files.summary_json, files.nodes_pt):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a complete run directory; {_MAKE_ONE}")
    out = files.circuit_html if out is None else Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the path of the HTML file to write")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the directory {out.parent} does not exist")
    from featcirc.io import check_writable_file

    check_writable_file(out, option="--out")  # writable (read-only file systems and root included)
    return out


def view_run(run_dir: "str | Path", out: "str | Path | None" = None, *, max_nodes: Optional[int] = None) -> Path:
    """Write the viewer of a run directory (``nodes.pt``, ``edges.pt``, ``summary.json``, and when
    present ``circuit.json`` and ``cards.json``) to ``out`` (default ``DIR/circuit.html``);
    ``max_nodes``: embed that many nodes (default :data:`featcirc.view.DEFAULT_MAX_NODES`). Bad input
    fails before torch or networkx is imported."""
    out = check_inputs(run_dir, out, max_nodes=max_nodes)
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    from featcirc.run_files import RunRecord, Summary, read_json_file

    summary = Summary.read(run_dir, fix=f"rerun the discovery ({_MAKE_ONE})")  # its objects checked
    run = RunRecord.read(run_dir) if files.run_json.is_file() else None
    cards = None
    if files.cards_json.is_file():
        cards = read_json_file(files.cards_json, "cards", fix=f"regenerate the feature cards or delete {CARDS_JSON}")
    # ablation -> record; a run from before both ablations were reported has one record, read as such
    faithfulness = summary.faithfulness

    from featcirc.attribution.scores import EdgeScores, NodeScores
    from featcirc.circuit import full_graph
    from featcirc.export.formats import read_json
    from featcirc.view import DEFAULT_MAX_NODES, write_viewer

    max_nodes = DEFAULT_MAX_NODES if max_nodes is None else max_nodes
    try:
        nodes = NodeScores.load(files.nodes_pt)
        edges = EdgeScores.load(files.edges_pt) if files.edges_pt.is_file() else None
    except (OSError, RuntimeError, EOFError, TypeError, KeyError, pickle.UnpicklingError) as e:
        raise ValueError(f"the scores in {run_dir} ({NODES_PT} / {EDGES_PT}) could not be read ({e}); "
                         "rerun `featcirc discover ... --out DIR`") from e
    n_layers = (summary.get("model_info") or {}).get("n_layers")
    G = full_graph(nodes, edges, n_layers=n_layers)
    circuit = read_json(files.circuit_json) if files.circuit_json.is_file() else None
    if circuit is None:
        logger.info("no %s in %s: the viewer starts at the run's top-k / thresholds", CIRCUIT_JSON, run_dir)
        from featcirc.circuit import PruneSettings, prune

        p = summary.get("prune") or {}
        if p.get("method", "threshold") != "threshold":
            raise ValueError(f"{run_dir} has no {CIRCUIT_JSON}, and its circuit was chosen by --prune {p.get('method')}, "
                             "which needs the model to redo; rerun `featcirc discover ... --out DIR`")
        circuit = prune(G, PruneSettings(p.get("node_threshold"), p.get("top_k", 100), p.get("edge_threshold", 0.0)))
    return write_viewer(G, out, circuit=circuit, tokens=summary.get("prompt_tokens"), cards=cards,
                        title=run_title(summary, run), max_nodes=max_nodes, example=summary.get("example"),
                        faithfulness=faithfulness)


HELP = "write DIR/circuit.html: one offline page to explore a discovered circuit"


def add_arguments(p) -> None:
    p.add_argument("dir", help="a run directory written by `featcirc discover` or `featcirc demo`")
    p.add_argument("--out", default=None, help="the HTML file to write (default DIR/circuit.html)")
    p.add_argument("--max-nodes", type=int, default=None,
                   help="embed the N nodes of largest |score| (default 300) plus the run's circuit")


def run(args, progress: bool) -> int:  # noqa: ARG001
    path = view_run(args.dir, args.out, max_nodes=args.max_nodes)
    print(path)
    return 0
