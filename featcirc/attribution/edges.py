"""Edge scores between the nodes of adjacent sites (DESIGN §7).

The site graph of Marks et al.: within block ``L`` with input ``R = resid.(L-1)`` (``embed`` for
``L = 0``)::

    R -> attn.L,  R -> mlp.L,  attn.L -> mlp.L (sequential blocks only),
    R -> resid.L (direct path),  attn.L -> resid.L,  mlp.L -> resid.L,   resid.last -> metric

    e(u -> d) = g_d . (d a_d / d a_u) . (a_p,u - a_c,u)

with ``g_d`` the node gradient of ``d`` (held constant; path-averaged for IG), the Jacobian taken on
the clean run through ``d``'s encoder (for an error node through ``x - dec(enc(x))``), intermediate
sites held constant (their outputs are replaced by leaves), and the LRP rules active for RelP. For IG
the Jacobian is averaged over ``a_u = a_c + alpha_k (a_p - a_c)``, all inputs of the block moving
together.

Vectorised: every (pair, downstream node[, alpha]) is one *row* of a replicated batch; one forward
of block ``L`` and one backward with one-hot ``grad_outputs`` give all rows' vector-Jacobian
products at once. :func:`naive_block_edges` is the one-backward-per-node loop it replaces.

Edges are computed among *candidate* nodes: the ``max_nodes`` nodes of largest ``|score|``, so
re-thresholding nodes down to that size needs no model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from featcirc.attribution.nodes import BatchRecord, ScoreSettings, make_splice, score_nodes_with_splice
from featcirc.data import PairDataset
from featcirc.attribution.rules import LRPRules, lrp_rules
from featcirc.attribution.scores import Cost, EdgeScores, NodeScores
from featcirc.sites import METRIC, Site, node_id
from featcirc.attribution.splice import SiteState, Splice


# --------------------------------------------------------------------------------------------
# candidate nodes
# --------------------------------------------------------------------------------------------
@dataclass
class SiteCandidates:
    """Candidate nodes of one site: features ``(pos, feature)`` then vector nodes ``(pos)``.

    ``pos == -1`` means summed over positions (``aggregation="sum"``)."""

    site: str
    feat_pos: torch.Tensor  # [nf]
    feat_idx: torch.Tensor  # [nf]
    vec_pos: torch.Tensor  # [nv]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def select_candidates(nodes: NodeScores, max_nodes: Optional[int]) -> dict[str, SiteCandidates]:
    """The ``max_nodes`` nodes of largest nonzero ``|score|`` (all nonzero ones if None), by site."""
    entries = []  # (|score|, site, kind, pos, feat)
    for site in nodes.sites:
        vec = nodes.vectors[site]
        if nodes.aggregation == "sum":
            vec = vec.reshape(1)
        for p in torch.nonzero(vec).flatten().tolist():
            entries.append((abs(float(vec[p])), site, "v", -1 if nodes.aggregation == "sum" else p, -1))
        if site in nodes.features:
            feats = nodes.features[site]
            if nodes.aggregation == "sum":
                feats = feats.unsqueeze(0)
            nz = torch.nonzero(feats)
            vals = feats[nz[:, 0], nz[:, 1]].abs().tolist()
            for (p, f), v in zip(nz.tolist(), vals):
                entries.append((v, site, "f", -1 if nodes.aggregation == "sum" else p, f))
    entries.sort(key=lambda e: (-e[0], e[1], e[2], e[3], e[4]))
    if max_nodes is not None:
        entries = entries[:max_nodes]
    vector_kind = nodes.vector_kind
    out: dict[str, SiteCandidates] = {}
    for site in nodes.sites:
        fe = sorted((e[3], e[4]) for e in entries if e[1] == site and e[2] == "f")
        ve = sorted(e[3] for e in entries if e[1] == site and e[2] == "v")
        pos = lambda p: None if p == -1 else p  # noqa: E731
        ids = [node_id(site, "feature", f, pos(p)) for p, f in fe]
        ids += [node_id(site, vector_kind, None, pos(p)) for p in ve]
        out[site] = SiteCandidates(
            site, torch.tensor([p for p, _ in fe], dtype=torch.long),
            torch.tensor([f for _, f in fe], dtype=torch.long),
            torch.tensor(ve, dtype=torch.long), ids)
    return out


# --------------------------------------------------------------------------------------------
# the site graph of one block
# --------------------------------------------------------------------------------------------
@dataclass
class BlockGraph:
    layer: int
    upstream_resid: Optional[str]  # R, if spliced
    downstream: list[str]  # spliced sites computed in this block, forward order
    parents: dict[str, list[str]]  # downstream site -> its upstream sites (spliced)

    @property
    def leaf_sites(self) -> list[str]:
        """Sites whose values enter the block as leaves: R, and attn/mlp (held constant)."""
        out = [self.upstream_resid] if self.upstream_resid else []
        return out + [s for s in self.downstream if not s.startswith("resid")]


def block_graphs(model: HookedTransformer, splice: Splice) -> list[BlockGraph]:
    spliced = set(splice.site_names)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    graphs = []
    for L in range(model.cfg.n_layers):
        r = "embed" if L == 0 else f"resid.{L - 1}"
        r = r if r in spliced else None
        a, m, o = f"attn.{L}", f"mlp.{L}", f"resid.{L}"
        parents: dict[str, list[str]] = {}
        if a in spliced:
            parents[a] = [r] if r else []
        if m in spliced:
            parents[m] = ([r] if r else []) + ([a] if a in spliced and not parallel else [])
        if o in spliced:
            parents[o] = ([r] if r else []) + [s for s in (a, m) if s in spliced]
        parents = {d: ps for d, ps in parents.items() if ps}
        if parents:
            graphs.append(BlockGraph(L, r, [s for s in (a, m, o) if s in spliced], parents))
    return graphs


# --------------------------------------------------------------------------------------------
# one block, vectorised over rows
# --------------------------------------------------------------------------------------------
def _row_values(state: SiteState, patch: SiteState, rows: torch.Tensor, alpha: torch.Tensor):
    """Leaf values ``a_c + alpha (a_p - a_c)`` of one site for the given pair rows."""
    shape = (-1,) + (1,) * (state.vector.dim() - 1)
    v = state.vector[rows] + alpha.view(shape) * (patch.vector[rows] - state.vector[rows])
    f = None
    if state.features is not None:
        f = state.features[rows] + alpha.view(shape) * (patch.features[rows] - state.features[rows])
    return SiteState(None if f is None else f.requires_grad_(), v.requires_grad_())


def _block_forward(splice: Splice, graph: BlockGraph, leaves: dict[str, SiteState],
                   resid_in: torch.Tensor, rules: LRPRules) -> dict[str, SiteState]:
    """Run block ``graph.layer`` with leaf inputs; return each downstream site's node values."""
    model = splice.model
    down: dict[str, SiteState] = {}

    def make(site: str):
        def fn(x: torch.Tensor) -> torch.Tensor:
            down[site] = splice.split(site, x)
            return splice.combine(site, leaves[site]) if site in leaves else x

        return fn

    with torch.enable_grad(), lrp_rules(model, rules), splice.hooks({s: make(s) for s in graph.downstream}):
        model.blocks[graph.layer](resid_in)
    return down


