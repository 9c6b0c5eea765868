"""Correlation helpers used by `featcirc compare`."""

from __future__ import annotations

import numpy as np
import pytest

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
