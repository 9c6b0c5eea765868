"""Correlations, bootstrap intervals over pairs, and the curve summaries (MIB's CPR / CMD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featcirc.evaluate import bootstrap
from featcirc.evaluate.bootstrap import (bootstrap_correlation, bootstrap_faithfulness, correlation_replicates,
                                         faithfulness_intervals, percentile_interval, resample_counts)
from featcirc.evaluate.metrics import MIB_FRACTIONS, cmd, cpr
from featcirc.evaluate.stats import average_ranks, pearson, spearman


def test_pearson_and_spearman_match_definitions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(scale=0.5, size=50)
    xm, ym = x - x.mean(), y - y.mean()
    assert pearson(x, y) == pytest.approx(float(xm @ ym / np.sqrt((xm @ xm) * (ym @ ym))))
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear
    assert pearson(x, np.exp(x)) < 0.99
    assert np.isnan(pearson(x, np.ones_like(x)))
    # ties share their average rank: constant blocks do not get an arbitrary order
    assert spearman([0, 0, 0, 1, 2], [5, 4, 3, 6, 7]) == pytest.approx(pearson([1, 1, 1, 3, 4], [2, 1, 0, 3, 4]))
    assert spearman([0, 0, 1], [0, 0, 1]) == pytest.approx(1.0)


# ---- Spearman with ties (scipy is in the stack: sae-lens -> plotly-express -> scipy) -------------
def _tied_cells(seed=0, n_pairs=12, per_pair=10):
    """Cells as ``compare`` sees them: two methods' scores, many exactly 0 in one or the other (cells
    where both are 0 left out), with the pair of every cell."""
    rng = np.random.default_rng(seed)
    n = n_pairs * per_pair
    x = rng.normal(size=n)
    y = x + rng.normal(scale=0.7, size=n)
    x[rng.random(n) < 0.4] = 0.0
    y[rng.random(n) < 0.4] = 0.0
    y[rng.random(n) < 0.1] = 1.0  # a tie away from 0 as well
    keep = (x != 0) | (y != 0)
    return x[keep], y[keep], np.repeat(np.arange(n_pairs), per_pair)[keep]


def _written_out(counts_row, pair, *cols):
    """The bootstrap sample ``counts_row`` stands for: every cell of pair p, counts_row[p] times."""
    times = counts_row[pair].astype(int)
    return [np.repeat(c, times) for c in cols]


def test_average_ranks_match_scipy_rankdata_also_weighted():
    rankdata = pytest.importorskip("scipy.stats").rankdata
    rng = np.random.default_rng(0)
    a = rng.integers(-2, 3, size=60).astype(float)  # five values: every rank is a tie
    assert average_ranks(a) == pytest.approx(rankdata(a) - 1)
    assert average_ranks([3.0, 1.0, 2.0]) == pytest.approx([2.0, 0.0, 1.0])  # no ties: plain ranks
    assert average_ranks([]).shape == (0,)
    # weights: value i stands for w[i] tied copies; its rank is that of the written-out sample
    w = rng.integers(0, 4, size=(5, 60)).astype(float)
    ranks = average_ranks(a, w)
    assert ranks.shape == (5, 60)
    for row, rk in zip(w, ranks):
        times = row.astype(int)
        assert np.repeat(rk, times) == pytest.approx(rankdata(np.repeat(a, times)) - 1)
    with pytest.raises(ValueError, match="weights"):
        average_ranks(a, w[:, :-1])


def test_spearman_with_tied_zeros_matches_scipy_and_ignores_cell_order():
    spearmanr = pytest.importorskip("scipy.stats").spearmanr
    x, y, ids = _tied_cells()
    assert (x == 0).sum() > 15 and (y == 0).sum() > 15
    expected = spearmanr(x, y)[0]
    assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    r, lo, hi = bootstrap_correlation(x, y, ids, method="spearman", seed=0)
    assert r == pytest.approx(expected, abs=1e-12) and lo < r < hi
    # the order of the cells is arbitrary (site / position / feature order): it must not matter, neither
    # to the value nor to the interval. Ranking ties by position did: 0.458 as is, 0.511 sorted by y,
    # 0.374 sorted by -y, where scipy gives 0.477
    for order in (np.argsort(y, kind="stable"), np.argsort(-y, kind="stable"),
                  np.random.default_rng(1).permutation(len(x))):
        rp = bootstrap_correlation(x[order], y[order], ids[order], method="spearman", seed=0)
        assert rp == pytest.approx((r, lo, hi), abs=1e-12)
    by_position = lambda a: np.argsort(np.argsort(a, kind="stable"), kind="stable")  # noqa: E731
    up, down = np.argsort(y, kind="stable"), np.argsort(-y, kind="stable")
    assert pearson(by_position(x[up]), by_position(y[up])) - pearson(by_position(x[down]), by_position(y[down])) \
        > 0.1  # so this sample does exercise the ties
    # all-zero cells tie with each other, wherever they are
    assert spearman([0, 0, 0, 1, 2, 3], [0, 5, 1, 2, 3, 4]) == pytest.approx(
        spearmanr([0, 0, 0, 1, 2, 3], [0, 5, 1, 2, 3, 4])[0])


@pytest.mark.parametrize("by", ["pair", "cell"])
def test_spearman_replicates_are_spearman_of_the_resampled_cells(by):
    """Each replicate is re-ranked: its value is scipy's Spearman of the written-out resample (copies
    of a cell tie with each other); NaN where the drawn cells of one side are constant."""
    spearmanr = pytest.importorskip("scipy.stats").spearmanr
    x, y, ids = _tied_cells(seed=2)
    x, y = np.append(x, [0.0, 0.0]), np.append(y, [0.0, 3.0])  # pair 12: x constant
    ids = np.append(ids, [12, 12])
    counts = np.vstack([resample_counts(13, 40, seed=3), np.eye(13)[12] * 13, np.eye(13)[[0, 12]].sum(0)])
    reps = bootstrap._spearman_replicates(x, y, ids, counts, by=by)
    for c, rep in zip(counts, reps):
        xs, ys = _written_out(c, ids, x, y)
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            assert np.isnan(rep)
        else:
            assert rep == pytest.approx(spearmanr(xs, ys)[0], abs=1e-12)
    assert np.isnan(reps[-2]) and np.isfinite(reps[-1])
    # the default picks one of the two; Pearson replicates are the written-out samples' too
    assert correlation_replicates(x, y, ids, counts, method="spearman") == pytest.approx(reps, nan_ok=True)
    pr = correlation_replicates(x, y, ids, counts[:5], method="pearson")
    assert pr == pytest.approx([pearson(*_written_out(c, ids, x, y)) for c in counts[:5]])


def test_spearman_replicates_by_pair_and_by_cell_agree_on_many_cells():
    rng = np.random.default_rng(4)
    n, n_pairs = 5000, 16
    x = np.where(rng.random(n) < 0.5, 0.0, rng.normal(size=n))
    y = np.where(rng.random(n) < 0.3, 0.0, x + rng.normal(size=n))
    ids = rng.integers(0, n_pairs, size=n)
    counts = resample_counts(n_pairs, 200, seed=0)
    a = bootstrap._spearman_replicates(x, y, ids, counts, by="pair")
    b = bootstrap._spearman_replicates(x, y, ids, counts, by="cell")
    assert a == pytest.approx(b, abs=1e-12)
    assert np.all((a > 0.3) & (a < 0.6))


# ---- CPR / CMD --------------------------------------------------------------------------------
def test_cpr_and_cmd_of_perfect_empty_and_linear_curves():
    x = MIB_FRACTIONS
    assert cpr(x, np.ones(len(x))) == pytest.approx(1.0)
    assert cmd(x, np.ones(len(x))) == pytest.approx(0.0)
    assert cpr(x, np.zeros(len(x))) == pytest.approx(0.0)
    assert cmd(x, np.zeros(len(x))) == pytest.approx(1.0)
    # F = k: the trapezoid rule is exact for a line: mean of k over [0.001, 1] = (0.001 + 1) / 2
    assert cpr(x, np.array(x)) == pytest.approx((x[0] + x[-1]) / 2)
    # overshooting 1 counts against CMD (|1 - F|) but for CPR
    assert cmd(x, np.full(len(x), 1.5)) == pytest.approx(0.5) and cpr(x, np.full(len(x), 1.5)) == pytest.approx(1.5)
    rows = np.stack([np.ones(len(x)), np.zeros(len(x))])
    assert cpr(x, rows) == pytest.approx([1.0, 0.0])  # one area per replicate row
    with pytest.raises(ValueError, match="increase"):
        cpr([0.5, 0.1], [1, 1])
    with pytest.raises(ValueError, match="at least two"):
        cmd([1.0], [1.0])


# ---- bootstrap -------------------------------------------------------------------------------
def _pairs(n, seed, faithful=0.7, noise=1.0):
    rng = np.random.default_rng(seed)
    m_full = 3.0 + rng.normal(scale=noise, size=n)
    m_empty = -1.0 + rng.normal(scale=noise, size=n)
    m_c = m_empty + faithful * (m_full - m_empty) + rng.normal(scale=noise, size=n)
    return m_c, m_full, m_empty


def test_faithfulness_interval_contains_estimate_and_shrinks_with_more_pairs():
    widths = []
    for n in (20, 500):
        m_c, m_full, m_empty = _pairs(n, seed=n)
        (iv,) = faithfulness_intervals(m_c, m_full, m_empty, n_resamples=1000, seed=0)
        ratio = (m_c.mean() - m_empty.mean()) / (m_full.mean() - m_empty.mean())
        assert iv.value == pytest.approx(ratio)  # a ratio of means, as in Marks et al.
        assert iv.lo < iv.value < iv.hi
        widths.append(iv.hi - iv.lo)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n): 20 -> 500 pairs is 5x narrower


def test_bootstrap_is_seeded_and_resamples_pairs_jointly():
    m_c, m_full, m_empty = _pairs(30, seed=1)
    a = faithfulness_intervals(np.stack([m_c, m_full]), m_full, m_empty, seed=3)
    b = faithfulness_intervals(np.stack([m_c, m_full]), m_full, m_empty, seed=3)
    assert a == b
    assert a[1].lo == pytest.approx(1.0) and a[1].hi == pytest.approx(1.0)  # F(M) = 1 in every replicate
    point, reps = bootstrap_faithfulness(m_empty, m_full, m_empty, n_resamples=50)
    assert point[0] == 0.0 and np.all(reps == 0.0)
    counts = resample_counts(30, 7, seed=0)
    assert counts.shape == (7, 30) and np.all(counts.sum(1) == 30)


def test_percentile_interval_ignores_non_finite_replicates():
    reps = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, 1.0], [np.inf, np.nan]])
    lo, hi = percentile_interval(reps, 0.5)
    assert 1.0 <= lo[0] <= hi[0] <= 3.0
    assert np.isnan(lo[1]) and np.isnan(hi[1])  # fewer than half finite


def test_bootstrap_correlation_resamples_pairs_not_cells():
    rng = np.random.default_rng(0)
    n_pairs = 40
    x = rng.normal(size=n_pairs)
    y = 0.6 * x + rng.normal(scale=0.8, size=n_pairs)
    ids = np.arange(n_pairs)
    r, lo, hi = bootstrap_correlation(x, y, ids, seed=0)
    assert r == pytest.approx(pearson(x, y)) and lo < r < hi
    # copying every cell 25 times inside its pair adds no information: the interval must not shrink
    rep = 25
    r2, lo2, hi2 = bootstrap_correlation(np.repeat(x, rep), np.repeat(y, rep), np.repeat(ids, rep), seed=0)
    assert (r2, lo2, hi2) == pytest.approx((r, lo, hi))
    # a cell-level bootstrap would have treated them as 1000 independent points
    cell_ids = np.arange(n_pairs * rep)
    _, lo3, hi3 = bootstrap_correlation(np.repeat(x, rep), np.repeat(y, rep), cell_ids, seed=0)
    assert (hi3 - lo3) < (hi - lo) / 3
    # torch tensors, as NodeScores.cell_groups() gives them, work as they are
    rt = bootstrap_correlation(torch.tensor(x), torch.tensor(y), torch.tensor(ids), seed=0)
    assert rt == pytest.approx((r, lo, hi))
    rs, los, his = bootstrap_correlation(x, np.exp(x), ids, method="spearman")
    assert rs == pytest.approx(1.0) and los == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_correlation(x, y, ids[:-1])
    assert np.isnan(bootstrap_correlation(x, y, np.zeros(n_pairs))[1])  # one pair: no interval
