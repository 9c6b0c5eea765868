"""Prompt pairs from a file or a built-in task, tokenized for a model."""

from __future__ import annotations

import logging
import os
from typing import Any

from featcirc.data.pairs import PairDataset, read_pairs, tokenize_pairs
from featcirc.data.tasks import make_task

logger = logging.getLogger(__name__)


def load_pairs(model: Any, *, data: "str | os.PathLike[str] | None" = None, task: str | None = None,
               n: int | None = 64, seed: int = 0, batch_size: int = 16) -> PairDataset:
    """Load pairs from exactly one of ``data`` (a JSONL path) or ``task`` (a name in
    :data:`featcirc.data.tasks.TASKS`, generated with ``make_task(task, n, seed)``) and tokenize them.

    For ``task``, ``n`` pairs are generated (some may then be dropped by the tokenizer). For
    ``data``, the first ``n`` usable pairs of the file are kept (``n=None``: all). Logs the summary.
    """
    if (data is None) == (task is None):
        raise ValueError("pass exactly one of data=<JSONL path> or task=<task name>")
    if task is not None:
        if n is None:
            raise ValueError("n (the number of pairs to generate) is required with task=")
        pairs = make_task(task, n, seed)
        source = f"task {task} (n={n}, seed={seed})"
        ds = tokenize_pairs(model, pairs, batch_size=batch_size, source=source)
    else:
        source = str(data)
        ds = tokenize_pairs(model, read_pairs(data), batch_size=batch_size, source=source, max_pairs=n)
    logger.info("%s", ds.summary())
    return ds