def _edge_weights(grad: SiteState, delta: SiteState, cands: SiteCandidates, summed: bool) -> torch.Tensor:
    """``[K, n_candidates(U)]``: the rows' vector-Jacobian products times the upstream deltas."""
    cols = []
    T = grad.vector.shape[1]
    if len(cands.feat_idx):
        w = grad.features * delta.features  # [K, T, F]
        if summed:
            cols.append(w.sum(1)[:, cands.feat_idx])
        else:  # candidates beyond this batch's length get 0
            cols.append(w[:, cands.feat_pos.clamp(max=T - 1), cands.feat_idx] * (cands.feat_pos < T))
    if len(cands.vec_pos):
        w = (grad.vector * delta.vector).sum(-1)  # [K, T]
        cols.append(w.sum(1, keepdim=True) if summed
                    else w[:, cands.vec_pos.clamp(max=T - 1)] * (cands.vec_pos < T))
    if not cols:
        return grad.vector.new_zeros(grad.vector.shape[0], 0)
    return torch.cat(cols, dim=1)


@dataclass
class _Rows:
    pair: torch.Tensor  # [K] batch row of the pair
    site: list[str]  # downstream site of each row
    index: torch.Tensor  # [K] candidate index within its site
    alpha: torch.Tensor  # [K]
    weight: torch.Tensor  # [K] 1/N for IG steps, else 1


