"""Agreement between attribution methods: correlations of score cells (``NodeScores.cell_groups``)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant or there are fewer than two points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def average_ranks(a: "np.ndarray | Sequence[float]", weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Ranks 0..n-1, tied values sharing the mean of their ranks (``scipy.stats.rankdata(a) - 1``).

    ``weights``: multiplicities of the values, ``[n]`` or ``[R, n]`` (one sample per row, e.g. the
    replicates of a bootstrap): value ``i`` stands for ``weights[..., i]`` tied copies of itself, and
    its rank is the mean rank of all copies of its value in that weighted sample (the rank it would
    get if the sample were written out). Returns ``[n]`` or ``[R, n]``; ranks of values of weight 0
    are meaningless (they carry no weight). Vectorised: one sort of ``a`` for all rows.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    n = len(a)
    if n == 0:
        return np.zeros((0,) if weights is None else np.shape(weights), dtype=np.float64)
    order = np.argsort(a, kind="stable")
    s = a[order]
    new_value = np.empty(n, dtype=bool)
    new_value[0], new_value[1:] = True, s[1:] != s[:-1]
    starts = np.flatnonzero(new_value)  # first sorted position of each tie group
    group = np.empty(n, dtype=np.intp)
    group[order] = np.cumsum(new_value) - 1  # tie group of each value
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape[-1] != n:
        raise ValueError(f"weights of shape {w.shape} for {n} values")
    size = np.add.reduceat(w[..., order], starts, axis=-1)  # copies of each tie group
    # the group's copies take ranks end - size .. end - 1 (end: copies up to and including it): mean
    mid = np.cumsum(size, axis=-1) - (size + 1.0) / 2.0
    return mid[..., group]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks, ties given their average rank (as
    ``scipy.stats.spearmanr``; the value does not depend on the order of the cells). Every Spearman of
    the package (``compare``, the bootstrap replicates) ranks with :func:`average_ranks`."""
    return pearson(average_ranks(x), average_ranks(y))
