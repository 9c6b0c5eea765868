"""circuit-tracer's ``graph_files`` directory: what its local server (``circuit_tracer.frontend.
local_server.serve(data_dir=...)``) and viewer read.

Layout of ``data_dir`` (a run's ``graph_files/``)::

    graph-metadata.json                  {"graphs": [one metadata entry per graph]}
    {slug}.json                          an attribution graph (featcirc.export.neuronpedia)
    features/{feature_set}/{n}.json      one feature file per SAE feature (featcirc.features)

The server answers ``/data/...`` and ``/graph_data/...`` from ``data_dir`` and everything else
from its own ``frontend/assets``. The viewer reads ``./data/graph-metadata.json`` for its graph
menu (an entry's ``scan`` and ``title_prefix`` label it), ``./graph_data/{slug}.json`` for a
graph, and, for the feature panel of a feature node, picks the file from the graph's
``metadata.scan`` (``feature_examples/init-feature-examples.js``, ``loadFeature``): a ``scan``
starting with ``./`` gives ``{scan}/{feature}.json``; any other ``scan`` first asks Hugging Face
for a feature index (``https://huggingface.co/{scan}/.../features/index.json.gz``, a network
request) and otherwise reads ``./features/{scan}/{feature}.json``, which the server answers from
its assets, not from ``data_dir``. So only a ``./data/...`` path reaches these feature files, and a graph file's
``scan`` is ``./data/features/{feature_set}`` (:func:`features_scan`).

Neuronpedia cannot take that value: its upload rejects a ``scan`` with any character other than
letters, digits, ``_``, ``.``, ``-`` and needs the id of a model it hosts
(:data:`featcirc.export.neuronpedia.NEURONPEDIA_ID_RE`). No one value serves both, so they are
kept apart: ``graph_files/{slug}.json`` is for the local viewer only (validated with
``local_viewer=True``) and the run's ``neuronpedia.json``, the same graph with the model id as
``scan``, is the file to upload; the menu entry in ``graph-metadata.json`` keeps the model id too.
Without a feature set (component-level runs) the graph file keeps the model id. ``feature`` numbers
are :func:`featcirc.export.neuronpedia.feature_number` (site and SAE index, Cantor-paired), the same
in every graph, so runs of one model and SAE set can share one ``features/{feature_set}/``.

Several runs may write into one directory: :func:`write_graph_files` adds or replaces its own
entry of ``graph-metadata.json`` (by slug) and leaves the others.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import networkx as nx

from featcirc.export.neuronpedia import (default_slug, neuronpedia_model_id, slug_part, to_neuronpedia,
                                         validate_neuronpedia)
from featcirc.io import write_json, write_text
from featcirc.run_dir import GRAPH_FILES_DIR, RunDir
from featcirc.run_files import RunRecord, Summary

logger = logging.getLogger("featcirc")

GRAPH_METADATA = "graph-metadata.json"
FEATURES_DIR = "features"
_ENTRY_KEYS = ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version")


def feature_set_name(model: str, saes: Optional[str]) -> str:
    """The directory name of a model's and SAE set's feature files: ``{model}.{saes}`` in slug
    characters (an SAE directory counts by its name, never its full path)."""
    if not saes:
        raise ValueError("feature files need an SAE set (the run was component level: no features)")
    return f"{slug_part(model)}.{slug_part(Path(str(saes).rstrip('/')).name or saes)}"


def features_scan(feature_set: str) -> str:
    """A graph file's ``metadata.scan`` that points circuit-tracer's local viewer's feature panel at
    ``{data_dir}/features/{feature_set}/`` (a ``./`` path: Neuronpedia's upload rejects it, so it
    goes into ``graph_files/`` graphs only)."""
    return f"./data/{FEATURES_DIR}/{slug_part(feature_set)}"


def features_dir(data_dir: "str | os.PathLike[str]", feature_set: str) -> Path:
    """Where the feature files of ``feature_set`` live under ``data_dir``."""
    return Path(data_dir) / FEATURES_DIR / slug_part(feature_set)


def read_graph_metadata(data_dir: "str | os.PathLike[str]") -> list[dict]:
    """The graph entries of ``data_dir/graph-metadata.json`` (empty if there is none); a file that
    is not the viewer's format is an error that says so."""
    path = Path(data_dir) / GRAPH_METADATA
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}); delete it or choose another graph_files directory") from None
    if not isinstance(data, dict) or not isinstance(data.get("graphs"), list):
        raise ValueError(f"{path} is not a circuit-tracer graph-metadata file ({{\"graphs\": [...]}}); "
                         "delete it or choose another graph_files directory")
    return [g for g in data["graphs"] if isinstance(g, dict)]


