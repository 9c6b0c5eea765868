"""Bootstrap confidence intervals over prompt pairs.

The unit of resampling is the *pair*: a replicate draws ``n`` pairs with replacement (multinomial
counts ``c_i``, ``sum c_i = n``) and recomputes the statistic from the per-pair values with those
multiplicities. Intervals are percentile intervals of the replicates (95% by default: the 2.5th and
97.5th percentiles); replicates that are not finite (e.g. a zero denominator) are left out, and the
interval is NaN when fewer than half are finite. A fixed ``seed`` gives the same intervals.

- Faithfulness is a ratio of means (Marks et al.), so each replicate recomputes
  ``F* = (mean* m(C) - mean* m(∅)) / (mean* m(M) - mean* m(∅))`` with the same resampled pairs in
  all three means (and in every point of a curve, so curve areas get intervals too).
- Correlations between two methods' score cells resample pairs, not cells: every cell of a drawn
  pair comes with it (cells of one pair are not independent). Spearman's rho uses average ranks for
  ties, in the point estimate and in every replicate (re-ranked).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from featcirc.evaluate.stats import average_ranks, pearson, spearman

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval ``[lo, hi]``."""

    value: float
    lo: float
    hi: float

    def to_json(self) -> dict[str, Optional[float]]:
        f = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
        return dict(value=f(self.value), lo=f(self.lo), hi=f(self.hi))


def interval_text(iv: Interval) -> str:
    """``0.690 [0.633, 0.743]``: a value and its interval to 3 decimals, the value alone when the interval
    is not finite, ``n/a`` when the value is not (the command line's and the faithfulness figure's wording)."""
    if not math.isfinite(iv.value):
        return "n/a"
    ci = f" [{iv.lo:.3f}, {iv.hi:.3f}]" if math.isfinite(iv.lo) and math.isfinite(iv.hi) else ""
    return f"{iv.value:.3f}{ci}"


