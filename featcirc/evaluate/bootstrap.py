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
  pair comes with it (cells of one pair are not independent).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from featcirc.evaluate.stats import pearson

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


def _rank(a: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)


def bootstrap_correlation(x_cells: "np.ndarray | Sequence[float]", y_cells: "np.ndarray | Sequence[float]",
                          pair_ids: "np.ndarray | Sequence[Any]", *, method: str = "pearson",
                          n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """Correlation of two methods' score cells with a bootstrap interval that resamples *pairs*.

    ``pair_ids[i]`` names the prompt pair cell ``i`` belongs to (e.g. the pair index of
    ``NodeScores.cell_groups()``); numpy arrays, sequences or CPU tensors. Each replicate draws pairs with
    replacement and computes the correlation over all cells of the drawn pairs, each weighted by its
    pair's multiplicity (from per-pair sums, so a replicate costs one small matrix product).
    ``method="spearman"`` ranks the cells once over the whole sample and resamples the Pearson
    correlation of those ranks (an approximation of re-ranking each replicate). Returns
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
    if method == "spearman":
        x, y = _rank(x), _rank(y)
    r = pearson(x, y)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    _, pair = np.unique(ids, return_inverse=True)
    n_pairs = int(pair.max()) + 1
    if n_pairs < 2:
        return r, float("nan"), float("nan")
    xc, yc = x - x.mean(), y - y.mean()  # centred: per-pair sums stay well conditioned
    stats = np.zeros((n_pairs, 6))
    for j, v in enumerate((np.ones_like(xc), xc, yc, xc * xc, yc * yc, xc * yc)):
        stats[:, j] = np.bincount(pair, weights=v, minlength=n_pairs)
    tot = resample_counts(n_pairs, n_resamples, seed) @ stats  # [R, 6]
    n, sx, sy, sxx, syy, sxy = tot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = sx / n, sy / n
        vx, vy = sxx / n - mx * mx, syy / n - my * my
        reps = (sxy / n - mx * my) / np.sqrt(vx * vy)
    reps = np.where((vx > 0) & (vy > 0), reps, np.nan)
    lo, hi = percentile_interval(reps[:, None], confidence)
    return r, float(lo[0]), float(hi[0])


__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_RESAMPLES", "Interval", "bootstrap_correlation",
           "bootstrap_faithfulness", "curve_statistic_interval", "faithfulness_intervals",
           "percentile_interval", "resample_counts", "statistic_interval"]