def write_graph_files(G: nx.DiGraph, data_dir: "str | os.PathLike[str]", *, prompt: str,
                      prompt_tokens: Iterable[str], scan: Optional[str] = None, feature_set: Optional[str] = None,
                      slug: Optional[str] = None, data_name: Optional[str] = None,
                      title_prefix: Optional[str] = None, **graph_kw: Any) -> Path:
    """Write ``{slug}.json`` and this graph's entry of ``graph-metadata.json`` into ``data_dir``.

    ``scan``: the model id for the graph menu (and Neuronpedia); ``feature_set``: the name of the
    feature files' directory (:func:`feature_set_name`), which becomes the graph file's ``scan``
    so the feature panel reads ``features/{feature_set}/{n}.json``; without it the graph file keeps
    the model id and the panel stays empty. The graph file is for the local viewer, not for
    upload (module docstring). ``slug`` / ``data_name``: as
    :func:`featcirc.export.neuronpedia.to_neuronpedia` (default :func:`default_slug`);
    ``title_prefix``: text before the model id in the viewer's graph menu. Other keyword arguments
    go to ``to_neuronpedia``. Returns the graph file's path.
    """
    data_dir = Path(data_dir)
    slug = slug or default_slug(G, data_name=data_name)
    graph = to_neuronpedia(G, prompt=prompt, prompt_tokens=prompt_tokens, slug=slug, scan=scan,
                           data_name=data_name, **graph_kw)
    model_scan = graph["metadata"]["scan"]
    if feature_set:
        graph["metadata"]["scan"] = features_scan(feature_set)
        missing = [n["feature"] for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"
                   and not (features_dir(data_dir, feature_set) / f"{n['feature']}.json").exists()]
        if missing:
            logger.info("%d of the graph's feature nodes have no feature file in graph_files/features/%s yet; "
                        "`featcirc features RUN_DIR` writes them", len(missing), feature_set)
    validate_neuronpedia(graph, local_viewer=True)
    path = write_text(data_dir / f"{slug}.json", json.dumps(graph, allow_nan=False) + "\n")
    entry = {k: graph["metadata"][k] for k in _ENTRY_KEYS if k in graph["metadata"]}
    entry["scan"] = model_scan
    if title_prefix:
        entry["title_prefix"] = str(title_prefix)
    graphs = [g for g in read_graph_metadata(data_dir) if g.get("slug") != slug] + [entry]
    write_json(data_dir / GRAPH_METADATA, {"graphs": graphs})
    return path


# ------------------------------------------------------------------------------- run directories
def _fix(run_dir: Path) -> str:
    return f"rerun `featcirc discover ... --out {run_dir}`"


def read_run_record(run_dir: Path) -> RunRecord:
    """``run_dir``'s ``run.json`` (:class:`~featcirc.run_files.RunRecord`: the fields it holds checked,
    any task name)."""
    files = RunDir(run_dir)
    if not files.run_json.exists():
        raise FileNotFoundError(f"{files.run_json} not found; run `featcirc discover ... --out {run_dir}` first")
    return RunRecord.read(run_dir)


def read_summary(run_dir: Path) -> Summary:
    """``run_dir``'s ``summary.json`` (:class:`~featcirc.run_files.Summary`)."""
    files = RunDir(run_dir)
    if not files.summary_json.exists():
        raise FileNotFoundError(f"{files.summary_json} not found; run `featcirc discover ... --out {run_dir}` first")
    return Summary.read(run_dir, fix=_fix(run_dir))


def run_data_name(run: "RunRecord | Mapping[str, Any]") -> Optional[str]:
    """A run's task name, else its data file's stem (:attr:`featcirc.run_files.RunRecord.data_name`)."""
    return (run if isinstance(run, RunRecord) else RunRecord(config=dict(run))).data_name