def _check(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")


def resample_counts(n_items: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n_items]`` multiplicities of ``n_items`` draws with replacement per replicate."""
    if n_items < 1:
        raise ValueError("nothing to resample: no pairs")
    _check(n_resamples, 0.5)
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_resamples).astype(np.float64)


def percentile_interval(replicates: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``replicates`` along axis 0, over finite values (NaN where fewer than
    half of the replicates are finite)."""
    _check(1, confidence)
    r = np.asarray(replicates, dtype=np.float64)
    finite = np.isfinite(r)
    r = np.where(finite, r, np.nan)
    alpha = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with no finite replicate
        lo = np.nanquantile(r, alpha, axis=0)
        hi = np.nanquantile(r, 1.0 - alpha, axis=0)
    enough = finite.sum(axis=0) >= max(1, r.shape[0] // 2)
    return np.where(enough, lo, np.nan), np.where(enough, hi, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def bootstrap_faithfulness(m_circuits: "np.ndarray | Sequence[np.ndarray]", m_full: np.ndarray,
                           m_empty: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Faithfulness of ``P`` circuits and its bootstrap replicates.

    ``m_circuits``: ``[P, n]`` per-pair metric of each circuit (``[n]`` for one); ``m_full``,
    ``m_empty``: ``[n]``. Returns ``(F [P], replicates [n_resamples, P])`` with
    ``F = (mean m(C) - mean m(∅)) / (mean m(M) - mean m(∅))`` (NaN where the denominator is 0).
    """
    mc = np.atleast_2d(np.asarray(m_circuits, dtype=np.float64))
    mf, me = np.asarray(m_full, dtype=np.float64), np.asarray(m_empty, dtype=np.float64)
    n = mf.shape[0]
    if mc.shape[1] != n or me.shape != mf.shape:
        raise ValueError(f"per-pair values disagree in length: circuits {mc.shape}, full {mf.shape}, "
                         f"empty {me.shape}")
    point = _ratio(mc.mean(1) - me.mean(), np.asarray(mf.mean() - me.mean()))
    w = resample_counts(n, n_resamples, seed) / n  # [R, n]
    mc_b, mf_b, me_b = w @ mc.T, w @ mf, w @ me  # [R, P], [R], [R]
    reps = _ratio(mc_b - me_b[:, None], (mf_b - me_b)[:, None])
    return point, reps


def faithfulness_intervals(m_circuits: "np.ndarray | Sequence[np.ndarray]", m_full: np.ndarray,
                           m_empty: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                           confidence: float = DEFAULT_CONFIDENCE) -> list[Interval]:
    """:func:`bootstrap_faithfulness` summarised as one :class:`Interval` per circuit."""
    point, reps = bootstrap_faithfulness(m_circuits, m_full, m_empty, n_resamples=n_resamples, seed=seed)
    lo, hi = percentile_interval(reps, confidence)
    return [Interval(float(v), float(a), float(b)) for v, a, b in zip(point, lo, hi)]


def statistic_interval(point: float, replicates: np.ndarray,
                       confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """An :class:`Interval` from a point estimate and ``[R]`` replicates of any statistic (e.g. CPR
    of each replicate curve)."""
    lo, hi = percentile_interval(np.asarray(replicates, dtype=np.float64)[:, None], confidence)
    return Interval(float(point), float(lo[0]), float(hi[0]))


def curve_statistic_interval(fn: Callable[[np.ndarray], Any], point_curve: np.ndarray,
                             replicate_curves: np.ndarray,
                             confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Interval of a curve summary ``fn`` (``[..., P] -> [...]``, e.g. CPR over fractions) from the
    point curve ``[P]`` and its bootstrap replicates ``[R, P]``."""
    return statistic_interval(float(fn(point_curve)), np.asarray(fn(replicate_curves)), confidence)


_BLOCK = 1 << 21  # elements of a block of replicates (~16 MB per array)
_MAX_PAIRS_BY_PAIR = 128  # the by-pair Spearman holds 3 * n_pairs^3 sums (50 MB at 128 pairs) ...
_MAX_RANKS_BY_PAIR = 1 << 24  # ... and n_pairs x n_cells ranks per side (128 MB)


def _pearson_replicates(x: np.ndarray, y: np.ndarray, pair: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson's r of each replicate (``counts``: ``[R, n_pairs]`` multiplicities), from per-pair sums:
    a replicate costs one small matrix product."""
    n_pairs = counts.shape[1]
    xc, yc = x - x.mean(), y - y.mean()  # centred: per-pair sums stay well conditioned
    stats = np.zeros((n_pairs, 6))
    for j, v in enumerate((np.ones_like(xc), xc, yc, xc * xc, yc * yc, xc * yc)):
        stats[:, j] = np.bincount(pair, weights=v, minlength=n_pairs)
    tot = counts @ stats  # [R, 6]
    n, sx, sy, sxx, syy, sxy = tot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = sx / n, sy / n
        vx, vy = sxx / n - mx * mx, syy / n - my * my
        reps = (sxy / n - mx * my) / np.sqrt(vx * vy)
    return np.where((vx > 0) & (vy > 0), reps, np.nan)


def _varies(a: np.ndarray, pair: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[R]``: whether the cells drawn in each replicate hold at least two distinct values (exact)."""
    _, v = np.unique(a, return_inverse=True)
    v = v.ravel().astype(np.float64)
    lo, hi = np.full(counts.shape[1], np.inf), np.full(counts.shape[1], -np.inf)
    np.minimum.at(lo, pair, v)
    np.maximum.at(hi, pair, v)
    drawn = counts > 0
    return np.where(drawn, hi, -np.inf).max(1) > np.where(drawn, lo, np.inf).min(1)


def _spearman_by_cell(x: np.ndarray, y: np.ndarray, pair: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman's rho of each replicate from the cells: :func:`average_ranks` of the drawn sample (the
    multiplicities as weights, so copies of a cell tie with each other), centred, and Pearson's r of the
    ranks weighted by multiplicity. ``O(R n)``, in blocks of replicates."""
    R, n = counts.shape[0], len(x)
    sums = np.empty((R, 3))
    step = max(1, _BLOCK // max(n, 1))
    for a in range(0, R, step):
        w = counts[a:a + step][:, pair]  # [r, n] multiplicity of every cell
        mean = (w.sum(1, keepdims=True) - 1.0) / 2.0  # average ranks of N copies have mean (N - 1) / 2
        rx, ry = average_ranks(x, w) - mean, average_ranks(y, w) - mean
        wx = w * rx
        sums[a:a + step] = np.stack([np.einsum("ri,ri->r", wx, rx), np.einsum("ri,ri,ri->r", w, ry, ry),
                                     np.einsum("ri,ri->r", wx, ry)], 1)
    return sums


def _spearman_by_pair(x: np.ndarray, y: np.ndarray, pair: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The sums of :func:`_spearman_by_cell` from per-pair sums, for few pairs (``P``): an average rank is
    linear in the multiplicities, so in replicate ``c`` the centred rank of cell ``i`` is ``c @ A[:, i]``
    with ``A[p, i]`` = (cells of pair ``p`` below ``x_i``) + (cells of pair ``p`` tied with ``x_i``) / 2
    - (cells of pair ``p``) / 2, and a weighted sum of products of ranks is the cubic form
    ``sum_pqs c_p c_q c_s T[p, q, s]``, ``T[p] = A[:, cells of p] @ B[:, cells of p].T``.
    ``O(P^2 n + R P^3)``: independent of the number of cells per replicate."""
    R, P = counts.shape
    n = len(x)
    onehot = np.zeros((P, n))
    onehot[pair, np.arange(n)] = 1.0
    size = onehot.sum(1, keepdims=True)
    ax = average_ranks(x, onehot) + 0.5 - size / 2.0  # [P, n]; half-integers, exact
    ay = average_ranks(y, onehot) + 0.5 - size / 2.0
    order = np.argsort(pair, kind="stable")
    bounds = np.searchsorted(pair[order], np.arange(P + 1))
    T = np.zeros((P, 3, P, P))
    for p in range(P):
        cells = order[bounds[p]:bounds[p + 1]]
        bx, by = ax[:, cells], ay[:, cells]
        T[p] = bx @ bx.T, by @ by.T, bx @ by.T
    T = T.reshape(P, 3 * P * P)
    sums = np.empty((R, 3))
    step = max(1, _BLOCK // (3 * P * P))
    for a in range(0, R, step):
        c = counts[a:a + step]
        m = (c @ T).reshape(len(c), 3, P, P)  # sum over p
        sums[a:a + step] = np.einsum("rq,rkqs,rs->rk", c, m, c)
    return sums


def _spearman_replicates(x: np.ndarray, y: np.ndarray, pair: np.ndarray, counts: np.ndarray, *,
                         by: Optional[str] = None) -> np.ndarray:
    """Spearman's rho of each replicate, re-ranked with average ranks for ties (the value of the
    written-out sample, as ``scipy.stats.spearmanr``); NaN where a side is constant. ``by``: ``"pair"``
    or ``"cell"`` (the same numbers up to rounding); default the cheaper one."""
    R, P = counts.shape
    if by is None:
        small = P <= _MAX_PAIRS_BY_PAIR and P * len(x) <= _MAX_RANKS_BY_PAIR
        by = "pair" if small and P ** 3 <= 64 * len(x) else "cell"
    sums = (_spearman_by_pair if by == "pair" else _spearman_by_cell)(x, y, pair, counts)
    sxx, syy, sxy = sums.T
    ok = _varies(x, pair, counts) & _varies(y, pair, counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0), np.nan)


def correlation_replicates(x_cells: "np.ndarray | Sequence[float]", y_cells: "np.ndarray | Sequence[float]",
                           pair_index: "np.ndarray | Sequence[int]", counts: np.ndarray, *,
                           method: str = "pearson") -> np.ndarray:
    """The correlation of each bootstrap replicate ``[R]``: replicate ``r`` takes every cell of pair
    ``p`` (``pair_index`` in ``0..n_pairs-1``) ``counts[r, p]`` times (``counts``: ``[R, n_pairs]``, e.g.
    from :func:`resample_counts`). The value is exactly that of the written-out sample; for
    ``"spearman"`` it is re-ranked with average ranks for ties. NaN where a side is constant."""
    x = np.asarray(x_cells, dtype=np.float64).ravel()
    y = np.asarray(y_cells, dtype=np.float64).ravel()
    pair = np.asarray(pair_index, dtype=np.intp).ravel()
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    if not len(x) == len(y) == len(pair):
        raise ValueError(f"x_cells, y_cells and pair_index must have the same length, got "
                         f"{len(x)}, {len(y)}, {len(pair)}")
    if len(pair) and (pair.min() < 0 or pair.max() >= counts.shape[1]):
        raise ValueError(f"pair_index must be in 0..{counts.shape[1] - 1}")
    if method == "pearson":
        return _pearson_replicates(x, y, pair, counts)
    if method == "spearman":
        return _spearman_replicates(x, y, pair, counts)
    raise ValueError(f"unknown correlation method {method!r}; choose pearson or spearman")


def bootstrap_correlation(x_cells: "np.ndarray | Sequence[float]", y_cells: "np.ndarray | Sequence[float]",
                          pair_ids: "np.ndarray | Sequence[Any]", *, method: str = "pearson",
                          n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """Correlation of two methods' score cells with a bootstrap interval that resamples *pairs*.

    ``pair_ids[i]`` names the prompt pair cell ``i`` belongs to (e.g. the pair index of
    ``NodeScores.cell_groups()``); numpy arrays, sequences or CPU tensors. Each replicate draws pairs with
    replacement and computes the correlation over all cells of the drawn pairs, each weighted by its
    pair's multiplicity (:func:`correlation_replicates`). ``method="spearman"``: Pearson's r of
    average ranks (ties share the mean of their ranks, as ``scipy.stats.spearmanr``; so the value does
    not depend on the order of the cells), and each replicate is re-ranked the same way. Returns
    ``(r, lo, hi)``; ``lo``/``hi`` are NaN with fewer than two distinct pairs.
    """
    _check(n_resamples, confidence)
    x = np.asarray(x_cells, dtype=np.float64).ravel()
    y = np.asarray(y_cells, dtype=np.float64).ravel()
    ids = np.asarray(pair_ids).ravel()
    if not (len(x) == len(y) == len(ids)):
        raise ValueError(f"x_cells, y_cells and pair_ids must have the same length, got "
                         f"{len(x)}, {len(y)}, {len(ids)}")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"unknown correlation method {method!r}; choose pearson or spearman")
    r = spearman(x, y) if method == "spearman" else pearson(x, y)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    _, pair = np.unique(ids, return_inverse=True)
    pair = pair.ravel()
    n_pairs = int(pair.max()) + 1
    if n_pairs < 2:
        return r, float("nan"), float("nan")
    reps = correlation_replicates(x, y, pair, resample_counts(n_pairs, n_resamples, seed), method=method)
    lo, hi = percentile_interval(reps[:, None], confidence)
    return r, float(lo[0]), float(hi[0])


__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_RESAMPLES", "Interval", "bootstrap_correlation",
           "bootstrap_faithfulness", "correlation_replicates", "curve_statistic_interval",
           "faithfulness_intervals", "interval_text", "percentile_interval", "resample_counts", "statistic_interval"]
