"""Faithfulness and completeness of circuits (DESIGN §9).

Every node outside the circuit ``C`` is ablated: at each spliced site the stream is re-encoded,
features and errors not in ``C`` take their ablation value, nodes in ``C`` are not ablated: they
keep the value computed from the (modified) stream, as in Marks et al. (holding them at their clean
values instead would make any circuit containing the last residual site trivially faithful), and
later sites see the result. With ``m(M)`` the clean metric and
``m(∅)`` everything ablated::

    F(C) = (m(C) - m(∅)) / (m(M) - m(∅))

Completeness is ``F(M \\ C)``: the circuit ablated and the rest kept (0 when C carries everything).
Ablation values: ``mean`` (mean over the patch prompts, per position), ``zero``, ``resample``
(each pair takes another pair's patch values: the batch rolled by one).

Metrics are means over pairs, so ``F`` is a ratio of means (as in Marks et al.).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import networkx as nx
import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from featcirc.attribution.splice import make_splice
from featcirc.circuit import PruneSettings, circuit_nodes, prune
from featcirc.data import PairBatch, PairDataset
from featcirc.metric import logit_diff_from_resid
from featcirc.sites import METRIC, parse_node_id
from featcirc.attribution.splice import SiteState, Splice

ABLATIONS = ("mean", "zero", "resample")
DEFAULT_THRESHOLDS = tuple(float(x) for x in np.logspace(-4, 0, 15))


@dataclass
class CurvePoint:
    threshold: float
    n_nodes: int
    n_edges: int
    faithfulness: float
    completeness: float


class Ablator:
    """Evaluates the metric of a model whose nodes outside a given set are ablated."""

    def __init__(self, model: HookedTransformer, data: PairDataset, *, level: str = "feature",
                 saes: Optional[Mapping[str, object]] = None, sites: Optional[Iterable[str]] = None,
                 ablation: str = "mean", progress: bool = True) -> None:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; choose one of {ABLATIONS}")
        if data.n_pairs == 0:
            raise ValueError("no pairs to evaluate on: the dataset is empty")
        self.model, self.data, self.ablation, self.progress = model, data, ablation, progress
        self.splice: Splice = make_splice(model, level, saes, sites)
        self.level = level
        self._patch_states = [self._record(b.patch) for b in data.batches]
        self._means = self._mean_values() if ablation == "mean" else None
        self.m_full = self.metric(None)
        self.m_empty = self.metric(set())

    # ---- ablation values -------------------------------------------------------------------
    def _record(self, tokens: torch.Tensor) -> dict[str, SiteState]:
        with torch.no_grad(), self.splice.record() as store:
            self.model(tokens, stop_at_layer=self.model.cfg.n_layers)
        return dict(store)

    def _mean_values(self) -> dict[str, SiteState]:
        """Per-position means over all patch prompts that reach that position."""
        T = self.data.max_len
        out = {}
        for s in self.splice.site_names:
            sums_f = sums_v = None
            count = torch.zeros(T)
            for st in self._patch_states:
                B, t = st[s].vector.shape[:2]
                count[:t] += B
                v = torch.zeros((T,) + st[s].vector.shape[2:])
                v[:t] = st[s].vector.sum(0)
                sums_v = v if sums_v is None else sums_v + v
                if st[s].features is not None:
                    f = torch.zeros((T,) + st[s].features.shape[2:])
                    f[:t] = st[s].features.sum(0)
                    sums_f = f if sums_f is None else sums_f + f
            c = count.clamp(min=1)
            out[s] = SiteState(None if sums_f is None else sums_f / c[:, None], sums_v / c[:, None])
        return out

    def _ablation_for(self, batch_idx: int, site: str, B: int, t: int) -> SiteState:
        st = self._patch_states[batch_idx][site]
        if self.ablation == "mean":
            m = self._means[site]
            f = None if m.features is None else m.features[:t].expand(B, -1, -1)
            return SiteState(f, m.vector[:t].expand(B, -1, -1))
        if self.ablation == "zero":
            return SiteState(None if st.features is None else torch.zeros_like(st.features),
                             torch.zeros_like(st.vector))
        roll = lambda x: None if x is None else torch.roll(x, shifts=1, dims=0)  # noqa: E731
        return SiteState(roll(st.features), roll(st.vector))

    # ---- masks -----------------------------------------------------------------------------
    def masks(self, keep: Optional[set[str]], T: int) -> Optional[dict[str, SiteState]]:
        """Boolean keep-masks per site (``features [T, F]``, ``vector [T]``); None keeps all."""
        if keep is None:
            return None
        out = {}
        for s in self.splice.site_names:
            F = self.splice.n_features(s)
            out[s] = SiteState(torch.zeros(T, F, dtype=torch.bool) if F else None,
                               torch.zeros(T, dtype=torch.bool))
        for nid in keep:
            if nid == METRIC:
                continue
            ref = parse_node_id(nid)
            s = ref.site.name
            if s not in out:
                raise ValueError(f"node {nid} is at a site without nodes in this evaluation "
                                 f"(sites: {', '.join(self.splice.site_names)})")
            pos = slice(None) if ref.position is None else ref.position
            if ref.position is not None and ref.position >= T:
                continue
            if ref.kind == "feature":
                if out[s].features is None:
                    raise ValueError(f"node {nid} is a feature but {s} has no SAE here")
                out[s].features[pos, ref.feature] = True
            else:
                out[s].vector[pos] = True
        return out

    # ---- the metric ------------------------------------------------------------------------
    def metric(self, keep: Optional[set[str]]) -> float:
        """Mean metric with every node not in ``keep`` ablated (``keep=None``: nothing ablated)."""
        total = 0.0
        for i, batch in enumerate(self.data.batches):
            total += float(self._batch_metric(i, batch, keep).sum())
        return total / self.data.n_pairs

    def _batch_metric(self, i: int, batch: PairBatch, keep: Optional[set[str]]) -> torch.Tensor:
        masks = self.masks(keep, batch.clean.shape[1])
        return self._run_with_masks(i, batch, masks)

    # ---- scores ----------------------------------------------------------------------------
    def _ratio(self, m: float) -> float:
        denom = self.m_full - self.m_empty
        return (m - self.m_empty) / denom if denom != 0 else float("nan")

    def faithfulness(self, nodes: set[str]) -> float:
        return self._ratio(self.metric(set(nodes)))

    def completeness(self, nodes: set[str]) -> float:
        """``F(M \\ C)``: ablate exactly the circuit's nodes, keep everything else."""
        total = 0.0
        for i, batch in enumerate(self.data.batches):
            total += float(self._batch_metric_complement(i, batch, set(nodes)).sum())
        return self._ratio(total / self.data.n_pairs)

    def _batch_metric_complement(self, i: int, batch: PairBatch, ablate: set[str]) -> torch.Tensor:
        B, t = batch.clean.shape
        masks = self.masks(ablate, t)
        for s, mk in masks.items():
            masks[s] = SiteState(None if mk.features is None else ~mk.features, ~mk.vector)
        return self._run_with_masks(i, batch, masks)

    def _run_with_masks(self, i: int, batch: PairBatch,
                        masks: Optional[dict[str, SiteState]]) -> torch.Tensor:
        """The ``[B]`` metric with nodes where ``masks`` is False ablated (None: no hooks)."""
        model = self.model
        B, t = batch.clean.shape
        hooks = {}
        for s in (self.splice.site_names if masks is not None else []):
            abl = self._ablation_for(i, s, B, t)
            mk = masks[s]

            def fn(x: torch.Tensor, s=s, abl=abl, mk=mk) -> torch.Tensor:
                st = self.splice.split(s, x)
                v = torch.where(mk.vector[:, None], st.vector, abl.vector)
                if st.features is None:
                    return v
                f = torch.where(mk.features, st.features, abl.features)
                return self.splice.decode(s, f) + v

            hooks[s] = fn
        with torch.no_grad(), self.splice.hooks(hooks):
            resid = model(batch.clean, stop_at_layer=model.cfg.n_layers)
            return logit_diff_from_resid(model, resid, batch.clean_answer, batch.patch_answer)

    def curve(self, G: nx.DiGraph, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *,
              edge_threshold: float = 0.0) -> list[CurvePoint]:
        """Faithfulness and completeness of the circuit pruned at each node threshold."""
        points = []
        for th in tqdm(thresholds, desc="faithfulness", disable=not self.progress, leave=False):
            C = prune(G, PruneSettings(node_threshold=float(th), edge_threshold=edge_threshold))
            nodes = circuit_nodes(C)
            points.append(CurvePoint(float(th), len(nodes), C.number_of_edges(),
                                     self.faithfulness(nodes), self.completeness(nodes)))
        return points


def curve_area(points: Sequence[CurvePoint], n_max: int, grid: int = 64) -> float:
    """Area under faithfulness vs log10(#nodes), normalised to [0, 1] over ``1..n_max`` nodes.

    At each grid size ``n`` the curve takes the faithfulness of the largest circuit with at most
    ``n`` nodes (0 if none), clipped to [0, 1]; the area is the mean over a log-spaced grid, so
    curves of different methods are compared on the same axis.
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
