"""Faithfulness curves with bootstrap intervals, MIB's CPR / CMD, and one named circuit.

A curve is a list of *requests* for circuits of one scored graph: node thresholds (Marks et al.),
sizes (the top-k nodes by ``|score|``) or fractions of the graph (MIB). Requests that give the same
node set share one evaluation (:class:`~featcirc.evaluate.faithfulness.Ablator` caches per-pair
values per node set). Every distinct circuit gets faithfulness ``F(C)`` and completeness
``F(M \\ C)`` with percentile intervals from one common set of pair resamples
(:mod:`featcirc.evaluate.bootstrap`), so the intervals of areas over the curve are coherent.

The graph for fractions is every node of the scored graph on a path to the metric (the circuit
with no node threshold); its size ``N`` is recorded, and fraction ``k`` asks for the top
``floor(k N)`` nodes, as MIB does. With edges scored among the top ``--max-nodes`` nodes only,
``N`` is about that number: fraction 1 is the largest circuit the run can give, not the whole model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import networkx as nx
import numpy as np
from tqdm.auto import tqdm

from featcirc.circuit import PruneSettings, circuit_nodes, prune
from featcirc.evaluate.bootstrap import (DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Interval,
                                         bootstrap_faithfulness, curve_statistic_interval,
                                         percentile_interval)
from featcirc.evaluate.faithfulness import DEFAULT_THRESHOLDS, CurvePoint, select_circuit
from featcirc.evaluate.metrics import MIB_FRACTIONS, cmd, cpr, curve_area

if TYPE_CHECKING:
    from featcirc.evaluate.faithfulness import Ablator

FAITHFUL = 0.8
"""The faithfulness a circuit must reach to count as faithful in summaries and plots."""

SELECTORS = ("threshold", "size", "fraction", "exported")


@dataclass
class CircuitEval:
    """One distinct circuit: its size, ``F(C)`` and ``F(M \\ C)`` with intervals, and whether its
    completeness is degenerate (ablating it alone gives ``m(∅)`` on every pair)."""

    n_nodes: int
    n_edges: int
    faithfulness: Interval
    completeness: Interval
    completeness_degenerate: bool
    holds_final_site: bool

    def to_json(self) -> dict:
        return dict(n_nodes=self.n_nodes, n_edges=self.n_edges, faithfulness=self.faithfulness.to_json(),
                    completeness=self.completeness.to_json(),
                    completeness_degenerate=self.completeness_degenerate,
                    holds_final_site=self.holds_final_site)


@dataclass
class Request:
    """A requested circuit: ``selector`` in :data:`SELECTORS`, ``value`` (the threshold, size or
    fraction; NaN for the exported circuit), ``k`` the top-k asked for (sizes and fractions), and
    the index of the distinct circuit it gave."""

    selector: str
    value: float
    k: Optional[int]
    circuit: int


@dataclass
class FaithfulnessReport:
    """Everything :func:`evaluate_curves` measured."""

    ablation: str
    n_pairs: int
    m_full: float
    m_empty: float
    n_graph: int
    circuits: list[CircuitEval]
    requests: list[Request]
    fractions: tuple[float, ...]
    cpr: Interval
    cmd: Interval
    area: float
    area_n_max: int
    n_evaluations: int
    n_resamples: int
    confidence: float
    seed: int
    completeness_note: Optional[str] = None
    info: dict = field(default_factory=dict)

    def points(self, selector: str) -> list[tuple[Request, CircuitEval]]:
        """The requests of one selector, in request order, with their circuits."""
        return [(r, self.circuits[r.circuit]) for r in self.requests if r.selector == selector]

    @property
    def main_selector(self) -> str:
        return "size" if any(r.selector == "size" for r in self.requests) else "threshold"

    @property
    def exported(self) -> Optional[CircuitEval]:
        pts = self.points("exported")
        return pts[0][1] if pts else None

    def curve_points(self) -> list[CurvePoint]:
        """The main curve (thresholds, or sizes when given) as :class:`CurvePoint` s."""
        out = []
        for r, c in self.points(self.main_selector):
            out.append(CurvePoint(r.value if r.selector == "threshold" else float("nan"), c.n_nodes,
                                  c.n_edges, c.faithfulness.value, c.completeness.value,
                                  r.k if r.selector == "size" else None))
        return out

    def smallest_faithful(self, level: float = FAITHFUL) -> Optional[CircuitEval]:
        """The smallest evaluated circuit with ``F >= level`` (None if there is none)."""
        ok = [c for c in self.circuits if math.isfinite(c.faithfulness.value) and c.faithfulness.value >= level]
        return min(ok, key=lambda c: (c.n_nodes, -c.faithfulness.value)) if ok else None

    CSV_HEADER = ("selector", "value", "k", "circuit", "n_nodes", "n_edges", "faithfulness", "faithfulness_lo",
                  "faithfulness_hi", "completeness", "completeness_lo", "completeness_hi",
                  "completeness_degenerate")

    def csv_rows(self) -> list[list]:
        """One row per request (:attr:`CSV_HEADER`); requests sharing a circuit share its numbers."""
        rows = []
        for r in self.requests:
            c = self.circuits[r.circuit]
            rows.append([r.selector, r.value, "" if r.k is None else r.k, r.circuit, c.n_nodes, c.n_edges,
                         c.faithfulness.value, c.faithfulness.lo, c.faithfulness.hi, c.completeness.value,
                         c.completeness.lo, c.completeness.hi, int(c.completeness_degenerate)])
        return rows

    def to_json(self) -> dict:
        best = self.smallest_faithful()
        exported = self.exported
        fin = lambda x: float(x) if math.isfinite(x) else None  # noqa: E731
        return dict(
            ablation=self.ablation, n_pairs=self.n_pairs, m_full=fin(self.m_full), m_empty=fin(self.m_empty),
            bootstrap=dict(unit="pair", n_resamples=self.n_resamples, seed=self.seed,
                           confidence=self.confidence, interval="percentile"),
            graph=dict(n_nodes=self.n_graph,
                       definition="nodes of the scored graph on a path to the metric (no node threshold)"),
            cpr=self.cpr.to_json(), cmd=self.cmd.to_json(),
            mib=dict(fractions=list(self.fractions),
                     k=[r.k for r, _ in self.points("fraction")],
                     definition=("MIB (arXiv 2504.13151) CPR = area under F, CMD = area between F and 1, "
                                 "trapezoid rule on a linear axis over the fractions (MIB's evaluation code), "
                                 "divided by the span of the fractions; one |score|-ranked curve for both")),
            area=self.area, area_n_max=self.area_n_max,
            exported=None if exported is None else exported.to_json(),
            smallest_faithful=None if best is None else dict(level=FAITHFUL, **best.to_json()),
            completeness_note=self.completeness_note,
            n_evaluations=self.n_evaluations,
            circuits=[c.to_json() for c in self.circuits],
            requests=[dict(selector=r.selector, value=fin(r.value), k=r.k, circuit=r.circuit)
                      for r in self.requests],
            **self.info,
        )


def graph_for_fractions(G: nx.DiGraph, edge_threshold: float = 0.0) -> nx.DiGraph:
    """The graph MIB's fractions refer to: every scored node on a path to the metric."""
    return prune(G, PruneSettings(edge_threshold=edge_threshold))


