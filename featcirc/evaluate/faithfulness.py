"""Faithfulness and completeness of circuits (docs/design.md §9).

Every node outside the circuit ``C`` is ablated: at each spliced site the stream is re-encoded,
features and errors not in ``C`` take their ablation value, nodes in ``C`` are not ablated: they
keep the value computed from the (modified) stream, as in Marks et al. (holding them at their clean
values instead would make any circuit containing the last residual site trivially faithful), and
later sites see the result. With ``m(M)`` the clean metric and ``m(∅)`` everything ablated::

    F(C) = (m(C) - m(∅)) / (m(M) - m(∅))

Completeness is Marks et al.'s ``F(M \\ C)``: the circuit ablated and the rest kept (0 when C
carries everything). It is *degenerate* when ablating C alone already gives ``m(∅)`` on every pair
(C contains a cut of the model, e.g. the whole last residual site at the answer position): then it
is 0 whatever else C holds and says nothing about the circuit; :meth:`Ablator.completeness_is_degenerate`
detects it.

Ablation values: ``mean`` (mean over the patch prompts, per position), ``zero``, ``resample``
(each pair takes another pair's patch values: the batch rolled by one) and ``patch`` (each pair
takes its own patch prompt's values: the nodes outside C see the counterfactual, as in activation
patching and MIB's "patching" intervention; then ``m(∅)`` is the patch run's metric). Under
``patch`` ablation nodes before the first token where clean and patch differ keep their values
(they are identical in both runs), so a circuit need not contain them.

Metrics are means over pairs, so ``F`` is a ratio of means (as in Marks et al.). The per-pair
metric values of each distinct circuit are computed once and cached (:meth:`Ablator.metric_values`),
for bootstrap intervals over pairs (:mod:`featcirc.evaluate.bootstrap`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Optional, Sequence

import networkx as nx
import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from featcirc.attribution.splice import SiteState, Splice, make_splice
from featcirc.circuit import PruneSettings, circuit_nodes, prune
from featcirc.data import PairBatch, PairDataset, PromptPair
from featcirc.evaluate import ABLATIONS
from featcirc.evaluate.metrics import curve_area
from featcirc.metric import logit_diff_from_resid
from featcirc.sites import METRIC, Site, parse_node_id

DEFAULT_THRESHOLDS = tuple(float(x) for x in np.logspace(-4, 0, 15))

NodeSet = frozenset


@dataclass
class CurvePoint:
    """One circuit of a curve: chosen by node ``threshold`` (``size`` None) or by ``size`` (top-k,
    ``threshold`` NaN); ``n_nodes`` excludes the metric node."""

    threshold: float
    n_nodes: int
    n_edges: int
    faithfulness: float
    completeness: float
    size: Optional[int] = None


def select_circuit(G: nx.DiGraph, *, threshold: Optional[float] = None, size: Optional[int] = None,
                   edge_threshold: float = 0.0) -> nx.DiGraph:
    """The circuit of ``G`` at a node threshold or of a size (top-k nodes by |score|), pruned as
    :func:`featcirc.circuit.prune` does (dead ends dropped, so it can be smaller than ``size``)."""
    if (threshold is None) == (size is None):
        raise ValueError("give exactly one of threshold= or size=")
    if size is not None:
        return prune(G, PruneSettings(top_k=int(size), edge_threshold=edge_threshold))
    return prune(G, PruneSettings(node_threshold=float(threshold), edge_threshold=edge_threshold))


class Ablator:
    """Evaluates the metric of a model whose nodes outside a given set are ablated.

    ``metric_values(keep)`` is the ``[n_pairs]`` per-pair metric (pairs in :attr:`pairs` order) and is
    cached per distinct node set, as is ``completeness_values``; :attr:`n_evaluations` counts the
    sweeps over the data actually run.
    """

    def __init__(self, model: HookedTransformer, data: PairDataset, *, level: str = "feature",
                 saes: Optional[Mapping[str, object]] = None, sites: Optional[Iterable[str]] = None,
                 ablation: str = "mean", progress: bool = True, alignment=None) -> None:
        from featcirc.attribution.passes import check_arguments
        from featcirc.data.align import Alignment, align

        check_arguments("Ablator", model, data, saes)  # TypeError naming what each argument must be
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
        if data.n_pairs == 0:
            raise ValueError("no pairs to evaluate on: the dataset is empty")
        if alignment is not None and not isinstance(alignment, Alignment):
            raise TypeError(f"Ablator(): alignment must be a featcirc.data.align.Alignment, got {type(alignment).__name__}")
        # node positions are slots of the alignment the circuit was scored with (docs/design.md §14)
        self.alignment = alignment if alignment is not None and alignment.mode not in ("start", "sum") else None
        if self.alignment is not None:
            self.alignment = self.alignment.extended(data)
            data = align(data, self.alignment)
        self.model, self.data, self.ablation, self.progress = model, data, ablation, progress
        self.splice: Splice = make_splice(model, level, saes, sites)
        self.level = level
        self.n_evaluations = 0
        self._keep_cache: dict[Optional[NodeSet], np.ndarray] = {}
        self._ablate_cache: dict[NodeSet, np.ndarray] = {}
        # only patch and resample need every pair's patch-run nodes; mean needs their means, zero nothing
        self._patch_states = ([self._record(b.patch) for b in data.batches] if ablation in ("patch", "resample")
                              else None)
        self._means = self._mean_values() if ablation == "mean" else None
        self.m_full_values = self.metric_values(None)
        self.m_empty_values = self.metric_values(set())

    @property
    def device(self) -> torch.device:
        """Where the model's activations (and so every mask) live."""
        return next(self.model.parameters()).device

    @property
    def pairs(self) -> list[PromptPair]:
        """The pairs, in the order of every per-pair array."""
        return [p for b in self.data.batches for p in b.pairs]

    @property
    def m_full(self) -> float:
        """``m(M)``: the mean clean metric, nothing ablated."""
        return float(self.m_full_values.mean())

    @property
    def m_empty(self) -> float:
        """``m(∅)``: the mean metric with every node ablated."""
        return float(self.m_empty_values.mean())

    # ---- ablation values -------------------------------------------------------------------
    def _record(self, tokens: torch.Tensor) -> dict[str, SiteState]:
        with torch.no_grad(), self.splice.record() as store:
            self.model(tokens, stop_at_layer=self.model.cfg.n_layers)
        return dict(store)

    def _patch_runs(self):
        """Every batch's patch-run nodes, kept or recorded one batch at a time."""
        if self._patch_states is not None:
            yield from self._patch_states
            return
        for b in self.data.batches:
            yield self._record(b.patch)

    def _mean_values(self) -> dict[str, SiteState]:
        """Per-position means over all patch prompts that reach that position (one batch in memory)."""
        T = self.data.max_len if self.alignment is None else self.alignment.n_slots
        sums: dict[str, list] = {s: [None, None] for s in self.splice.site_names}
        dtypes: dict[str, torch.dtype] = {}
        count = torch.zeros(T)
        for st, b in zip(self._patch_runs(), self.data.batches):
            t = next(iter(st.values())).vector.shape[1]
            index = self._index(b)
            where = torch.arange(t) if index is None else index
            count[where] += next(iter(st.values())).vector.shape[0]
            for s in self.splice.site_names:
                for k, x in enumerate((st[s].features, st[s].vector)):
                    if x is None:
                        continue
                    padded = torch.zeros((T,) + x.shape[2:])  # float32 sums, whatever the model's dtype
                    padded[where] = x.sum(0).cpu().float()
                    sums[s][k] = padded if sums[s][k] is None else sums[s][k] + padded
                    dtypes[s] = x.dtype
        c = count.clamp(min=1)

        def mean(total: torch.Tensor, site: str) -> torch.Tensor:  # in the site's dtype, where the streams are
            return (total / c[:, None]).to(device=self.device, dtype=dtypes[site])

        return {s: SiteState(None if f is None else mean(f, s), mean(v, s)) for s, (f, v) in sums.items()}

    def _ablation_for(self, batch_idx: int, site: str, B: int, t: int) -> Optional[SiteState]:
        """The values ablated nodes take at ``site`` for batch ``batch_idx`` (None: zero)."""
        if self.ablation == "zero":
            return None
        if self.ablation == "mean":
            m = self._means[site]
            index = self._index(self.data.batches[batch_idx])
            where = slice(None, t) if index is None else index
            f = None if m.features is None else m.features[where].expand(B, -1, -1)
            return SiteState(f, m.vector[where].expand(B, -1, -1))
        st = self._patch_states[batch_idx][site]
        if self.ablation == "patch":
            return st
        roll = lambda x: None if x is None else torch.roll(x, shifts=1, dims=0)  # noqa: E731
        return SiteState(roll(st.features), roll(st.vector))

    # ---- masks -----------------------------------------------------------------------------
    def _index(self, batch: PairBatch) -> Optional[torch.Tensor]:
        """The slot of each token position of ``batch`` (None: the position itself)."""
        return None if self.alignment is None else self.alignment.index(batch)

    def slot_of(self, nid: str, position: "int | str") -> int:
        """The slot index of a node's position. Under an alignment by role or from the end the part of
        an id after ``@`` is the slot's label (``S2``, ``S1+1``, ``END-2``; docs/design.md §14);
        otherwise it is the position itself."""
        if self.alignment is None:
            if isinstance(position, str):
                raise ValueError(f"node {nid}: position {position!r} is a slot label, but this evaluation "
                                 "has no alignment by role or from the end (pass the run's alignment)")
            return position
        slot = self.alignment._index.get(str(position))
        if slot is None:
            raise ValueError(f"node {nid}: no slot {str(position)!r} in the {self.alignment.mode} alignment "
                             f"(slots: {', '.join(self.alignment.slots)})")
        return slot

    def masks(self, keep: Optional[set[str]], T: int, index: Optional[torch.Tensor] = None
              ) -> Optional[dict[str, SiteState]]:
        """Boolean keep-masks per site (``features [T, F]``, ``vector [T]``); None keeps all. With
        ``index`` (the slot of each of the ``T`` positions), node positions are slots."""
        if keep is None:
            return None
        where = self.node_index(sorted(n for n in keep if n != METRIC), T, index)
        return {s: SiteState(None if w.features is None else w.features > 0, w.vector > 0) for s, w in where.items()}

    def node_index(self, nodes: Sequence[str], T: int, index: Optional[torch.Tensor] = None) -> dict[str, SiteState]:
        """Where each node sits: per site, ``features [T, F]`` and ``vector [T]`` long tensors holding
        ``i + 1`` where ``nodes[i]`` is and 0 elsewhere (a node summed over positions fills every position).
        With ``index`` (the slot of each of the ``T`` positions), node positions are slots."""
        if index is not None:
            slots = self.node_index(nodes, self.alignment.n_slots)
            return {s: SiteState(None if m.features is None else m.features[index], m.vector[index])
                    for s, m in slots.items()}
        out = {}
        device = self.device  # built where the streams are, so mixing never moves them
        for s in self.splice.site_names:
            F = self.splice.n_features(s)
            out[s] = SiteState(torch.zeros(T, F, dtype=torch.long, device=device) if F else None,
                               torch.zeros(T, dtype=torch.long, device=device))
        for i, nid in enumerate(nodes):
            ref = parse_node_id(nid)
            s = ref.site.name
            if s not in out:
                raise ValueError(f"node {nid} is at a site without nodes in this evaluation "
                                 f"(sites: {', '.join(self.splice.site_names)})")
            if ref.position is not None:
                ref = replace(ref, position=self.slot_of(nid, ref.position))
            pos = slice(None) if ref.position is None else ref.position
            if ref.position is not None and ref.position >= T:
                continue
            if ref.kind == "feature":
                if out[s].features is None:
                    raise ValueError(f"node {nid} is a feature but {s} has no SAE here")
                if ref.feature >= out[s].features.shape[1]:
                    raise ValueError(f"node {nid}: {s}'s SAE has only {out[s].features.shape[1]} features")
                out[s].features[pos, ref.feature] = i + 1
            else:
                out[s].vector[pos] = i + 1
        return out

    # ---- per-pair metric values --------------------------------------------------------------
    @staticmethod
    def _key(nodes: Iterable[str]) -> NodeSet:
        return frozenset(n for n in nodes if n != METRIC)

    def metric_values(self, keep: Optional[Iterable[str]]) -> np.ndarray:
        """``[n_pairs]`` metric with every node not in ``keep`` ablated (``None``: no hooks at all).
        Computed once per distinct node set."""
        key = None if keep is None else self._key(keep)
        if key not in self._keep_cache:
            vals = [self._run_with_masks(i, b, self.masks(None if key is None else set(key), b.clean.shape[1],
                                                          self._index(b)))
                    for i, b in enumerate(self.data.batches)]
            self.n_evaluations += 1
            self._keep_cache[key] = self._finite(torch.cat(vals).double().cpu().numpy(), key)
        return self._keep_cache[key]

    def completeness_values(self, nodes: Iterable[str]) -> np.ndarray:
        """``[n_pairs]`` metric with exactly ``nodes`` ablated and everything else kept."""
        key = self._key(nodes)
        if key not in self._ablate_cache:
            vals = []
            for i, b in enumerate(self.data.batches):
                masks = self.masks(set(key), b.clean.shape[1], self._index(b))
                inverted = {s: SiteState(None if mk.features is None else ~mk.features, ~mk.vector)
                            for s, mk in masks.items()}
                vals.append(self._run_with_masks(i, b, inverted))
            self.n_evaluations += 1
            self._ablate_cache[key] = self._finite(torch.cat(vals).double().cpu().numpy(), key, kept=False)
        return self._ablate_cache[key]

    def _finite(self, values: np.ndarray, key: Optional[NodeSet], kept: bool = True) -> np.ndarray:
        """``values``, or a ``ValueError`` naming the first site (forward order) whose activations are
        non-finite on the clean prompts (or the ablation values, when those are): NaN metric values
        would otherwise become faithfulness numbers."""
        bad = int((~np.isfinite(values)).sum())
        if not bad:
            return values
        what = ("nothing ablated" if key is None else
                f"{'all but ' if kept else ''}{len(key)} nodes {'kept' if kept else 'ablated'}")
        raise ValueError(f"the metric is NaN or infinite for {bad} of {len(values)} pairs ({self.ablation} ablation, "
                         f"{what}): {self._non_finite_site()}; check that SAE's weights, or use --dtype float32")

    def _non_finite_site(self) -> str:
        def first(states: Mapping[str, SiteState]) -> Optional[str]:
            for s in self.splice.sites:
                st = states.get(s.name) if s.name in states else states.get(s)
                if st is None:
                    continue
                for t in (st.features, st.vector):
                    if t is not None and not bool(torch.isfinite(t).all()):
                        return s.name
            return None

        site = first(self._record(self.data.batches[0].clean))
        if site is not None:
            return f"activations at site {site} are non-finite on the clean prompts"
        means = self._means or {}
        site = first(means)
        if site is not None:
            return f"the {self.ablation} ablation values at site {site} are non-finite"
        return "no site's activations are non-finite on the first batch, so the model's logits are"

    def metric(self, keep: Optional[set[str]]) -> float:
        """Mean metric with every node not in ``keep`` ablated (``keep=None``: nothing ablated)."""
        return float(self.metric_values(keep).mean())

    # ---- scores ----------------------------------------------------------------------------
    def ratio(self, m: float) -> float:
        """``(m - m(∅)) / (m(M) - m(∅))``; NaN when ``m(M) = m(∅)`` (the ablation changes nothing)."""
        denom = self.m_full - self.m_empty
        return (m - self.m_empty) / denom if denom != 0 else float("nan")

    def faithfulness(self, nodes: Iterable[str]) -> float:
        """``F(C)``: the circuit kept, everything else ablated."""
        return self.ratio(float(self.metric_values(set(nodes)).mean()))

    def completeness(self, nodes: Iterable[str]) -> float:
        """``F(M \\ C)``: ablate exactly the circuit's nodes, keep everything else."""
        return self.ratio(float(self.completeness_values(nodes).mean()))

    def completeness_is_degenerate(self, nodes: Iterable[str], rtol: float = 1e-5) -> bool:
        """True when ablating the (non-empty) circuit alone gives ``m(∅)`` on every pair, to ``rtol``
        of the pair's ``|m(M) - m(∅)|``: C then contains a cut of the model (e.g. every node of the last
        residual site at the answer position) and ``F(M \\ C) = 0`` whatever else it holds."""
        key = self._key(nodes)
        if not key:
            return False
        gap = np.abs(self.m_full_values - self.m_empty_values)
        diff = np.abs(self.completeness_values(key) - self.m_empty_values)
        return bool(np.all(diff <= rtol * np.maximum(gap, 1e-6)))

    def holds_final_site(self, nodes: Iterable[str]) -> bool:
        """True when the circuit holds the vector node (error or component) of the last residual
        site at every prompt's last position: the node through which every path reaches the metric."""
        last = Site("resid", self.model.cfg.n_layers - 1).name
        if last not in self.splice.site_names:
            return False
        key = self._key(nodes)
        vector = "err" if self.splice.has_sae(last) else None
        for t in sorted({b.clean.shape[1] for b in self.data.batches}):
            nid = f"{last}/{vector}@{t - 1}" if vector else f"{last}@{t - 1}"
            summed = f"{last}/{vector}" if vector else last
            if nid not in key and summed not in key:
                return False
        return True

    def _run_with_masks(self, i: int, batch: PairBatch,
                        masks: Optional[dict[str, SiteState]]) -> torch.Tensor:
        """The ``[B]`` metric with nodes where ``masks`` is False ablated (None: no hooks)."""
        with torch.no_grad():
            return self.mixed_metric(i, batch, masks)

    def mixed_metric(self, i: int, batch: PairBatch, masks: Optional[dict[str, SiteState]]) -> torch.Tensor:
        """The ``[B]`` metric of batch ``i`` with every node mixed between its own value (weight 1) and
        its ablation value (weight 0): ``m * x + (1 - m) * a``. Boolean masks select (True keeps);
        float masks in [0, 1] mix, differentiably (the learned mask, :mod:`featcirc.pruning.mask`).
        Masks are ``[T, ...]`` or ``[B, T, ...]``; None: no hooks."""
        model = self.model
        B, t = batch.clean.shape
        hooks = {}

        def mix(mk: torch.Tensor, x: torch.Tensor, a: Optional[torch.Tensor]) -> torch.Tensor:
            if mk.dtype == torch.bool:
                return torch.where(mk, x, 0.0 if a is None else a)
            mk = mk.to(x.dtype)  # a float32 mask must not turn a bfloat16 stream into float32
            return mk * x if a is None else a + mk * (x - a)

        for s in (self.splice.site_names if masks is not None else []):
            abl = self._ablation_for(i, s, B, t)
            mk = masks[s]

            def fn(x: torch.Tensor, s=s, abl=abl, mk=mk) -> torch.Tensor:
                st = self.splice.split(s, x)
                v = mix(mk.vector[..., None], st.vector, None if abl is None else abl.vector)
                if st.features is None:
                    return v
                f = mix(mk.features, st.features, None if abl is None else abl.features)
                return self.splice.decode(s, f) + v

            hooks[s] = fn
        with self.splice.hooks(hooks):
            resid = model(batch.clean, stop_at_layer=model.cfg.n_layers)
            return logit_diff_from_resid(model, resid, batch.clean_answer, batch.patch_answer)

    def curve(self, G: nx.DiGraph, thresholds: Optional[Sequence[float]] = DEFAULT_THRESHOLDS, *,
              sizes: Optional[Sequence[int]] = None, edge_threshold: float = 0.0) -> list[CurvePoint]:
        """Faithfulness and completeness of the circuit pruned at each node threshold, or (``sizes``
        given) of the top-k circuit for each size. One point per request; requests that give the
        same circuit are evaluated once."""
        if sizes is not None:
            requests = [dict(size=int(k)) for k in sizes]
        else:
            requests = [dict(threshold=float(th)) for th in (thresholds or DEFAULT_THRESHOLDS)]
        points = []
        for req in tqdm(requests, desc="faithfulness", disable=not self.progress, leave=False):
            C = select_circuit(G, edge_threshold=edge_threshold, **req)
            nodes = circuit_nodes(C)
            points.append(CurvePoint(req.get("threshold", float("nan")), len(nodes), C.number_of_edges(),
                                     self.faithfulness(nodes), self.completeness(nodes), req.get("size")))
        return points


__all__ = ["ABLATIONS", "DEFAULT_THRESHOLDS", "Ablator", "CurvePoint", "curve_area", "select_circuit"]