def _make_rows(graph: BlockGraph, cands: Mapping[str, SiteCandidates], record: BatchRecord,
               alphas: torch.Tensor, summed: bool) -> _Rows:
    """One row per (pair, downstream candidate[, alpha]). Rows whose node cannot receive an edge are
    skipped: positions beyond the pair's length and, when the Jacobian is taken on the clean run
    only (not IG), features inactive there (their encoder's Jacobian is zero for ReLU / JumpReLU /
    TopK SAEs)."""
    clean_only = bool((alphas == 0).all())
    B, T = record.batch.clean.shape
    pair, site, index, alpha = [], [], [], []
    for d in graph.parents:
        c = cands[d]
        nf = len(c.feat_idx)
        for b in range(B):
            valid = torch.ones(len(c), dtype=torch.bool)
            if not summed:
                valid &= torch.cat([c.feat_pos, c.vec_pos]) < T
            f = record.clean[d].features
            if nf and f is not None and clean_only:
                acts = f[b] if summed else f[b, c.feat_pos.clamp(max=T - 1)]
                active = (acts[:, c.feat_idx] != 0).any(0) if summed else acts[torch.arange(nf), c.feat_idx] != 0
                valid[:nf] &= active
            idx = torch.nonzero(valid).flatten()
            for a in alphas:
                pair.append(torch.full((len(idx),), b))
                index.append(idx)
                alpha.append(torch.full((len(idx),), float(a)))
                site += [d] * len(idx)
    n = len(site)
    cat = lambda xs, dt: torch.cat(xs).to(dt) if xs else torch.zeros(0, dtype=dt)  # noqa: E731
    return _Rows(cat(pair, torch.long), site, cat(index, torch.long), cat(alpha, torch.float32),
                 torch.full((n,), 1.0 / len(alphas)))


def _grad_outputs(sel: torch.Tensor, pair: torch.Tensor, index: torch.Tensor, cands: SiteCandidates,
                  grads: SiteState, like: SiteState, summed: bool) -> SiteState:
    """One-hot ``grad_outputs`` for one site: row ``sel[k]`` carries ``g_d`` at its node only."""
    gf = None if like.features is None else torch.zeros_like(like.features)
    gv = torch.zeros_like(like.vector)
    T = gv.shape[1]
    nf = len(cands.feat_idx)
    is_f = index < nf
    if is_f.any():
        k, b, j = sel[is_f], pair[is_f], index[is_f]
        i, p = cands.feat_idx[j], cands.feat_pos[j]
        if summed:
            t = torch.arange(T)[None, :]
            gf[k[:, None], t, i[:, None]] = grads.features[b[:, None], t, i[:, None]]
        else:
            gf[k, p, i] = grads.features[b, p, i]
    if (~is_f).any():
        k, b, j = sel[~is_f], pair[~is_f], index[~is_f]
        if summed:
            gv[k] = grads.vector[b]
        else:
            p = cands.vec_pos[j - nf]
            gv[k, p] = grads.vector[b, p]
    return SiteState(gf, gv)


