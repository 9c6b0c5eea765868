"""Summaries of a faithfulness curve: MIB's CPR and CMD, and featcirc's log-grid area.

MIB (Mueller et al. 2025, "MIB: A Mechanistic Interpretability Benchmark", arXiv 2504.13151,
circuit localization track) integrates faithfulness ``f(C_k)`` over circuit sizes ``k`` given as
fractions of the graph::

    CPR = ∫ f(C_k) dk          (circuit performance ratio: higher is better)
    CMD = ∫ |1 - f(C_k)| dk    (circuit-model difference: lower is better, 0 = the model's behaviour)

The variant implemented is the one of MIB's evaluation code (``evaluate_area_under_curve`` with its
defaults): the trapezoid rule on a *linear* k axis over the fractions :data:`MIB_FRACTIONS`
(0.1% ... 100%), ``f`` not clipped. Two differences, both stated where the numbers are written:
the area is divided by the span of k (0.999), so that a perfect curve (``f = 1`` everywhere) gives
exactly CPR = 1 and CMD = 0; and MIB chooses CPR's circuits by signed score and CMD's by absolute
score, while here both integrate the same curve of circuits ranked by ``|score|`` (featcirc's
pruning), so they are two summaries of one curve.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEFINITIONS = dict(
    cpr="area under the faithfulness curve over fractions of the graph (MIB); higher is better (1: perfect)",
    cmd="area between that curve and 1 (MIB); lower is better (0: perfect)",
    faithfulness="F(C) = (m(C) - m(empty)) / (m(full) - m(empty)): the share of the metric the circuit recovers "
                 "with every other node ablated; higher is better (1: all of it)",
    completeness="F(M \\ C): the share of the metric left when the circuit is ablated and every other node kept; "
                 "lower is better (0: nothing works without the circuit)",
)
"""One sentence each, with its direction, written beside the numbers in ``summary.json`` (docs/design.md §9)."""


MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""MIB's circuit sizes, as fractions of the graph."""


def _check_axis(fractions: Sequence[float], n_values: int) -> np.ndarray:
    x = np.asarray(fractions, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need at least two circuit sizes to integrate a curve, got {list(x)}")
    if len(x) != n_values:
        raise ValueError(f"{len(x)} fractions but {n_values} faithfulness values")
    if not np.all(np.diff(x) > 0):
        raise ValueError(f"fractions must increase strictly, got {list(x)}")
    return x


def _mean_trapezoid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trapezoid area of ``y`` (last axis) over ``x``, divided by the span of ``x``."""
    widths = np.diff(x)
    return np.sum(widths * (y[..., 1:] + y[..., :-1]) / 2.0, axis=-1) / (x[-1] - x[0])


def cpr(fractions: Sequence[float], faithfulness: "Sequence[float] | np.ndarray") -> "float | np.ndarray":
    """CPR: the area under ``f`` over ``fractions``, normalised by their span (1 = perfect).
    ``faithfulness`` may be ``[P]`` or ``[R, P]`` (e.g. bootstrap replicates): one area per row."""
    f = np.asarray(faithfulness, dtype=np.float64)
    x = _check_axis(fractions, f.shape[-1])
    out = _mean_trapezoid(x, f)
    return float(out) if out.ndim == 0 else out


def cmd(fractions: Sequence[float], faithfulness: "Sequence[float] | np.ndarray") -> "float | np.ndarray":
    """CMD: the area between ``f`` and 1, ``∫ |1 - f|``, normalised by the span (0 = perfect)."""
    f = np.asarray(faithfulness, dtype=np.float64)
    x = _check_axis(fractions, f.shape[-1])
    out = _mean_trapezoid(x, np.abs(1.0 - f))
    return float(out) if out.ndim == 0 else out


def curve_area(points: Sequence, n_max: int, grid: int = 64) -> float:
    """Area under faithfulness vs log10(#nodes), normalised to [0, 1] over ``1..n_max`` nodes.

    ``points`` have ``n_nodes`` and ``faithfulness``. At each grid size ``n`` the curve takes the
    faithfulness of the largest circuit with at most ``n`` nodes (0 if none), clipped to [0, 1];
    the area is the mean over a log-spaced grid, so curves of different methods are compared on the
    same axis.
    """
    if n_max < 1:
        raise ValueError("n_max must be >= 1")
    ns = np.unique(np.round(np.logspace(0, math.log10(max(n_max, 1)), grid)).astype(int))
    pts = sorted((p.n_nodes, p.faithfulness) for p in points if math.isfinite(p.faithfulness))
    vals = []
    for n in ns:
        best = [f for k, f in pts if k <= n and k > 0]
        vals.append(min(max(best[-1], 0.0), 1.0) if best else 0.0)
    return float(np.mean(vals))


__all__ = ["MIB_FRACTIONS", "cpr", "cmd", "curve_area"]
