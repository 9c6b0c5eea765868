"""Prompt pairs from a file or a built-in task: tokenized for a model (:func:`load_pairs`), or, before
any model is loaded, read and split into discovery and held-out evaluation pairs (:func:`run_pairs`).

Nothing here imports torch at module level: a command checks its data (files exist and parse, the
split has pairs on both sides) before it loads a model.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from featcirc.data.pairs import DataError, PairDataset, PromptPair, read_pairs, tokenize_pairs
from featcirc.data.tasks import MAX_PAIRS, MAX_TASK_PAIRS, make_task

logger = logging.getLogger(__name__)


def check_pair_count(n: Any, option: str = "--pairs") -> None:
    """``n`` must be a whole number from 1 to :data:`~featcirc.data.tasks.MAX_PAIRS` (or None: every
    pair); the message names ``option``."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"{option} must be a whole number >= 1 (the prompt pairs to use), got {n!r}")
    if n is not None and n > MAX_PAIRS:
        raise DataError(f"{option} must be at most {MAX_PAIRS:,} (every pair is scored by forward and backward "
                        f"passes: more would run for days), got {n:,}")


def log_summary(ds: PairDataset) -> None:
    """Log a dataset's summary once: :func:`~featcirc.data.pairs.tokenize_pairs` has already warned
    with it when pairs were dropped for their content, so it is logged (at info level) only otherwise."""
    limits = [k for k in ds.dropped if k.startswith("over max_pairs")]
    if any(v for k, v in ds.dropped.items() if k not in limits):
        return
    logger.info("%s", ds.summary())


def load_pairs(model: Any, *, data: "str | os.PathLike[str] | None" = None, task: str | None = None,
               n: int | None = 64, seed: int = 0, batch_size: int = 16) -> PairDataset:
    """Load pairs from exactly one of ``data`` (a JSONL path) or ``task`` (a name in
    :data:`featcirc.data.tasks.TASKS`, generated with ``make_task(task, n, seed)``) and tokenize them.

    For ``task``, ``n`` pairs are generated (some may then be dropped by the tokenizer). For
    ``data``, the first ``n`` usable pairs of the file are kept (``n=None``: all). Logs the summary.
    """
    if (data is None) == (task is None):
        raise ValueError("pass exactly one of data=<JSONL path> or task=<task name>")
    check_pair_count(n, "n (--pairs)")
    if task is not None:
        if n is None:
            raise ValueError("n (the number of pairs to generate, --pairs) is required with task=")
        pairs = make_task(task, n, seed)
        source = f"task {task} (n={n}, seed={seed})"
        ds = tokenize_pairs(model, pairs, batch_size=batch_size, source=source)
    else:
        source = str(data)
        ds = tokenize_pairs(model, read_pairs(data), batch_size=batch_size, source=source, max_pairs=n)
    log_summary(ds)
    return ds


@dataclass
class RunPairs:
    """The pairs of a run, read or generated and split before the model loads.

    ``discovery``: the pairs to score (tokenize them with ``max_pairs=n``); ``evaluation``: the
    held-out pairs (None: no split, evaluation is in-sample); ``source``: where the pairs came from,
    for messages; ``split``: the keyword arguments of :func:`featcirc.data.split.write_split`
    besides the pairs (``eval_fraction`` and ``seed``, or ``source`` of an evaluation file)."""

    discovery: list[PromptPair]
    evaluation: Optional[list[PromptPair]]
    source: str
    split: dict


def run_pairs(*, data: "str | os.PathLike[str] | None" = None, task: Optional[str] = None,
              n: Optional[int] = None, seed: int = 0, eval_fraction: Optional[float] = 0.5,
              eval_data: "str | os.PathLike[str] | None" = None) -> RunPairs:
    """Read ``data`` or generate ``task`` pairs and split off held-out evaluation pairs (no model).

    - ``eval_data``: every pair of ``data``/``task`` is for discovery; the evaluation pairs are the
      file's.
    - else ``eval_fraction`` in (0, 1): :func:`featcirc.data.split.split_pairs` (seeded, stratified by
      ``case``). A task generates ``ceil(n / (1 - eval_fraction))`` pairs, so about ``n`` remain
      for discovery; a file is split as a whole (discovery then keeps its first ``n`` usable pairs).
    - ``eval_fraction`` 0 or None: no split (faithfulness will be in-sample).

    Raises :class:`DataError` (a missing or malformed file, too few pairs to split, a bad count or
    fraction) before any model is needed.
    """
    from featcirc.data.split import split_pairs

    if (data is None) == (task is None):
        raise ValueError("pass exactly one of data=<JSONL path> (--data) or task=<task name> (--task)")
    check_pair_count(n)
    f = 0.0 if eval_fraction is None else eval_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 <= float(f) < 1.0):
        raise DataError(f"--eval-fraction must be in [0, 1) (the share of pairs held out for evaluation; 0: "
                        f"none), got {eval_fraction!r}")
    f = float(f)
    held_out = eval_data is None and f > 0
    if task is not None:
        n_task = 64 if n is None else n
        total = math.ceil(n_task / (1.0 - f)) if held_out else n_task
        if held_out and total < 2:
            total = 2
        if total > MAX_TASK_PAIRS:
            raise DataError(f"--pairs {n_task:,} with --eval-fraction {f:g} would generate {total:,} task pairs; "
                            f"at most {MAX_TASK_PAIRS:,} are generated (more is a typo, or could not be scored): lower --pairs "
                            "or --eval-fraction")
        pairs = make_task(task, total, seed)
        source = f"task {task} (n={total}, seed={seed})"
    else:
        pairs = read_pairs(data)
        source = str(data)
    if eval_data is not None:
        evaluation = read_pairs(eval_data)
        return RunPairs(pairs, evaluation, source, dict(source=str(eval_data)))
    if not held_out:
        return RunPairs(pairs, None, source, {})
    discovery, evaluation = split_pairs(pairs, f, seed)
    return RunPairs(discovery, evaluation, source, dict(eval_fraction=f, seed=seed))


__all__ = ["RunPairs", "check_pair_count", "load_pairs", "log_summary", "run_pairs"]
