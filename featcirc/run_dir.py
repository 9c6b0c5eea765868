"""A run directory's file names, spelled once (docs/design.md §11). The run directory
(``discover --out DIR``) is the interface between the stages: ``discover`` writes it, ``evaluate``,
``export``, ``features`` and ``view`` read it and add to it. Every module names its files through
:class:`RunDir` (a path per file) or the constants below (in messages), so a new or renamed file is
a change here. Torch-free; imports nothing of featcirc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

RUN_JSON = "run.json"
"""What was run: the configuration, the data split, environment, identity, SAE fit."""
EVAL_PAIRS_JSONL = "eval_pairs.jsonl"
"""The held-out pairs (``evaluate`` reads them by default)."""
NODES_PT = "nodes.pt"
EDGES_PT = "edges.pt"
"""The full node and edge scores (re-thresholding needs no model)."""
CIRCUIT_JSON = "circuit.json"
CIRCUIT_GRAPHML = "circuit.graphml"
CIRCUIT_DOT = "circuit.dot"
"""The exported circuit: node-link JSON (what the other stages read back), GraphML, DOT."""
NEURONPEDIA_JSON = "neuronpedia.json"
"""The attribution graph to upload to Neuronpedia."""
GRAPH_FILES_DIR = "graph_files"
"""circuit-tracer's local-server layout (``graph-metadata.json``, ``{slug}.json``, ``features/``)."""
CIRCUIT_PNG = "circuit.png"
CIRCUIT_HTML = "circuit.html"
"""The drawing and the offline viewer."""
CARDS_JSON = "cards.json"
"""Feature cards (``featcirc features``, ``discover --cards``)."""
SUMMARY_JSON = "summary.json"
"""Counts, cost, faithfulness of the exported circuit, the example pair; ``evaluations``."""

FILES = (RUN_JSON, EVAL_PAIRS_JSONL, NODES_PT, EDGES_PT, CIRCUIT_JSON, CIRCUIT_GRAPHML, CIRCUIT_DOT,
         NEURONPEDIA_JSON, GRAPH_FILES_DIR, CIRCUIT_PNG, CIRCUIT_HTML, CARDS_JSON, SUMMARY_JSON)
"""Every fixed name of a run directory (``GRAPH_FILES_DIR`` a directory), in the order of docs/design.md §11;
``eval_pairs.jsonl`` only with held-out pairs, ``cards.json`` only with cards. Evaluations add
:meth:`RunDir.evaluation`'s files."""

EVALUATION_PREFIX = "faithfulness-"
SIZES_SUFFIX = "-sizes"
EVALUATION_EXTENSIONS = ("csv", "json", "png")
"""An evaluation's files: ``faithfulness-<name>.{csv,json,png}`` (:func:`evaluation_name`)."""


def evaluation_name(ablation: str, sizes: Optional[Sequence[int]] = None) -> str:
    """The name of an evaluation by its ablation and curve selector: ``mean`` (node thresholds),
    ``mean-sizes`` (``--sizes``). It names the files and the ``summary.json`` entry, so an
    evaluation by sizes never replaces one by thresholds."""
    return f"{ablation}{SIZES_SUFFIX}" if sizes is not None else ablation


def evaluation_stem(ablation: str, sizes: Optional[Sequence[int]] = None) -> str:
    """``faithfulness-<name>``, the stem of an evaluation's files (:func:`evaluation_name`)."""
    return EVALUATION_PREFIX + evaluation_name(ablation, sizes)


@dataclass(frozen=True)
class RunDir:
    """A run directory's files by name: ``RunDir(out).summary_json`` is ``out / "summary.json"``.
    Naming a path checks nothing and creates nothing."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(os.fspath(self.path)))

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def eval_pairs_jsonl(self) -> Path:
        return self.path / EVAL_PAIRS_JSONL

    @property
    def nodes_pt(self) -> Path:
        return self.path / NODES_PT

    @property
    def edges_pt(self) -> Path:
        return self.path / EDGES_PT

    @property
    def circuit_json(self) -> Path:
        return self.path / CIRCUIT_JSON

    @property
    def circuit_graphml(self) -> Path:
        return self.path / CIRCUIT_GRAPHML

    @property
    def circuit_dot(self) -> Path:
        return self.path / CIRCUIT_DOT

    @property
    def neuronpedia_json(self) -> Path:
        return self.path / NEURONPEDIA_JSON

    @property
    def graph_files(self) -> Path:
        return self.path / GRAPH_FILES_DIR

    @property
    def circuit_png(self) -> Path:
        return self.path / CIRCUIT_PNG

    @property
    def circuit_html(self) -> Path:
        return self.path / CIRCUIT_HTML

    @property
    def cards_json(self) -> Path:
        return self.path / CARDS_JSON

    @property
    def summary_json(self) -> Path:
        return self.path / SUMMARY_JSON

    def evaluation(self, ablation: str, sizes: Optional[Sequence[int]] = None) -> dict[str, Path]:
        """An evaluation's files by extension: ``{"csv": DIR/faithfulness-<name>.csv, "json": ..., "png": ...}``
        (:func:`evaluation_name`: ``mean``, ``mean-sizes``, ...)."""
        stem = evaluation_stem(ablation, sizes)
        return {ext: self.path / f"{stem}.{ext}" for ext in EVALUATION_EXTENSIONS}

    def files(self) -> tuple[Path, ...]:
        """The paths of every fixed name (:data:`FILES`), whether there or not."""
        return tuple(self.path / name for name in FILES)


__all__ = ["RUN_JSON", "EVAL_PAIRS_JSONL", "NODES_PT", "EDGES_PT", "CIRCUIT_JSON", "CIRCUIT_GRAPHML", "CIRCUIT_DOT",
           "NEURONPEDIA_JSON", "GRAPH_FILES_DIR", "CIRCUIT_PNG", "CIRCUIT_HTML", "CARDS_JSON", "SUMMARY_JSON", "FILES",
           "EVALUATION_PREFIX", "SIZES_SUFFIX", "EVALUATION_EXTENSIONS", "evaluation_name", "evaluation_stem", "RunDir"]
