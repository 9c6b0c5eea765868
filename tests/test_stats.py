"""Correlations, bootstrap intervals over pairs, and the curve summaries (MIB's CPR / CMD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featcirc.evaluate.bootstrap import (bootstrap_correlation, bootstrap_faithfulness, faithfulness_intervals,
                                         percentile_interval, resample_counts)
from featcirc.evaluate.metrics import MIB_FRACTIONS, cmd, cpr
from featcirc.evaluate.stats import pearson, spearman


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