def block_edges(splice: Splice, graph: BlockGraph, record: BatchRecord, resid_pre: Optional[torch.Tensor],
                cands: Mapping[str, SiteCandidates], alphas: torch.Tensor, rules: LRPRules,
                summed: bool, max_rows: int, cost: Cost) -> dict[tuple[str, str], torch.Tensor]:
    """Edge sums ``{(d, u): [n_cand(d), n_cand(u)]}`` of one block over the pairs of one batch."""
    rows = _make_rows(graph, cands, record, alphas, summed)
    site_code = {d: n for n, d in enumerate(graph.parents)}
    row_site = torch.tensor([site_code[s] for s in rows.site], dtype=torch.long)
    out = {(d, u): torch.zeros(len(cands[d]), len(cands[u])) for d, ps in graph.parents.items() for u in ps}
    deltas = {u: SiteState(None if record.clean[u].features is None
                           else record.patch[u].features - record.clean[u].features,
                           record.patch[u].vector - record.clean[u].vector)
              for u in graph.leaf_sites}
    for lo in range(0, len(row_site), max_rows):
        hi = min(lo + max_rows, len(row_site))
        pair, alpha = rows.pair[lo:hi], rows.alpha[lo:hi]
        leaves = {u: _row_values(record.clean[u], record.patch[u], pair, alpha) for u in graph.leaf_sites}
        if graph.upstream_resid:
            resid_in = splice.combine(graph.upstream_resid, leaves[graph.upstream_resid])
        else:
            resid_in = resid_pre[pair]
        down = _block_forward(splice, graph, leaves, resid_in, rules)
        outputs, grad_outputs = [], []
        chunk_site = row_site[lo:hi]
        sels = {d: torch.nonzero(chunk_site == site_code[d]).flatten() for d in graph.parents}
        for d, sel in sels.items():
            if not len(sel):
                continue
            go = _grad_outputs(sel, rows.pair[lo:hi][sel], rows.index[lo:hi][sel], cands[d],
                               record.grads[d], down[d], summed)
            if go.features is not None:
                outputs.append(down[d].features)
                grad_outputs.append(go.features)
            outputs.append(down[d].vector)
            grad_outputs.append(go.vector)
        inputs, keys = [], []
        for u in graph.leaf_sites:
            if leaves[u].features is not None:
                inputs.append(leaves[u].features)
                keys.append((u, "f"))
            inputs.append(leaves[u].vector)
            keys.append((u, "v"))
        with torch.enable_grad():
            gs = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)
        cost.forward_passes += 1
        cost.backward_passes += 1
        g = {k: gr for k, gr in zip(keys, gs)}
        w_row = rows.weight[lo:hi]
        for u in graph.leaf_sites:
            gf = g.get((u, "f"))
            gv = g[(u, "v")]
            if gv is None and gf is None:
                continue
            gv = torch.zeros_like(leaves[u].vector) if gv is None else gv
            if leaves[u].features is not None and gf is None:
                gf = torch.zeros_like(leaves[u].features)
            dl = SiteState(None if deltas[u].features is None else deltas[u].features[pair],
                           deltas[u].vector[pair])
            w = _edge_weights(SiteState(gf, gv), dl, cands[u], summed) * w_row[:, None]
            for d, sel in sels.items():
                if u in graph.parents[d] and len(sel):
                    out[(d, u)].index_add_(0, rows.index[lo:hi][sel], w[sel].detach().float())
    return out


