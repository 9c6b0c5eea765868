"""Plots: circuit drawings, faithfulness curves, exact-vs-estimate scatters (PNG, written atomically).

A circuit drawing's title carries the exported circuit's faithfulness ``F`` under each ablation
measured (each value with its interval and ablation named; split, pairs, node count) and its star the example prompt's own metric and answers beside the mean
over the pairs (labelled as a mean).

Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works headless
and never changes the caller's matplotlib state.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import networkx as nx
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, PathPatch
from matplotlib.path import Path as MplPath

from featcirc.circuit import graph_n_layers, is_scored, magnitude
from featcirc.export.style import (METRIC_COLOUR, NEGATIVE_COLOUR, NEUTRAL_COLOUR, POSITIVE_COLOUR, SIGN_LEGEND,
                                   SITE_COLOURS, count, example_info, faithfulness_caption, faithfulness_info,
                                   metric_caption, sign_colour)
from featcirc.evaluate.stats import pearson
from featcirc.io import atomic_path
from featcirc.sites import METRIC, stream_index

_MARKER = {"feature": "o", "error": "s", "component": "D"}
_KIND_NAME = {"feature": "SAE feature", "error": "SAE error node", "component": "component (whole site)"}
_TC_ROWS = "tc rows: transcoder, MLP input \u2192 MLP output"


def _kind_names(dictionary_kinds: "set[str]") -> dict[str, str]:
    """The legend's names of the node kinds, from the site kinds of the feature and error nodes: with
    transcoder sites (``tc.L``) among them, "transcoder feature" (every one a transcoder's) or "SAE or
    transcoder feature"."""
    if "tc" not in dictionary_kinds:
        return dict(_KIND_NAME)
    what = "transcoder" if dictionary_kinds == {"tc"} else "SAE or transcoder"
    return {**_KIND_NAME, "feature": f"{what} feature", "error": f"{what} error node"}
_METRIC_CHAR_PT = 4.8  # width of a character of the star's 7.5 pt bold label, with some slack


def _save(fig: Figure, path: "str | os.PathLike[str]", dpi: int = 110) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def token_text(token: str) -> str:
    """A token as a readable axis label: newlines and tabs shown as arrows, an all-space token as ``␣``."""
    shown = token.replace("\n", "\u21b5").replace("\t", "\u21e5")
    return shown.replace(" ", "\u2423") if not token.strip() else shown


@dataclass
class CircuitLayout:
    """Where :func:`draw_circuit` puts things, in data units.

    ``xy``: node -> (x, y). ``columns``: one ``(x_lo, x_hi)`` per token position (a single column
    when positions are summed); ``rows``: site -> ``(y_lo, y_hi)``, sites in forward order from
    the bottom, ``metric`` on top; ``slot``: the horizontal distance between nodes of one cell.
    """

    xy: dict[str, tuple[float, float]]
    columns: list[tuple[float, float]]
    rows: dict[str, tuple[float, float]]
    per_position: bool
    slot: float = 1.0


def circuit_layout(G: nx.DiGraph, *, max_per_line: int = 10, n_positions: Optional[int] = None,
                   metric_height: float = 1.0) -> CircuitLayout:
    """Lay a circuit out by site (rows) and token position (columns).

    Rows: one per site in forward order (embed, attn.0, mlp.0, resid.0, attn.1, ...; the metric
    on top), so every edge points up; the sites are ``G.graph["sites"]`` plus any site of a node.
    Columns: one per token position, each as wide as its fullest (site, position) cell needs: the
    nodes of a cell sit side by side (error / component node first, then features by ``|score|``),
    wrapping into stacked lines after ``max_per_line``; a row is as tall as its most wrapped cell.
    The metric sits in the last column, in a row ``metric_height`` units tall (a site row with one
    line of nodes is 1). ``n_positions`` (e.g. the prompt's token count) adds empty columns after
    the last position that holds a node.
    """
    n_layers = graph_n_layers(G)
    others = [(n, d) for n, d in G.nodes(data=True) if n != METRIC]
    per_position = any(int(d.get("position", -1)) >= 0 for _, d in others)
    n_cols = 1
    if per_position:
        n_cols = max(1 + max(int(d.get("position", -1)) for _, d in others), int(n_positions or 0))
    sites = {str(s) for s in (G.graph.get("sites") or [])} | {str(d["site"]) for _, d in others}
    order = sorted(sites, key=lambda s: stream_index(s, n_layers)) + [METRIC]

    cells: dict[tuple[str, int], list[tuple[str, dict]]] = {}
    for n, d in others:
        col = max(int(d.get("position", -1)), 0) if per_position else 0
        cells.setdefault((str(d["site"]), col), []).append((n, d))
    per_line = [1] * n_cols
    for (site, col), members in cells.items():
        members.sort(key=lambda nd: (nd[1]["kind"] == "feature", -magnitude(nd[1].get("score")), nd[0]))
        per_line[col] = max(per_line[col], min(max_per_line, len(members)))

    columns, x = [], 0.0
    for m in per_line:
        w = max(1.6, m + 0.6)
        columns.append((x, x + w))
        x += w
    lines = {s: 1 for s in order}
    for (site, col), members in cells.items():
        lines[site] = max(lines[site], math.ceil(len(members) / per_line[col]))
    rows, y = {}, 0.0
    for s in order:
        h = metric_height if s == METRIC else 1.0 + 0.62 * (lines[s] - 1)
        rows[s] = (y, y + h)
        y += h

    xy: dict[str, tuple[float, float]] = {}
    for (site, col), members in cells.items():
        m = per_line[col]
        n_lines = math.ceil(len(members) / m)
        x_mid = sum(columns[col]) / 2
        y_mid = sum(rows[site]) / 2
        for j, (n, _) in enumerate(members):
            line, idx = divmod(j, m)
            in_line = min(m, len(members) - line * m)
            xy[n] = (x_mid + (idx - (in_line - 1) / 2), y_mid + 0.62 * ((n_lines - 1) / 2 - line))
    if METRIC in G:
        xy[METRIC] = (sum(columns[-1]) / 2, sum(rows[METRIC]) / 2)
    return CircuitLayout(xy=xy, columns=columns, rows=rows, per_position=per_position)


def _short_label(n: str, d: dict) -> str:
    if d.get("kind") == "feature":
        return f"f{int(d['feature'])}"
    if d.get("kind") == "error":
        return "err"
    return str(d.get("site", n))


def _place_labels(ax, fig: Figure, candidates: Sequence[tuple[str, tuple[float, float], float]],
                  obstacles: Sequence[tuple[tuple[float, float], float]], *, fontsize: float,
                  max_labels: int, avoid: Sequence = ()) -> list:
    """Greedy label placement: for each ``(text, xy, radius_pt)`` in order, try below / above /
    right / left of the node and keep the first spot that overlaps no placed label, no node
    marker (``obstacles``: centre and radius in points) and no text of ``avoid``; a label that
    fits nowhere is left out."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    to_px = ax.transData.transform
    pt = fig.dpi / 72.0
    boxes = []
    for artist in avoid:
        bb = artist.get_window_extent(renderer)
        boxes.append((bb.x0, bb.y0, bb.x1, bb.y1))
    for (cx, cy), r in obstacles:
        px, py = to_px((cx, cy))
        boxes.append((px - r * pt, py - r * pt, px + r * pt, py + r * pt))
    placed = []
    for text, (x, y), r in candidates:
        if len(placed) >= max_labels:
            break
        for dx, dy, ha, va in ((0, -(r + 1.5), "center", "top"), (0, r + 1.5, "center", "bottom"),
                               (r + 2, 0, "left", "center"), (-(r + 2), 0, "right", "center")):
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, color="#1d1d1f", zorder=5,
                            path_effects=[patheffects.withStroke(linewidth=2.2, foreground="white")])
            bb = t.get_window_extent(renderer)
            own = to_px((x, y))
            hit = any(not (bb.x1 <= b[0] or bb.x0 >= b[2] or bb.y1 <= b[1] or bb.y0 >= b[3])
                      for b in boxes if not (abs((b[0] + b[2]) / 2 - own[0]) < 1e-6
                                             and abs((b[1] + b[3]) / 2 - own[1]) < 1e-6))
            if not hit:
                t.set_gid("node-label")
                boxes.append((bb.x0, bb.y0, bb.x1, bb.y1))
                placed.append(t)
                break
            t.remove()
    return placed


def circuit_figure(G: nx.DiGraph, *, title: str = "", tokens: Optional[Sequence[str]] = None,
                   max_edges: int = 150, max_labels: int = 100, example: Optional[Mapping] = None,
                   faithfulness: Optional[Mapping] = None) -> Figure:
    """The figure :func:`draw_circuit` saves (see there); node labels carry ``gid="node-label"``,
    the metric's label ``gid="metric-label"``."""
    if max_edges < 0 or max_labels < 0:
        raise ValueError(f"max_edges and max_labels must be >= 0, got {max_edges} and {max_labels}")
    ex = example_info(example)
    faith = faithfulness_info(faithfulness)
    others = [(n, d) for n, d in G.nodes(data=True) if n != METRIC]
    per_position = any(int(d.get("position", -1)) >= 0 for _, d in others)
    if tokens is not None:
        tokens = [str(t) for t in tokens]
        n_pos = 1 + max((int(d.get("position", -1)) for _, d in others), default=-1)
        if per_position and len(tokens) < n_pos:
            raise ValueError(f"tokens has {len(tokens)} entries but node positions go up to {n_pos - 1}; "
                             "pass the token strings of the prompt the positions index into")
    mean = G.nodes[METRIC].get("score", float("nan")) if METRIC in G else float("nan")
    n_pairs = (ex or {}).get("n_pairs_mean") or count(G.graph.get("n_pairs"))
    caption = metric_caption(ex, mean if is_scored(mean) else None, n_pairs)
    n_positions = len(tokens) if (tokens is not None and per_position) else None
    L = circuit_layout(G, n_positions=n_positions, metric_height=1.0 + 0.45 * (len(caption) - 1))
    width_units = L.columns[-1][1]
    inch = 0.36
    fig_w = min(22.0, max(7.0, width_units * inch + 1.2))
    # the star's label sits left of the star inside the axes (0.66 of the width): where it would not
    # fit, the patch prompt's m goes on a line of its own and the figure widens (to 22 in at most)
    star_frac = L.xy[METRIC][0] / width_units if METRIC in L.xy else 1.0

    def caption_inches(lines: list[str]) -> float:
        return (max(len(t) for t in lines) * _METRIC_CHAR_PT + 16) / 72

    if caption_inches(caption) > star_frac * 0.66 * fig_w:
        caption = metric_caption(ex, mean if is_scored(mean) else None, n_pairs, narrow=True)
        fig_w = min(22.0, max(fig_w, caption_inches(caption) / (star_frac * 0.66)))
        L = circuit_layout(G, n_positions=n_positions, metric_height=1.0 + 0.45 * (len(caption) - 1))
    xy = L.xy
    height_units = L.rows[METRIC][1]
    fig_h = min(30.0, max(4.0, height_units * 0.34 + 1.3))
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.09, 0.11, 0.66, 0.80))
    ax.set_xlim(0, width_units)
    ax.set_ylim(0, height_units)

    # row bands and column separators
    for site, (y0, y1) in L.rows.items():
        kind = "metric" if site == METRIC else site.split(".")[0]
        ax.axhspan(y0, y1, color=SITE_COLOURS[kind][0], zorder=0, lw=0)
        if kind in ("resid", "embed", "metric"):
            ax.axhline(y0, color="#b9bcc8", lw=0.7, zorder=0.5)
    for x0, _ in L.columns[1:]:
        ax.axvline(x0, color="white", lw=1.6, zorder=0.6)
    ax.set_yticks([sum(r) / 2 for r in L.rows.values()], list(L.rows))
    for lab, site in zip(ax.get_yticklabels(), L.rows):
        lab.set_color(SITE_COLOURS["metric" if site == METRIC else site.split(".")[0]][1])
        lab.set_fontsize(8)
    centres = [(a + b) / 2 for a, b in L.columns]
    if L.per_position:
        names = [token_text(tokens[c]) if tokens is not None and c < len(tokens) else f"@{c}"
                 for c in range(len(L.columns))]
        longest = max(len(t) for t in names)
        narrowest = min(b - a for a, b in L.columns) * fig_w / width_units * 72  # points
        rotate = longest * 5.5 > narrowest
        ax.set_xticks(centres, [f"{t}\n{c}" if not rotate else f"{t} ({c})" for c, t in enumerate(names)],
                      rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8.5,
                      family="monospace")
        info = G.graph.get("info") if isinstance(G.graph.get("info"), dict) else {}
        aligned = (info.get("align") or {}).get("mode") in ("role", "end")  # docs/design.md §14
        ax.set_xlabel(("slot: [role or offset] and the example prompt's token there" if aligned else
                       "token position (the example prompt)") if tokens is not None else
                      ("slot" if aligned else "token position"), fontsize=9)
    else:
        ax.set_xticks(centres, ["all positions (summed)"], fontsize=8.5)
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)

    # edges: the strongest max_edges, weakest drawn first
    edges = sorted(G.edges(data=True), key=lambda e: (-magnitude(e[2].get("weight")), e[0], e[1]))
    n_edges = len(edges)
    shown = edges[:max_edges][::-1]
    if shown:
        wmax = magnitude(shown[-1][2].get("weight")) or 1.0
        patches, cols, widths = [], [], []
        for u, v, d in shown:
            (x0, y0), (x1, y1) = xy[u], xy[v]
            ym = (y0 + y1) / 2
            patches.append(PathPatch(MplPath([(x0, y0), (x0, ym), (x1, ym), (x1, y1)],
                                             [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4])))
            rel = magnitude(d.get("weight")) / wmax
            cols.append(to_rgba(sign_colour(float(d.get("weight", float("nan")))), 0.15 + 0.7 * math.sqrt(rel)))
            widths.append(0.4 + 3.6 * rel)
        ax.add_collection(PatchCollection(patches, facecolors="none", edgecolors=cols, linewidths=widths, zorder=1))

    # nodes: size and opacity grow with |score|
    smax = max((magnitude(d.get("score")) for _, d in others), default=0.0) or 1.0
    radius_pt: dict[str, float] = {}
    for kind, marker in _MARKER.items():
        members = [(n, d) for n, d in others if d["kind"] == kind]
        if not members:
            continue
        rels = [magnitude(d.get("score")) / smax for _, d in members]
        sizes = [(3.0 + 4.5 * math.sqrt(r)) ** 2 for r in rels]
        for (n, _), s in zip(members, sizes):
            radius_pt[n] = math.sqrt(s) / 2
        ax.scatter([xy[n][0] for n, _ in members], [xy[n][1] for n, _ in members], marker=marker, s=sizes,
                   c=[to_rgba(sign_colour(float(d.get("score", float("nan")))), 0.35 + 0.65 * r)
                      for (_, d), r in zip(members, rels)],
                   edgecolors="black", linewidths=1.3 if kind == "error" else 0.5, zorder=3)
    if METRIC in G:
        ax.scatter([xy[METRIC][0]], [xy[METRIC][1]], marker="*", s=260, c=METRIC_COLOUR,
                   edgecolors="#6b4d00", linewidths=0.6, zorder=3)
        metric_label = ax.annotate("\n".join(caption), xy[METRIC], xytext=(-13, 0), textcoords="offset points",
                                   fontsize=7.5, va="center", ha="right", fontweight="bold", zorder=5,
                                   # left of the star: it sits in the last column
                                   path_effects=[patheffects.withStroke(linewidth=2.2, foreground="white")])
        metric_label.set_gid("metric-label")
        radius_pt[METRIC] = 9.0

    # labels: the nodes of largest |score| first, where they fit
    ranked = sorted(others, key=lambda nd: (-magnitude(nd[1].get("score")), nd[0]))
    labels = _place_labels(ax, fig, [(_short_label(n, d), xy[n], radius_pt[n]) for n, d in ranked],
                           [(xy[n], r) for n, r in radius_pt.items()], fontsize=6.5, max_labels=max_labels,
                           avoid=[metric_label] if METRIC in G else ())

    head = f"{title}\n" if title else ""
    if faith is not None:  # wrapped to the figure's width (about 5.8 pt a character at 10 pt)
        head += textwrap.fill(faithfulness_caption(faith, n_drawn=len(others)), break_on_hyphens=False,
                              width=max(60, int(fig_w * 0.9 * 72 / 5.8))) + "\n"
    what = (f"{len(others)} node{'s' * (len(others) != 1)}, {n_edges} edge{'s' * (n_edges != 1)}" + (f"; drawn: the {len(shown)} strongest edges by |weight|"
                                                       if len(shown) < n_edges else "")
            + (f"; labelled: {len(labels)} of the largest |score|" if 0 < len(labels) < len(others) else "")
            + ("  (empty circuit)" if not others else ""))
    ax.set_title(head + what, fontsize=10, loc="left")
    handles = [Line2D([], [], color=POSITIVE_COLOUR, lw=2.5, label=SIGN_LEGEND[0]),
               Line2D([], [], color=NEGATIVE_COLOUR, lw=2.5, label=SIGN_LEGEND[1])]
    kinds = {site.split(".")[0] for site in L.rows if site != METRIC}
    names = _kind_names({str(d["site"]).split(".")[0] for _, d in others if d["kind"] in ("feature", "error")})
    handles += [Line2D([], [], marker=m, ls="", color="#999999", markeredgecolor="black",
                       markeredgewidth=1.3 if k == "error" else 0.5, label=names[k]) for k, m in _MARKER.items()]
    if "tc" in kinds:  # the transcoder's rows: their own colour, named (mlp.L's place in the block)
        handles += [Patch(facecolor=SITE_COLOURS["tc"][0], edgecolor=SITE_COLOURS["tc"][1], lw=0.8,
                          label=_TC_ROWS)]
    handles += [Line2D([], [], marker="*", ls="", color=METRIC_COLOUR, markersize=10,
                       label="metric: logit(clean answer) \u2212 logit(patch answer)")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False,
              title="size, opacity: |score|; edge width: |weight|", title_fontsize=7.5, alignment="left")
    return fig


