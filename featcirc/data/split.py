"""Held-out evaluation: split prompt pairs into a discovery set and an evaluation set.

A circuit found on some pairs and scored on the same pairs is measured in-sample; faithfulness on
pairs the attribution never saw is the honest number. :func:`split_pairs` is seeded, deterministic,
disjoint, and stratified by ``case`` (each case is split in the same proportion); :func:`write_split`
stores the evaluation pairs in a run directory as ``eval_pairs.jsonl`` (which ``featcirc evaluate``
uses by default) and returns what ``run.json`` should record.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional, Sequence

import numpy as np

from featcirc.data.pairs import DataError, PromptPair, write_pairs
from featcirc.run_dir import EVAL_PAIRS_JSONL, RunDir

logger = logging.getLogger(__name__)

EVAL_PAIRS_FILE = EVAL_PAIRS_JSONL
"""The evaluation pairs of a run directory (:data:`featcirc.run_dir.EVAL_PAIRS_JSONL`)."""


def _allocate(sizes: Sequence[int], total: int) -> list[int]:
    """Largest-remainder apportionment of ``total`` over strata of ``sizes`` (ties: larger stratum,
    then earlier), never more than a stratum holds."""
    n = sum(sizes)
    quotas = [total * s / n for s in sizes]
    out = [math.floor(q) for q in quotas]
    order = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - out[i]), -sizes[i], i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def split_pairs(pairs: Sequence[PromptPair], eval_fraction: float, seed: int = 0
                ) -> tuple[list[PromptPair], list[PromptPair]]:
    """Split ``pairs`` into ``(discovery, evaluation)``.

    ``round(eval_fraction * n)`` pairs go to evaluation (at least one, and at least one pair stays
    for discovery), apportioned over the ``case`` labels in proportion to their sizes (pairs without
    a case form one stratum); within a case the pairs are chosen by a permutation seeded with
    ``seed``. Both lists keep the input order. The same input and seed always give the same split.

    Raises :class:`~featcirc.data.pairs.DataError` for a fraction outside (0, 1) or fewer than two pairs.
    """
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) \
            or not (0.0 < float(eval_fraction) < 1.0):
        raise DataError(f"eval_fraction must be strictly between 0 and 1 (e.g. 0.5), got {eval_fraction!r}; "
                        "to evaluate on separate data pass an evaluation file instead")
    pairs = list(pairs)
    n = len(pairs)
    if n < 2:
        raise DataError(f"too few pairs to split: {n}; a held-out split needs at least 2 pairs "
                        "(one to discover the circuit, one to evaluate it): give more pairs or an "
                        "evaluation file")
    n_eval = min(max(int(round(float(eval_fraction) * n)), 1), n - 1)
    strata: dict[Optional[str], list[int]] = {}
    for i, p in enumerate(pairs):
        strata.setdefault(p.case, []).append(i)
    keys = sorted(strata, key=lambda k: (k is None, "" if k is None else k))
    quota = _allocate([len(strata[k]) for k in keys], n_eval)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for k, q in zip(keys, quota):
        idx = strata[k]
        chosen.update(idx[j] for j in rng.permutation(len(idx))[:q])
    discovery = [p for i, p in enumerate(pairs) if i not in chosen]
    evaluation = [p for i, p in enumerate(pairs) if i in chosen]
    return discovery, evaluation


def write_split(run_dir: "str | os.PathLike[str]", evaluation: Sequence[PromptPair], *,
                discovery: Optional[Sequence[PromptPair]] = None, eval_fraction: Optional[float] = None,
                seed: Optional[int] = None, source: Optional[str] = None) -> dict:
    """Write the evaluation pairs to ``run_dir/eval_pairs.jsonl`` (atomically) and return the split's
    record for ``run.json``: ``eval_fraction``, ``split_seed``, ``n_discovery``, ``n_eval``,
    ``eval_pairs`` (the file name), ``eval_source`` (where the evaluation pairs came from) and
    ``n_overlap`` (evaluation pairs also among the discovery pairs: 0 for :func:`split_pairs`; a
    warning is logged otherwise, e.g. for an evaluation file that repeats discovery pairs)."""
    evaluation = list(evaluation)
    if not evaluation:
        raise DataError("no evaluation pairs to write")
    path = write_pairs(RunDir(run_dir).eval_pairs_jsonl, evaluation)
    overlap = None
    if discovery is not None:
        overlap = len(set(evaluation) & set(discovery))
        if overlap:
            logger.warning("%d of %d evaluation pairs are also discovery pairs: faithfulness on them is "
                           "in-sample", overlap, len(evaluation))
    return dict(eval_fraction=eval_fraction, split_seed=seed,
                n_discovery=None if discovery is None else len(list(discovery)),
                n_eval=len(evaluation), eval_pairs=path.name,
                eval_source=source or "split", n_overlap=overlap)


__all__ = ["EVAL_PAIRS_FILE", "split_pairs", "write_split"]
