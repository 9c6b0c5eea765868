"""The node pass and the edge pass behind :func:`featcirc.attribution.attribute`.

One entry point::

    nodes, edges = attribute(model, data, "relp", saes, settings=AttributionSettings(max_nodes=500))

``method`` is any name of the registry (:func:`method_names`: exact, atp, relp, ig and RelP rule
variants). ``edges=False`` (or a method without gradients, ``exact``) returns ``(nodes, None)``.
Scores are sums over pairs divided by the number of pairs, so data can be split over processes:
``reduce`` (e.g. an all-reduce) is applied to the sums before they are divided.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Iterator, Mapping, Optional

import torch
from tqdm.auto import tqdm

from featcirc.attribution.candidates import SiteCandidates, select_candidates
from featcirc.attribution.edges import batch_edges, edge_groups
from featcirc.attribution.methods import Method, get_method
from featcirc.attribution.nodes import BatchRecord, NodeAccumulator, record_batch
from featcirc.attribution.scores import Cost, EdgeScores, NodeScores
from featcirc.attribution.settings import AttributionSettings
from featcirc.attribution.splice import Splice, make_splice
from featcirc.data.align import Alignment, align
from featcirc.sites import METRIC, Site

Reduce = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]

def attribute(
    model,
    data,
    method: "str | Method" = "relp",
    saes: Optional[Mapping[str, object]] = None,
    *,
    edges: bool = True,
    settings: Optional[AttributionSettings] = None,
    reduce: Optional[Reduce] = None,
    n_positions: Optional[int] = None,
    alignment=None,
) -> tuple[NodeScores, Optional[EdgeScores]]:
    """Score every node (and, for methods with gradients, the edges among the top candidates).

    ``data`` is a :class:`featcirc.data.PairDataset`; ``saes`` maps sites to SAELens SAEs (needed at
    feature level). ``reduce`` combines the sums of several processes (identity by default);
    ``n_positions`` pads per-position scores to that many positions (default: the longest prompt).
    ``alignment`` (:class:`featcirc.data.align.Alignment`, from ``make_alignment(data, mode)`` over the
    whole dataset) lines positions up by start, end or role (docs/design.md §14); default: from the
    start (or summed, with ``aggregation="sum"``). Its slot labels go to ``NodeScores.info["align"]``.
    """
    check_arguments("attribute", model, data, saes)
    if settings is not None and not isinstance(settings, AttributionSettings):
        raise TypeError(f"attribute(): settings must be an AttributionSettings (featcirc.attribution), "
                        f"got {type(settings).__name__}")
    settings = settings or AttributionSettings()
    method = get_method(method)
    if data.n_pairs == 0:
        raise ValueError("no pairs to score: the dataset is empty")
    splice = make_splice(model, settings.level, saes, settings.sites)
    alignment = _alignment(data, settings, alignment, n_positions)
    data = align(data, alignment)
    T = alignment.n_slots if not alignment.summed else (n_positions if n_positions is not None else data.max_len)
    nodes, records = _node_pass(splice, data, method, settings, T, reduce, alignment)
    check_finite_nodes(nodes)
    if not (edges and method.has_edges):
        return nodes, None
    return nodes, _edge_pass(splice, data, method, settings, nodes, records, reduce, alignment)


def _alignment(data, settings: AttributionSettings, alignment: Optional[Alignment],
               n_positions: Optional[int]) -> Alignment:
    if alignment is None:
        if settings.aggregation == "sum":
            return Alignment("sum")
        T = n_positions if n_positions is not None else data.max_len
        return Alignment.of("start", [str(t) for t in range(T)])
    if not isinstance(alignment, Alignment):
        raise TypeError(f"attribute(): alignment must be a featcirc.data.align.Alignment (make_alignment(data, mode)), "
                        f"got {type(alignment).__name__}")
    if (alignment.mode == "sum") != (settings.aggregation == "sum"):
        raise ValueError(f"alignment {alignment.mode!r} does not go with aggregation {settings.aggregation!r}: "
                         "positions are summed exactly when the alignment is 'sum'")
    return alignment


def _non_finite(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None or not torch.is_tensor(t) else int((~torch.isfinite(t)).sum())


def check_finite_nodes(nodes: NodeScores) -> None:
    """A ``ValueError`` naming the first site (forward order) whose node activations, else node scores,
    hold NaN or infinite values, or the metric when it is not finite: never results that look like
    results. Activations first: a NaN at one site makes every upstream gradient NaN too."""
    for what, tables in (("activations", (nodes.feature_acts, nodes.vector_acts)),
                         ("scores", (nodes.features, nodes.vectors))):
        if what == "scores":  # activations are finite: a non-finite metric is the model's own logits
            for name in ("metric_clean", "metric_patch"):
                v = float(getattr(nodes, name))
                if v != v or v in (float("inf"), float("-inf")):
                    raise ValueError(f"the metric is not finite ({name} = {v}): the model's logits are NaN or "
                                     "infinite on these pairs; use --dtype float32")
        for site, table in ((s, t) for s in nodes.sites for t in tables):
            t = table.get(site)
            bad = _non_finite(t)
            if bad:
                raise ValueError(
                    f"non-finite node {what} at site {site} ({bad} of {t.numel()} values NaN or infinite, "
                    f"method {nodes.method}): the model or the SAE at {site} produces non-finite values; check "
                    "that SAE's weights, or use --dtype float32")


def _kind(value) -> str:
    if isinstance(value, (list, tuple)) and value:
        return f"a {type(value).__name__} of {type(value[0]).__name__}"
    return "None" if value is None else type(value).__name__


def check_arguments(caller: str, model, data, saes=None) -> None:
    """The public entry points' arguments (``attribute``, ``Ablator``): ``model`` a TransformerLens
    ``HookedTransformer``, ``data`` a tokenized :class:`~featcirc.data.PairDataset`, ``saes`` None or a
    mapping ``{site: SAE}`` whose every SAE fits its site of this model
    (:func:`featcirc.saes.loading.validate_sae`, as ``load_saes`` checks it). Raises ``TypeError`` for a
    wrong kind of argument and :class:`~featcirc.saes.loading.SAEMismatchError` (a ``ValueError``) for an
    SAE of another site or model."""
    from transformer_lens import HookedTransformer

    from featcirc.data import PairDataset

    if not isinstance(model, HookedTransformer):
        raise TypeError(f"{caller}(): model must be a TransformerLens HookedTransformer (e.g. "
                        f"featcirc.load_model('tiny')), got {_kind(model)}")
    if not isinstance(data, PairDataset):
        hint = (": tokenize prompt pairs first with featcirc.data.tokenize_pairs(model, pairs), or use "
                "featcirc.data.load_pairs(model, task=... or data=...)")
        raise TypeError(f"{caller}(): data must be a featcirc.data.PairDataset{hint}; got {_kind(data)}")
    if saes is None:
        return
    if not isinstance(saes, Mapping):
        raise TypeError(f"{caller}(): saes must be None or a dict {{site: SAE}} as featcirc.load_saes(model, spec) "
                        f"returns, got {_kind(saes)}")
    from featcirc.saes.loading import validate_sae

    for key, sae in saes.items():
        if not hasattr(getattr(sae, "cfg", None), "d_in"):
            raise TypeError(f"{caller}(): saes[{key!r}] must be a SAELens SAE, got {_kind(sae)}")
        validate_sae(model, Site.parse(key), sae)


def _node_pass(splice: Splice, data, method: Method, settings: AttributionSettings, T: int,
               reduce: Optional[Reduce], alignment: Alignment) -> tuple[NodeScores, Optional[list[BatchRecord]]]:
    cost = Cost()
    acc = NodeAccumulator(splice.sites, T, settings.aggregation, settings.pair_effects)
    records: Optional[list[BatchRecord]] = [] if method.has_edges else None
    kept = 0
    t0 = time.perf_counter()
    for batch in tqdm(data.batches, desc=f"{method.name} nodes", disable=not settings.progress, leave=False):
        rec = record_batch(splice, batch, method, settings.ig_steps, settings.max_rows, cost)
        acc.add(rec, None if alignment.summed or alignment.mode == "start" else alignment.index(batch))
        if records is not None:
            kept += rec.nbytes()
            if kept <= settings.record_bytes:
                records.append(rec)
            else:  # too large to keep: the edge pass recomputes batch by batch
                records = None
    sums = acc.tensors()
    if reduce is not None:
        sums.update(reduce(sums))
    means = acc.finish()
    cost.seconds = time.perf_counter() - t0
    nodes = NodeScores(
        method=method.name, level=settings.level, aggregation=settings.aggregation,
        sites=[s.name for s in splice.sites], cost=cost,
        info=dict(**method.estimator.info(settings.ig_steps),
                  rules=vars(method.rules) if method.rules.any else None, n_layers=splice.model.cfg.n_layers,
                  estimator=method.estimator.name, align=alignment.to_json()),
        pair_effects=acc.pair_effects() if settings.pair_effects else None, **means)
    return nodes, records


def _edge_pass(splice: Splice, data, method: Method, settings: AttributionSettings, nodes: NodeScores,
               records: Optional[list[BatchRecord]], reduce: Optional[Reduce],
               alignment: Optional[Alignment] = None) -> EdgeScores:
    """Edges among the candidates, from the node pass's records (or recomputed batch by batch)."""
    cost = Cost()
    t0 = time.perf_counter()
    cands = select_candidates(nodes, settings.max_nodes)
    groups = edge_groups(splice.model, splice.sites, splice.skip_sites)
    summed = settings.aggregation == "sum"
    sums = {(d, u): torch.zeros(len(cands[d]), len(cands[u]))
            for g in groups for d, ps in g.parents.items() for u in ps}

    def batches() -> Iterator[BatchRecord]:
        if records is not None:
            yield from records
            return
        for batch in data.batches:  # memory stays flat: recompute this batch's node pass
            yield record_batch(splice, batch, method, settings.ig_steps, settings.max_rows, cost)

    shifted = not summed and alignment is not None and alignment.mode != "start"
    for rec, batch in tqdm(zip(batches(), data.batches), total=len(data.batches), desc=f"{method.name} edges",
                           disable=not settings.progress, leave=False):
        here = _at_positions(cands, alignment.index(batch)) if shifted else cands
        for g in groups:
            batch_edges(splice, g, rec, here, method, settings.ig_steps, summed, settings.max_rows, cost, sums)
    if reduce is not None:
        flat = reduce({f"{d.name}<{u.name}": w for (d, u), w in sums.items()})
        sums = {(d, u): flat[f"{d.name}<{u.name}"] for (d, u) in sums}
    for (d, u), w in sums.items():
        if _non_finite(w):
            raise ValueError(f"non-finite edge weights from site {u.name} to site {d.name} ({_non_finite(w)} of "
                             f"{w.numel()}): the model or an SAE produces non-finite gradients; check the SAEs at "
                             f"{u.name} and {d.name}, or use --dtype float32")
    cost.seconds = time.perf_counter() - t0
    return _compact(method, settings, nodes, cands, sums, cost, recomputed=records is None)