def fraction_sizes(fractions: Sequence[float], n_graph: int) -> list[int]:
    """``floor(k * n_graph)`` for each fraction (MIB's ``int(pct * n)``)."""
    bad = [f for f in fractions if not (0.0 < float(f) <= 1.0)]
    if bad:
        raise ValueError(f"fractions must be in (0, 1], got {bad}")
    return [int(math.floor(float(f) * n_graph + 1e-9)) for f in fractions]


def _completeness_note(circuits: list[CircuitEval]) -> Optional[str]:
    nonempty = [c for c in circuits if c.n_nodes > 0]
    bad = [c for c in nonempty if c.completeness_degenerate]
    if not bad:
        return None
    cause = ("they hold the last residual site's vector node at the answer position, through which "
             "every path reaches the metric" if all(c.holds_final_site for c in bad) else
             "they contain a cut of the model between the inputs and the metric")
    sizes = ", ".join(str(c.n_nodes) for c in sorted(bad, key=lambda c: c.n_nodes))
    head = ("completeness F(M \\ C) is degenerate at every circuit size" if len(bad) == len(nonempty) else
            f"completeness F(M \\ C) is degenerate for {len(bad)} of {len(nonempty)} circuits (sizes {sizes})")
    return (f"{head}: ablating the circuit alone already gives m(empty) on every pair ({cause}), so "
            "F(M \\ C) = 0 whatever else the circuit holds and does not compare circuits there; "
            "rely on faithfulness (and CMD) instead")