def naive_block_edges(splice: Splice, graph: BlockGraph, record: BatchRecord,
                      resid_pre: Optional[torch.Tensor], cands: Mapping[str, SiteCandidates],
                      alphas: torch.Tensor, rules: LRPRules, summed: bool,
                      cost: Cost) -> dict[tuple[str, str], torch.Tensor]:
    """Reference loop: one forward per (pair, alpha) and one backward per downstream node."""
    B, T = record.batch.clean.shape
    out = {(d, u): torch.zeros(len(cands[d]), len(cands[u])) for d, ps in graph.parents.items() for u in ps}
    for b in range(B):
        for a in alphas:
            pair = torch.tensor([b])
            alpha = torch.tensor([float(a)])
            leaves = {u: _row_values(record.clean[u], record.patch[u], pair, alpha) for u in graph.leaf_sites}
            resid_in = (splice.combine(graph.upstream_resid, leaves[graph.upstream_resid])
                        if graph.upstream_resid else resid_pre[pair])
            down = _block_forward(splice, graph, leaves, resid_in, rules)
            cost.forward_passes += 1
            for d, parents in graph.parents.items():
                c = cands[d]
                nf = len(c.feat_idx)
                for j in range(len(c)):
                    if j < nf:
                        i, p = int(c.feat_idx[j]), int(c.feat_pos[j])
                        if not summed and p >= T:
                            continue
                        gd = record.grads[d].features[b]
                        scalar = ((gd[:, i] * down[d].features[0, :, i]).sum() if summed
                                  else gd[p, i] * down[d].features[0, p, i])
                    else:
                        p = int(c.vec_pos[j - nf])
                        if not summed and p >= T:
                            continue
                        gd = record.grads[d].vector[b]
                        scalar = ((gd * down[d].vector[0]).sum() if summed
                                  else (gd[p] * down[d].vector[0, p]).sum())
                    ins = []
                    for u in parents:
                        ins += [x for x in (leaves[u].features, leaves[u].vector) if x is not None]
                    with torch.enable_grad():
                        gs = torch.autograd.grad(scalar, ins, retain_graph=True, allow_unused=True)
                    cost.backward_passes += 1
                    k = 0
                    for u in parents:
                        has_f = leaves[u].features is not None
                        gf = gs[k] if has_f else None
                        gv = gs[k + 1] if has_f else gs[k]
                        k += 2 if has_f else 1
                        gv = torch.zeros_like(leaves[u].vector) if gv is None else gv
                        if has_f and gf is None:
                            gf = torch.zeros_like(leaves[u].features)
                        dl = SiteState(None if not has_f else
                                       (record.patch[u].features - record.clean[u].features)[pair],
                                       (record.patch[u].vector - record.clean[u].vector)[pair])
                        out[(d, u)][j] += _edge_weights(SiteState(gf, gv), dl, cands[u], summed)[0] / len(alphas)
    return out


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------
def score_graph(
    model: HookedTransformer,
    data: PairDataset,
    *,
    method: str = "relp",
    level: str = "feature",
    saes: Optional[Mapping[str, object]] = None,
    sites: Optional[Iterable[str]] = None,
    aggregation: str = "none",
    ig_steps: int = 10,
    rules: Optional[LRPRules] = None,
    max_nodes: Optional[int] = 1000,
    max_rows: int = 256,
    naive: bool = False,
    progress: bool = True,
) -> tuple[NodeScores, EdgeScores]:
    """Node scores and edge scores (among the ``max_nodes`` top nodes) in one go.

    ``method`` is ``relp``, ``atp`` or ``ig``; ``naive=True`` uses the per-node reference loop.
    """
    if method not in ("relp", "atp", "ig"):
        raise ValueError(f"edges need a gradient method (relp, atp or ig), not {method!r}")
    settings = ScoreSettings(method, level, aggregation, ig_steps, max_rows,
                             rules if rules is not None else LRPRules())
    splice = make_splice(model, level, saes, sites)
    nodes, records = score_nodes_with_splice(splice, data, settings, progress=progress, keep_records=True)
    return nodes, score_edges(splice, nodes, records, settings, max_nodes=max_nodes, naive=naive,
                              progress=progress)


