"""Agreement between attribution methods: per-pair score cells and their correlations."""

from __future__ import annotations

import numpy as np

from featcirc.sites import Site


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant or there are fewer than two points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties ranked by order)."""
    rank = lambda a: np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)  # noqa: E731
    return pearson(rank(np.asarray(x)), rank(np.asarray(y)))


def score_cells(records, level: str) -> dict[str, np.ndarray]:
    """Every pair's per-position indirect effects (``BatchRecord.ie``), flattened and grouped by site
    kind (embed / resid / attn / mlp) and, at feature level, by node kind (feature / error). The
    order of cells is the same for every method run on the same data, so groups can be correlated."""
    groups: dict[str, list[np.ndarray]] = {}
    for rec in records:
        for s, (ie_f, ie_v) in rec.ie.items():
            kind = Site.parse(s).kind
            v = ie_v.flatten().numpy()
            groups.setdefault(kind, []).append(v)
            if level == "feature":
                groups.setdefault("error", []).append(v)
            if ie_f is not None:
                f = ie_f.flatten().numpy()
                groups[kind].append(f)
                groups.setdefault("feature", []).append(f)
    return {k: np.concatenate(v) for k, v in groups.items()}