def evaluate_curves(ab: "Ablator", G: nx.DiGraph, *, thresholds: Optional[Sequence[float]] = None,
                    sizes: Optional[Sequence[int]] = None,
                    fractions: Optional[Sequence[float]] = MIB_FRACTIONS,
                    exported: Optional[nx.DiGraph] = None, edge_threshold: float = 0.0,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    confidence: float = DEFAULT_CONFIDENCE, area_n_max: Optional[int] = None,
                    select: Optional[Callable[[int], nx.DiGraph]] = None,
                    progress: bool = True) -> FaithfulnessReport:
    """Evaluate a graph's circuits: the main curve (``sizes`` if given, else ``thresholds``,
    default :data:`~featcirc.evaluate.faithfulness.DEFAULT_THRESHOLDS`), MIB's ``fractions`` (for
    CPR / CMD; None to skip) and an ``exported`` circuit (e.g. ``circuit.json``'s), each distinct
    circuit once, with bootstrap intervals over pairs. ``select(k)``: the circuit of size ``k`` for the
    ``sizes`` (default: the top-k nodes by ``|score|``; e.g. a learned mask's, :mod:`featcirc.pruning`)."""
    if sizes is not None:
        bad = [k for k in sizes if isinstance(k, bool) or int(k) != k or int(k) < 0]
        if bad or not sizes:
            raise ValueError(f"sizes must be non-negative whole numbers of nodes, got {list(sizes)}")
    if fractions is not None and len(fractions) < 2:
        raise ValueError("MIB's CPR/CMD need at least two fractions")
    if fractions is not None and list(fractions) != sorted(set(float(f) for f in fractions)):
        raise ValueError(f"fractions must increase strictly, got {list(fractions)}")
    H = graph_for_fractions(G, edge_threshold)
    n_graph = len(circuit_nodes(H))
    if fractions is not None and n_graph == 0:
        raise ValueError("the scored graph has no node on a path to the metric, so it has no circuit to "
                         "evaluate; check the edge threshold and that edges were scored")

    keys: dict[frozenset, int] = {}
    graphs: list[tuple[frozenset, int]] = []
    requests: list[Request] = []

    def add(selector: str, value: float, k: Optional[int], C: nx.DiGraph) -> None:
        nodes = frozenset(circuit_nodes(C))
        if nodes not in keys:
            keys[nodes] = len(graphs)
            graphs.append((nodes, C.number_of_edges()))
        requests.append(Request(selector, value, k, keys[nodes]))

    if sizes is not None:
        for k in sizes:
            C = (select(int(k)) if select is not None
                 else select_circuit(G, size=int(k), edge_threshold=edge_threshold))
            add("size", float(k), int(k), C)
    else:
        for th in (thresholds if thresholds is not None else DEFAULT_THRESHOLDS):
            add("threshold", float(th), None, select_circuit(G, threshold=float(th), edge_threshold=edge_threshold))
    frac_list = tuple(float(f) for f in fractions) if fractions is not None else ()
    for f, k in zip(frac_list, fraction_sizes(frac_list, n_graph)):
        add("fraction", f, k, select_circuit(H, size=k, edge_threshold=edge_threshold))
    if exported is not None:
        add("exported", float("nan"), None, exported)

    keep_vals, ablate_vals = [], []
    for nodes, _ in tqdm(graphs, desc=f"faithfulness ({ab.ablation})", disable=not progress, leave=False):
        keep_vals.append(ab.metric_values(nodes))
        ablate_vals.append(ab.completeness_values(nodes))
    f_point, f_reps = bootstrap_faithfulness(np.stack(keep_vals), ab.m_full_values, ab.m_empty_values,
                                             n_resamples=n_resamples, seed=seed)
    c_point, c_reps = bootstrap_faithfulness(np.stack(ablate_vals), ab.m_full_values, ab.m_empty_values,
                                             n_resamples=n_resamples, seed=seed)
    f_lo, f_hi = percentile_interval(f_reps, confidence)
    c_lo, c_hi = percentile_interval(c_reps, confidence)
    circuits = []
    for j, (nodes, n_edges) in enumerate(graphs):
        circuits.append(CircuitEval(
            len(nodes), n_edges, Interval(float(f_point[j]), float(f_lo[j]), float(f_hi[j])),
            Interval(float(c_point[j]), float(c_lo[j]), float(c_hi[j])),
            ab.completeness_is_degenerate(nodes), ab.holds_final_site(nodes)))

    frac_idx = [r.circuit for r in requests if r.selector == "fraction"]
    if frac_idx:
        fn_cpr = lambda f: cpr(frac_list, f)  # noqa: E731
        fn_cmd = lambda f: cmd(frac_list, f)  # noqa: E731
        cpr_iv = curve_statistic_interval(fn_cpr, f_point[frac_idx], f_reps[:, frac_idx], confidence)
        cmd_iv = curve_statistic_interval(fn_cmd, f_point[frac_idx], f_reps[:, frac_idx], confidence)
    else:
        cpr_iv = cmd_iv = Interval(float("nan"), float("nan"), float("nan"))
    main = [r for r in requests if r.selector in ("threshold", "size")]
    n_max = max([area_n_max or 0, n_graph, 1] + [circuits[r.circuit].n_nodes for r in main])
    area = curve_area([CurvePoint(float("nan"), circuits[r.circuit].n_nodes, 0,
                                  circuits[r.circuit].faithfulness.value, float("nan")) for r in main], n_max)
    return FaithfulnessReport(
        ablation=ab.ablation, n_pairs=len(ab.m_full_values), m_full=ab.m_full, m_empty=ab.m_empty,
        n_graph=n_graph, circuits=circuits, requests=requests, fractions=frac_list, cpr=cpr_iv, cmd=cmd_iv,
        area=area, area_n_max=n_max, n_evaluations=ab.n_evaluations, n_resamples=n_resamples,
        confidence=confidence, seed=seed, completeness_note=_completeness_note(circuits))


__all__ = ["FAITHFUL", "CircuitEval", "FaithfulnessReport", "Request", "evaluate_curves", "fraction_sizes",
           "graph_for_fractions"]
