"""Plots: circuit drawings, faithfulness curves, exact-vs-estimate scatters (PNG, written atomically).

Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works headless
and never changes the caller's matplotlib state.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from featcirc.circuit import graph_n_layers, magnitude, node_label
from featcirc.export.style import METRIC_COLOUR, NEGATIVE_COLOUR, NEUTRAL_COLOUR, POSITIVE_COLOUR, sign_colour
from featcirc.evaluate.stats import pearson
from featcirc.io import atomic_path
from featcirc.sites import METRIC

_COLUMN = {"attn": 0, "mlp": 1, "resid": 2, "embed": 2}  # embed is a residual-stream site
_ROW = {"attn": -0.27, "mlp": 0.0, "resid": 0.27, "embed": 0.27}  # forward order inside a layer band
_GROUP_W, _GROUP_GAP = 1.0, 0.3
_MARKER = {"feature": "o", "error": "s", "component": "D"}


def _save(fig: Figure, path: "str | os.PathLike[str]", dpi: int = 110) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def circuit_layout(G: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Node positions for :func:`draw_circuit`: y = layer (embed -1 at the bottom, the metric at
    ``n_layers`` on top), inside a layer band attn below mlp below resid (forward order, so every
    edge points up); x = one column group per site kind (attn | mlp | resid, embed in resid).
    Per-position graphs split each group into one slot per position (left to right) and stack
    the nodes of one (site, position) cell vertically; summed graphs spread a site's nodes across
    its group, largest ``|score|`` first."""
    n_layers = graph_n_layers(G)
    others = [(n, d) for n, d in G.nodes(data=True) if n != METRIC]
    n_pos = 1 + max((int(d.get("position", -1)) for _, d in others), default=-1)
    cells: dict[tuple, list[tuple[str, dict]]] = {}
    for n, d in others:
        pos = int(d.get("position", -1))
        key = (d["site"], pos if n_pos > 0 else -1)
        cells.setdefault(key, []).append((n, d))
    xy: dict[str, tuple[float, float]] = {}
    kind_rank = {"error": 0, "component": 0, "feature": 1}
    for (site, pos), members in cells.items():
        members.sort(key=lambda nd: (kind_rank.get(nd[1]["kind"], 2), -magnitude(nd[1].get("score", 0)), nd[0]))
        kind = site.split(".")[0]
        g0 = _COLUMN[kind] * (_GROUP_W + _GROUP_GAP)
        y0 = int(members[0][1]["layer"]) + _ROW[kind]
        m = len(members)
        if pos >= 0:
            x = g0 + (pos + 0.5) * _GROUP_W / n_pos
            offsets = np.linspace(-0.11, 0.11, m) if m > 1 else [0.0]
            for (n, _), dy in zip(members, offsets):
                xy[n] = (x, y0 + float(dy))
        else:
            for i, (n, _) in enumerate(members):
                dy = 0.08 * ((i % 3) - 1) if m > 8 else 0.0
                xy[n] = (g0 + (i + 0.5) * _GROUP_W / m, y0 + dy)
    if METRIC in G:
        xy[METRIC] = ((3 * _GROUP_W + 2 * _GROUP_GAP) / 2, float(n_layers))
    return xy