def draw_circuit(G: nx.DiGraph, path: "str | os.PathLike[str]", *, title: str = "",
                 tokens: Optional[Sequence[str]] = None, max_edges: int = 150, max_labels: int = 100,
                 example: Optional[Mapping] = None, faithfulness: Optional[Mapping] = None) -> Path:
    """Draw a circuit to a PNG (atomically).

    Rows are sites in forward order (embed at the bottom, the metric on top, attn / mlp / resid of
    a layer in coloured bands; a transcoder's ``tc.L`` row in mlp.L's place, in its own colour, named in
    the legend); columns are token positions labelled with ``tokens`` (the prompt
    the positions index into; ``@p`` without them). Features are circles, error nodes squares
    with a heavy outline, component nodes diamonds, the metric a star; colour is the sign (blue:
    supports the clean answer, score > 0; red: opposes it), size and opacity grow with
    ``|score|``. Only the ``max_edges`` strongest edges by ``|weight|`` are drawn (the title says
    how many of how many), coloured by sign, width by ``|weight|``. Up to ``max_labels`` nodes
    of largest ``|score|`` get a label, each only where it overlaps no other label or node.
    ``title`` is shown as given: pass no absolute paths.

    ``example`` (summary.json's ``example``): the star's label gives the example prompt's own
    ``m`` and answers, then the mean over the pairs (called a mean; without ``example`` only the
    mean). ``faithfulness`` (summary.json's ``faithfulness``: ablation -> record, or an older run's
    single record): the title gives ``F`` under each ablation with its interval and the ablation
    named, the split and pairs, and the node count it was measured for.
    """
    return _save(circuit_figure(G, title=title, tokens=tokens, max_edges=max_edges, max_labels=max_labels,
                                example=example, faithfulness=faithfulness), path)


def plot_faithfulness(curves: dict[str, Sequence[tuple[int, float]]], path: "str | os.PathLike[str]", *,
                      title: str = "") -> Path:
    """Faithfulness F against circuit size, one line per method (docs/design.md §9); log x axis
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


__all__ = ["draw_circuit", "circuit_figure", "circuit_layout", "CircuitLayout", "token_text", "SITE_COLOURS",
           "SIGN_LEGEND", "plot_faithfulness", "plot_scatter"]
