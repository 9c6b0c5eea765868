"""The figure of a faithfulness report: F against circuit size with its bootstrap band, completeness,
the MIB fraction points, the exported circuit and the F = 0.8 line (PNG, written atomically).

Uses matplotlib's Agg canvas directly (no pyplot), so it works headless and leaves the caller's
matplotlib state alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from featcirc.evaluate.curves import FAITHFUL, FaithfulnessReport
from featcirc.evaluate.bootstrap import interval_text
from featcirc.colours import METRIC_COLOUR, NEGATIVE_COLOUR, NEUTRAL_COLOUR, POSITIVE_COLOUR
from featcirc.io import atomic_path


def _size_ticks(x_max: float) -> list[int]:
    """0, 1, 10, 100, ... up to ``x_max``."""
    ticks = [0, 1]
    while ticks[-1] * 10 <= x_max:
        ticks.append(ticks[-1] * 10)
    return ticks


def plot_report(report: FaithfulnessReport, path: "str | os.PathLike[str]", *, title: str = "") -> Path:
    """Draw ``report`` to ``path``: the main curve's F with its interval band (circuit sizes on a
    symlog axis with plain integer ticks, 0 = the empty circuit), completeness dashed, MIB's fraction
    circuits as hollow markers, the exported circuit as a star, reference lines at F = 0.8, 0 and 1."""
    distinct = {r.circuit: c for r, c in report.points(report.main_selector)}  # each circuit once
    main = sorted(distinct.values(), key=lambda c: c.n_nodes)
    fracs = [c for _, c in report.points("fraction")]
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if main:
        xs = [c.n_nodes for c in main]
        ax.fill_between(xs, [c.faithfulness.lo for c in main], [c.faithfulness.hi for c in main],
                        color=POSITIVE_COLOUR, alpha=0.18, lw=0,
                        label=f"{int(round(report.confidence * 100))}% interval (pairs resampled)")
        ax.plot(xs, [c.faithfulness.value for c in main], marker="o", ms=3.5, lw=1.5, color=POSITIVE_COLOUR,
                label=f"faithfulness F(C), by {report.main_selector}")
        ax.plot(xs, [c.completeness.value for c in main], ls="--", lw=1.0, color=NEGATIVE_COLOUR,
                label="completeness F(M \\ C)")
    if fracs:
        ax.plot([c.n_nodes for c in fracs], [c.faithfulness.value for c in fracs], ls="", marker="s", ms=5,
                mfc="none", mec="#444444", label=f"MIB fractions: CPR {interval_text(report.cpr)}, "
                                                  f"CMD {interval_text(report.cmd)}")
    exp = report.exported
    if exp is not None:
        f = exp.faithfulness
        if math.isfinite(f.lo) and math.isfinite(f.hi):
            ax.errorbar([exp.n_nodes], [f.value], yerr=[[f.value - f.lo], [f.hi - f.value]], fmt="none",
                        ecolor="black", elinewidth=1.0, capsize=3, zorder=4)
        ax.plot([exp.n_nodes], [f.value], marker="*", ms=15, ls="", color=METRIC_COLOUR, mec="black",
                zorder=5, label=f"exported circuit: {exp.n_nodes} nodes, F = {interval_text(f)}")
    ax.axhline(FAITHFUL, color=POSITIVE_COLOUR, ls=":", lw=1.0)
    ax.annotate(f"F = {FAITHFUL}", (0.0, FAITHFUL), xycoords=("axes fraction", "data"), xytext=(4, 3),
                textcoords="offset points", ha="left", fontsize=7.5, color=POSITIVE_COLOUR)
    ax.axhline(1.0, color=NEUTRAL_COLOUR, ls="--", lw=0.8)
    ax.axhline(0.0, color=NEUTRAL_COLOUR, ls="-", lw=0.6)
    n_max = max([1] + [c.n_nodes for c in report.circuits])
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    x_max = max(2.0, 1.5 * n_max)
    ax.xaxis.set_major_locator(FixedLocator(_size_ticks(x_max)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v)):,}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(-0.1, x_max)
    ax.set_xlabel(f"circuit size (nodes; the graph has {report.n_graph:,})")
    ax.set_ylabel("faithfulness F(C)")
    sub = f"{report.ablation} ablation, {report.n_pairs} pairs"
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=9.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


__all__ = ["plot_report"]