def draw_circuit(G: nx.DiGraph, path: "str | os.PathLike[str]", *, title: str = "",
                 max_labels: int = 12) -> Path:
    """Draw a circuit to a PNG.

    Layers run bottom (embed) to top (metric); sites are columns (attn, mlp, resid) with positions
    spread inside a column when the circuit is per-position (:func:`circuit_layout`). Features are
    circles, error nodes squares, component nodes diamonds, the metric a star. Node colour is the
    sign of the score (blue > 0, red < 0), size and opacity grow with ``|score|``; edge colour is
    the sign of the weight, width and opacity grow with ``|weight|``. Every node is labelled when
    there are at most 20, otherwise the ``max_labels`` of largest ``|score|``.
    """
    n_layers = graph_n_layers(G)
    xy = circuit_layout(G)
    others = [(n, d) for n, d in G.nodes(data=True) if n != METRIC]
    n_nodes = len(others)
    smax = max((magnitude(d.get("score", 0)) for _, d in others), default=0.0) or 1.0
    wmax = max((magnitude(d.get("weight", 0)) for _, _, d in G.edges(data=True)), default=0.0) or 1.0
    has_embed = any(d["site"] == "embed" for _, d in others) or "embed" in (G.graph.get("sites") or [])
    y_lo = -1 if has_embed else 0

    fig = Figure(figsize=(11, max(4.5, 0.75 * (n_layers - y_lo + 1) + 1.5)))
    ax = fig.add_subplot(1, 1, 1)

    edges = sorted(G.edges(data=True), key=lambda e: magnitude(e[2].get("weight", 0)))
    if edges:
        segs, cols, widths = [], [], []
        dense = min(1.0, math.sqrt(60.0 / len(edges)))  # fainter edges when there are many
        for u, v, d in edges:
            rel = magnitude(d.get("weight", 0)) / wmax
            segs.append([xy[u], xy[v]])
            cols.append(to_rgba(sign_colour(float(d.get("weight", float("nan")))), (0.12 + 0.6 * rel) * dense))
            widths.append(0.3 + 3.2 * rel)
        ax.add_collection(LineCollection(segs, colors=cols, linewidths=widths, zorder=1))

    scale = min(1.0, math.sqrt(40.0 / max(n_nodes, 1)))
    for kind, marker in _MARKER.items():
        members = [(n, d) for n, d in others if d["kind"] == kind]
        if not members:
            continue
        rels = [magnitude(d.get("score", 0)) / smax for _, d in members]
        ax.scatter([xy[n][0] for n, _ in members], [xy[n][1] for n, _ in members], marker=marker,
                   s=[scale * (30 + 320 * r) for r in rels],
                   c=[to_rgba(sign_colour(float(d.get("score", float("nan")))), 0.3 + 0.7 * r)
                      for (_, d), r in zip(members, rels)],
                   edgecolors="black", linewidths=0.4, zorder=2)
    if METRIC in G:
        ax.scatter([xy[METRIC][0]], [xy[METRIC][1]], marker="*", s=420, c=METRIC_COLOUR,
                   edgecolors="black", linewidths=0.6, zorder=3)
        clean = G.nodes[METRIC].get("score", float("nan"))
        txt = "metric" + (f" = {clean:.3g}" if math.isfinite(float(clean)) else "")
        ax.annotate(txt, xy[METRIC], xytext=(10, 0), textcoords="offset points", fontsize=8, va="center")

    ranked = sorted(others, key=lambda nd: (-magnitude(nd[1].get("score", 0)), nd[0]))
    for n, d in ranked if n_nodes <= 20 else ranked[:max_labels]:
        ax.annotate(node_label(n), xy[n], xytext=(4, 4), textcoords="offset points", fontsize=6.5,
                    color="#222222", zorder=4)

    centres = [c * (_GROUP_W + _GROUP_GAP) + _GROUP_W / 2 for c in range(3)]
    ax.set_xticks(centres, ["attn", "mlp", "resid"])
    for c in range(1, 3):
        ax.axvline(c * (_GROUP_W + _GROUP_GAP) - _GROUP_GAP / 2, color="#dddddd", lw=0.8, zorder=0)
    ys = list(range(y_lo, n_layers + 1))
    ax.set_yticks(ys, ["embed" if y == -1 else ("metric" if y == n_layers else str(y)) for y in ys])
    for y in ys[:-1]:
        ax.axhline(y + 0.5, color="#eeeeee", lw=0.8, zorder=0)
    ax.set_ylim(y_lo - 0.55, n_layers + 0.55)
    ax.set_xlim(-0.1, 3 * _GROUP_W + 2 * _GROUP_GAP + 0.1)
    per_pos = any(int(d.get("position", -1)) >= 0 for _, d in others)
    ax.set_xlabel("site" + (" (token positions left to right within each column)" if per_pos else ""))
    ax.set_ylabel("layer")
    head = f"{title}  " if title else ""
    empty = "  (empty circuit)" if n_nodes == 0 else ""
    ax.set_title(f"{head}({n_nodes} nodes, {G.number_of_edges()} edges){empty}", fontsize=10)
    handles = [Line2D([], [], marker=m, ls="", color="#777777", label=k) for k, m in _MARKER.items()]
    handles += [Line2D([], [], marker="*", ls="", color=METRIC_COLOUR, markersize=10, label="metric"),
                Line2D([], [], color=POSITIVE_COLOUR, lw=2, label="> 0"),
                Line2D([], [], color=NEGATIVE_COLOUR, lw=2, label="< 0")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return _save(fig, path)


def plot_faithfulness(curves: dict[str, Sequence[tuple[int, float]]], path: "str | os.PathLike[str]", *,
                      title: str = "") -> Path:
    """Faithfulness F against circuit size, one line per method (DESIGN §9); log x axis
    (symlog, linear below 1 so an empty circuit still shows), reference lines at F = 0 and 1."""
    if not curves:
        raise ValueError("no faithfulness curves to plot (curves is empty)")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name in sorted(curves):
        pts = sorted((float(n), float(f)) for n, f in curves[name])
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, lw=1.4, label=name)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.axhline(1.0, color=NEUTRAL_COLOUR, ls="--", lw=0.8)
    ax.axhline(0.0, color=NEUTRAL_COLOUR, ls=":", lw=0.8)
    ax.set_xlabel("circuit size (nodes)")
    ax.set_ylabel("faithfulness F(C)")
    ax.set_title(title or "faithfulness", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_scatter(x: Iterable[float], y: Iterable[float], path: "str | os.PathLike[str]", *, xlabel: str,
                 ylabel: str, title: str = "") -> Path:
    """Scatter of estimates against references (e.g. exact patching vs AtP / RelP), with the
    y = x line and Pearson's r over the finite pairs in the title."""
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    r = pearson(xa, ya)
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xa, ya, s=10, alpha=0.6, color=POSITIVE_COLOUR, edgecolors="none")
    if xa.size:
        lo, hi = float(min(xa.min(), ya.min())), float(max(xa.max(), ya.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8, ls="--", label="y = x")
        ax.legend(fontsize=8, loc="upper left")
    ax.axhline(0, color="#cccccc", lw=0.6, zorder=0)
    ax.axvline(0, color="#cccccc", lw=0.6, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    stats = f"r = {r:.3f}, n = {xa.size}" if math.isfinite(r) else f"r = n/a, n = {xa.size}"
    ax.set_title(f"{title}  ({stats})" if title else stats, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


__all__ = ["draw_circuit", "circuit_layout", "plot_faithfulness", "plot_scatter"]