def score_edges(splice: Splice, nodes: NodeScores, records: list[BatchRecord], settings: ScoreSettings, *,
                max_nodes: Optional[int] = 1000, naive: bool = False, progress: bool = True) -> EdgeScores:
    """Edge scores from a node pass's per-batch records (``score_nodes_with_splice(keep_records=True)``)."""
    method, model = settings.method, splice.model
    if method not in ("relp", "atp", "ig"):
        raise ValueError(f"edges need a gradient method (relp, atp or ig), not {method!r}")
    edge_rules = settings.rules if method == "relp" else LRPRules.none()
    alphas = (torch.arange(settings.ig_steps, dtype=torch.float32) / settings.ig_steps if method == "ig"
              else torch.zeros(1))
    cands = select_candidates(nodes, max_nodes)
    graphs = block_graphs(model, splice)
    summed = settings.aggregation == "sum"
    cost = Cost()
    t0 = time.perf_counter()
    need_resid_pre = any(g.upstream_resid is None for g in graphs)
    totals: dict[tuple[str, str], torch.Tensor] = {}
    for record in tqdm(records, desc=f"{method} edges", disable=not progress, leave=False):
        resid_pre = _clean_resid_pre(model, record, cost) if need_resid_pre else {}
        for graph in graphs:
            fn = naive_block_edges if naive else block_edges
            kwargs = {} if naive else dict(max_rows=settings.max_rows)
            part = fn(splice, graph, record, resid_pre.get(graph.layer), cands, alphas, edge_rules,
                      summed, cost=cost, **kwargs)
            for key, val in part.items():
                totals[key] = totals[key] + val if key in totals else val
    edges: dict[tuple[str, str], float] = {}
    for (d, u), w in totals.items():
        w = w / nodes.n_pairs
        for j, i in torch.nonzero(w).tolist():
            edges[(cands[u].ids[i], cands[d].ids[j])] = float(w[j, i])
    for u, w in _metric_edges(nodes, cands, splice).items():
        edges[(u, METRIC)] = w
    cost.seconds = time.perf_counter() - t0
    return EdgeScores(method=method, aggregation=settings.aggregation, edges=edges, cost=cost,
                             info=dict(max_nodes=max_nodes, n_candidates=sum(len(c) for c in cands.values()),
                                       naive=naive))


def _clean_resid_pre(model: HookedTransformer, record: BatchRecord, cost: Cost) -> dict[int, torch.Tensor]:
    if record.resid_pre is not None:
        return record.resid_pre
    from featcirc.attribution.splice import record_resid_pre

    with torch.no_grad(), record_resid_pre(model) as store:
        model(record.batch.clean, stop_at_layer=model.cfg.n_layers)
    cost.forward_passes += 1
    return dict(store)


def _metric_edges(nodes: NodeScores, cands: Mapping[str, SiteCandidates], splice: Splice) -> dict[str, float]:
    """``u -> metric`` for candidates at the last residual site (and at sites after it): the node
    score itself, ``g_u . (a_p,u - a_c,u)`` (the output is one step away)."""
    resid_layers = [Site.parse(s).layer for s in splice.site_names if Site.parse(s).kind in ("resid", "embed")]
    last = max(resid_layers) if resid_layers else -2
    out = {}
    for s in splice.site_names:
        site = Site.parse(s)
        is_last_resid = site.kind in ("resid", "embed") and site.layer == last
        after = site.kind in ("attn", "mlp") and site.layer > last
        if not (is_last_resid or after):
            continue
        c = cands[s]
        summed = nodes.aggregation == "sum"
        for j, nid in enumerate(c.ids):
            nf = len(c.feat_idx)
            if j < nf:
                f = int(c.feat_idx[j])
                val = nodes.features[s][f] if summed else nodes.features[s][int(c.feat_pos[j]), f]
            else:
                val = nodes.vectors[s] if summed else nodes.vectors[s][int(c.vec_pos[j - nf])]
            if float(val) != 0.0:
                out[nid] = float(val)
    return out
