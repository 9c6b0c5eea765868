"""``featcirc export``: re-export a discovered circuit (no model needed): GraphML, DOT, node-link JSON,
or Neuronpedia's attribution-graph JSON together with circuit-tracer's ``graph_files/`` layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from featcirc.run_dir import RunDir

HELP = "re-export a discovered circuit (graphml, dot, json, or neuronpedia + graph_files/)"

FORMATS = ("graphml", "dot", "json", "neuronpedia")


def export_run(run_dir: "str | Path", fmt: str, *, slug: Optional[str] = None, scan: Optional[str] = None,
               feature_url: Optional[str] = None) -> list[Path]:
    """Re-export a run's ``circuit.json`` as ``fmt`` into the run directory (each file atomically);
    returns the written paths. ``neuronpedia`` writes ``neuronpedia.json`` and ``graph_files/``
    (:func:`featcirc.export.graph_files.export_run_graphs`) with ``slug``, ``scan`` (Neuronpedia's
    model id; only ``neuronpedia.json`` is for upload) and ``feature_url`` (base URL of the feature
    files)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run directory; run `featcirc discover ... --out {run_dir}` first")
    files = RunDir(run_dir)
    src = files.circuit_json
    if not src.exists():
        raise FileNotFoundError(f"{src} not found; run `featcirc discover ... --out {run_dir}` first")
    from featcirc.export.formats import read_json, write_dot, write_graphml, write_json as write_graph_json  # after the checks

    if fmt == "neuronpedia":
        from featcirc.export.graph_files import export_run_graphs

        paths = export_run_graphs(run_dir, slug=slug, scan=scan, node_threshold=1.0, feature_json_base_url=feature_url)
        return [paths["neuronpedia"], paths["graph_files"]]
    C = read_json(src)
    if fmt == "graphml":
        return [write_graphml(C, files.circuit_graphml)]
    if fmt == "dot":
        return [write_dot(C, files.circuit_dot, title=_title(run_dir))]
    return [write_graph_json(C, files.circuit_json)]


def _title(run_dir: Path) -> str:
    """The DOT file's title (:func:`featcirc.commands.view.run_title`); a missing ``summary.json`` or
    ``run.json`` is no title, a damaged one an error naming it."""
    from featcirc.commands.view import run_title
    from featcirc.run_files import RunRecord, Summary

    files = RunDir(run_dir)
    summary = Summary.read(run_dir, fix=f"rerun `featcirc discover ... --out {run_dir}`") \
        if files.summary_json.exists() else {}
    return run_title(summary, RunRecord.read(run_dir) if files.run_json.exists() else None)


def add_arguments(p) -> None:
    p.add_argument("dir", help="a run directory made by `featcirc discover`")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="neuronpedia writes neuronpedia.json and circuit-tracer's graph_files/")
    p.add_argument("--slug", default=None, help="graph slug of neuronpedia.json and graph_files/ "
                   "(default: model, data, method and a hash of the circuit)")
    p.add_argument("--scan", default=None, help="Neuronpedia model id of neuronpedia.json: letters, digits, '_', "
                   "'.', '-' (default: the run's model without its org/ prefix); graph_files/ keeps its own "
                   "./data/features/... scan for circuit-tracer's local viewer")
    p.add_argument("--feature-url", default=None, help="base URL of feature JSON files for Neuronpedia (default: none)")


def run(args, progress: bool) -> int:  # noqa: ARG001
    from featcirc.commands.checks import check_export_names

    if args.format != "neuronpedia" and (args.slug or args.scan or args.feature_url):
        raise ValueError("--slug, --scan and --feature-url apply to --format neuronpedia only")
    check_export_names(args.slug, args.scan)
    for path in export_run(args.dir, args.format, slug=args.slug, scan=args.scan, feature_url=args.feature_url):
        print(path)
    return 0