def _at_positions(cands: dict[Site, SiteCandidates], index: torch.Tensor) -> dict[Site, SiteCandidates]:
    """The candidates with slots turned into this batch's token positions (``index``: the slot of each
    position); a slot the batch lacks becomes position ``T`` (out of range: no edges there)."""
    T = int(index.numel())
    n = max([T] + [int(c.positions.max()) + 1 for c in cands.values() if len(c)])
    where = torch.full((n,), T, dtype=torch.long)
    where[index.cpu()] = torch.arange(T)
    return {s: replace(c, feat_pos=where[c.feat_pos], vec_pos=where[c.vec_pos]) for s, c in cands.items()}


def _compact(method: Method, settings: AttributionSettings, nodes: NodeScores, cands: dict[Site, SiteCandidates],
             sums: dict[tuple[Site, Site], torch.Tensor], cost: Cost, recomputed: bool) -> EdgeScores:
    """Edge sums -> means -> the compact :class:`EdgeScores` (nonzero edges, plus edges into ``metric``)."""
    ids: list[str] = []
    offset: dict[Site, int] = {}
    for s, c in cands.items():
        offset[s] = len(ids)
        ids += c.ids
    ids.append(METRIC)
    ups, downs, ws = [], [], []
    for (d, u), w in sums.items():
        j, i = torch.nonzero(w, as_tuple=True)
        ups.append(i + offset[u])
        downs.append(j + offset[d])
        ws.append(w[j, i] / nodes.n_pairs)
    for s, idx, w in _metric_edges(nodes, cands):
        ups.append(idx + offset[s])
        downs.append(torch.full_like(idx, len(ids) - 1))
        ws.append(w)
    cat = lambda xs, dt: torch.cat(xs).to(dt) if xs else torch.zeros(0, dtype=dt)  # noqa: E731
    return EdgeScores(method.name, settings.aggregation, ids, cat(ups, torch.long), cat(downs, torch.long),
                      cat(ws, torch.float32), cost,
                      info=dict(max_nodes=settings.max_nodes, n_candidates=len(ids) - 1,
                                recomputed_node_pass=recomputed))


def _metric_edges(nodes: NodeScores, cands: dict[Site, SiteCandidates]):
    """``u -> metric`` for candidates at the last residual site (and at attention / MLP sites after
    it): the node score itself, ``g_u . (a_c,u - a_p,u)`` (the output is one step away)."""
    sites = list(cands)
    resid_layers = [s.layer for s in sites if s.is_resid]
    last = max(resid_layers) if resid_layers else -2
    summed = nodes.aggregation == "sum"
    for s in sites:
        if not ((s.is_resid and s.layer == last) or (not s.is_resid and s.layer > last)):
            continue
        c = cands[s]
        nf = c.n_features
        vals = []
        if nf:
            f = nodes.features[s.name]
            vals.append(f[c.feat_idx] if summed else f[c.feat_pos, c.feat_idx])
        if len(c) > nf:
            v = nodes.vectors[s.name]
            vals.append(v.reshape(1).expand(len(c) - nf) if summed else v[c.vec_pos])
        w = torch.cat(vals).float()
        idx = torch.nonzero(w).flatten()
        yield s, idx, w[idx]
