"""What the commands share: the run configuration (``run.json``), loading a model with its SAEs
and the data, and CSV output.

A run directory holds ``run.json`` (what was run, so ``evaluate`` can reload the model and SAEs), the
full scores (``nodes.pt``, ``edges.pt``: re-thresholding needs no model), the circuit in every export
format, a drawing and ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from featcirc.io import write_text

logger = logging.getLogger("featcirc")


@dataclass
class RunConfig:
    """What a discover run used; stored as ``run.json``."""

    model: str
    saes: Optional[str]
    method: str
    level: str
    aggregation: str
    data: Optional[str] = None
    task: Optional[str] = None
    n: Optional[int] = 64
    seed: int = 0
    batch_size: int = 16
    ig_steps: int = 10
    max_nodes: Optional[int] = 1000
    node_threshold: Optional[float] = None
    top_k: Optional[int] = 100
    edge_threshold: float = 0.0

    @property
    def source(self) -> dict:
        return dict(data=self.data, task=self.task, n=self.n, seed=self.seed, batch_size=self.batch_size)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(["" if (isinstance(x, float) and math.isnan(x)) else
                    (f"{x:.6g}" if isinstance(x, float) else x) for x in r])
    return write_text(path, buf.getvalue())


def load_model_and_saes(model_name: str, saes_spec: Optional[str], level: str):
    from featcirc.models.loading import load_model
    from featcirc.saes.loading import load_saes

    model = load_model(model_name)
    saes = None
    if level == "feature":
        if not saes_spec:
            raise ValueError("feature-level circuits need SAEs: pass --saes (e.g. --saes tiny), "
                             "or use --level component")
        saes = load_saes(model, saes_spec)
    return model, saes


def load_data(model, cfg: "RunConfig | dict"):
    from featcirc.data import load_pairs

    src = cfg.source if isinstance(cfg, RunConfig) else cfg
    return load_pairs(model, data=src.get("data"), task=src.get("task"), n=src.get("n"),
                      seed=src.get("seed", 0), batch_size=src.get("batch_size", 16))


def example_prompt(model, data) -> tuple[str, list[str]]:
    batch = max(data.batches, key=lambda b: b.clean.shape[1])  # node positions fit the longest prompt
    toks = batch.clean[0]
    return batch.pairs[0].clean_prefix, [model.tokenizer.decode([int(t)]) for t in toks]


TASK_CHOICES = ("ioi", "sva-simple", "sva-nounpp", "sva-rc", "sva-within-rc")


def add_data_arguments(p, required: bool = True) -> None:
    """``--data FILE | --task NAME``, ``--n``, ``--seed``, ``--batch-size``."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--data", help="feature-circuits JSONL file of prompt pairs")
    g.add_argument("--task", choices=TASK_CHOICES, help="generate pairs for a built-in task")
    p.add_argument("--n", type=int, default=None, help="pairs to use (generated for --task; default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated pairs")
    p.add_argument("--batch-size", type=int, default=16)