def export_run_graphs(run_dir: "str | os.PathLike[str]", *, slug: Optional[str] = None,
                      scan: Optional[str] = None, node_threshold: float = 1.0,
                      feature_json_base_url: Optional[str] = None,
                      graph_files_dir: "str | os.PathLike[str] | None" = None,
                      run: "RunRecord | Mapping[str, Any] | None" = None,
                      summary: "Summary | Mapping[str, Any] | None" = None,
                      circuit: Optional[nx.DiGraph] = None) -> dict[str, Path]:
    """A run's attribution graphs from its ``circuit.json``, ``summary.json`` and ``run.json``
    (no model): ``RUN/neuronpedia.json`` (the file to upload to Neuronpedia; ``scan`` = the model
    id) and ``RUN/graph_files/`` (circuit-tracer's local server, feature panel reading
    ``graph_files/features/{model}.{saes}/``; its graph's ``scan`` is a ``./`` path that
    Neuronpedia rejects). Both share ``slug`` (default
    :func:`featcirc.export.neuronpedia.default_slug`: model, task or data name, method, hash of
    the circuit). ``scan``: Neuronpedia's model id (default: the run's model as
    :func:`featcirc.export.neuronpedia.neuronpedia_model_id`). ``summary.json``'s ``example`` (the
    example pair's own logit difference and answer probabilities), when there, labels the metric
    node (``to_neuronpedia(example=...)``); older runs without it get the mean-over-pairs label.
    ``run`` / ``summary`` / ``circuit``: the run's :class:`~featcirc.run_files.RunRecord`,
    :class:`~featcirc.run_files.Summary` (or their JSON content) and circuit when the caller holds them
    already (``discover``, which has just written them), else read from ``run_dir``.
    Returns ``{"neuronpedia": path, "graph_files": path of {slug}.json}``.
    """
    from featcirc.export.formats import read_json
    from featcirc.export.neuronpedia import write_neuronpedia

    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    summary = read_summary(run_dir) if summary is None else \
        summary if isinstance(summary, Summary) else Summary.from_json(summary, files.summary_json)
    run = read_run_record(run_dir) if run is None else \
        run if isinstance(run, RunRecord) else RunRecord.from_json(run, files.run_json)
    if circuit is None:
        if not files.circuit_json.exists():
            raise FileNotFoundError(f"{files.circuit_json} not found; run `featcirc discover ... --out {run_dir}` first")
        circuit = read_json(files.circuit_json)
    C = circuit
    prompt, tokens = summary.prompt, summary.prompt_tokens
    if prompt is None or tokens is None:
        raise ValueError(f"{files.summary_json} has no prompt / prompt_tokens (written by an older "
                         "featcirc); rerun `featcirc discover`")
    model, saes, method = run.model, run.saes, run.method
    data_name = run_data_name(run)
    slug = slug or default_slug(C, model=model, data_name=data_name, method=method)
    info = dict(description=f"featcirc {method} circuit of {model} on {data_name} "
                            f"({summary.get('pairs_used')} prompt pairs)")
    example = summary.example
    own = summary.get("example_tokens")  # an aligned run: the example's own tokens and their slots (§14)
    slots = None
    if isinstance(own, dict) and isinstance(own.get("tokens"), list) and isinstance(own.get("slots"), list):
        tokens, slots = own["tokens"], own["slots"]
    common = dict(prompt=prompt, prompt_tokens=tokens, token_slots=slots, slug=slug,
                  scan=scan or (neuronpedia_model_id(model) if model else None), node_threshold=node_threshold,
                  info=info, example=example if isinstance(example, dict) else None)
    paths = {"neuronpedia": write_neuronpedia(C, files.neuronpedia_json,
                                              feature_json_base_url=feature_json_base_url, **common)}
    feature_set = feature_set_name(model, saes) if saes and run.level == "feature" else None
    out = Path(graph_files_dir) if graph_files_dir is not None else files.graph_files
    paths["graph_files"] = write_graph_files(C, out, feature_set=feature_set, title_prefix=f"featcirc {method}",
                                             **common)
    return paths


__all__ = ["GRAPH_METADATA", "GRAPH_FILES_DIR", "FEATURES_DIR", "feature_set_name", "features_scan",
           "features_dir", "read_graph_metadata", "write_graph_files", "read_run_record", "read_summary", "run_data_name",
           "export_run_graphs"]
