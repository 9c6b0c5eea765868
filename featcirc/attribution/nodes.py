"""Node scores (DESIGN §5): the indirect effect of every node, by four methods.

For a node with clean value ``a_c`` and patch value ``a_p``, ``IE = m(clean, a := a_p) - m(clean)``.

- ``exact``: activation patching. Each node's patched variant is one row of a batched forward that
  starts at the node's block from the cached clean residual stream; nodes whose patch value equals
  the clean value (e.g. every position before the first differing token) have IE exactly 0 and are
  not run.
- ``atp``:  ``grad_a m|clean . (a_p - a_c)``: one clean and one patch forward, one backward.
- ``relp``: the same with the backward pass under the LRP rules (:mod:`featcirc.attribution.rules`).
- ``ig``:   ``mean_k grad_a m|(a_c + alpha_k (a_p - a_c)) . (a_p - a_c)``, ``alpha_k = k/N``,
  interpolating one site at a time (features and error together), all steps in one batch.

Vector nodes (error / component) sum the per-dimension products over ``d_model``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from featcirc.data import PairBatch, PairDataset
from featcirc.metric import logit_diff_from_resid
from featcirc.attribution.rules import LRPRules, lrp_rules
from featcirc.attribution.scores import AGGREGATIONS, LEVELS, METHODS, Cost, NodeScores
from featcirc.sites import Site
from featcirc.attribution.splice import SiteState, Splice, make_splice, record_resid_pre


@dataclass(frozen=True)
class ScoreSettings:
    """How to score nodes."""

    method: str = "relp"
    level: str = "feature"
    aggregation: str = "none"
    ig_steps: int = 10
    max_rows: int = 256  # rows per batched forward for exact variants and IG steps
    rules: LRPRules = field(default_factory=LRPRules)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; choose one of {LEVELS}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose one of {AGGREGATIONS}")
        if self.ig_steps < 1:
            raise ValueError("ig_steps must be >= 1")


# --------------------------------------------------------------------------------------------
# per-batch indirect effects: {site: (features IE [B,T,F] | None, vector IE [B,T])}
# --------------------------------------------------------------------------------------------
SiteIE = dict[str, tuple[Optional[torch.Tensor], torch.Tensor]]


def _metric(model: HookedTransformer, resid: torch.Tensor, batch: PairBatch, rows=None) -> torch.Tensor:
    ca, pa = batch.clean_answer, batch.patch_answer
    if rows is not None:
        ca, pa = ca[rows], pa[rows]
    return logit_diff_from_resid(model, resid, ca, pa)


def _record(splice: Splice, tokens: torch.Tensor, batch: PairBatch, cost: Cost):
    """No-grad run: site states, the clean residual entering every block, and the metric."""
    model = splice.model
    with torch.no_grad(), splice.record() as states, record_resid_pre(model) as resid_pre:
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
        m = _metric(model, resid, batch)
    cost.forward_passes += 1
    return dict(states), dict(resid_pre), m


def _gradient_ie(splice: Splice, batch: PairBatch, patch: dict[str, SiteState], rules: LRPRules,
                 cost: Cost) -> tuple[SiteIE, dict[str, SiteState], torch.Tensor, dict[str, SiteState]]:
    """AtP (rules off) / RelP (rules on): ``g . (a_p - a_c)`` from one clean forward + backward."""
    model = splice.model
    with torch.enable_grad(), lrp_rules(model, rules), splice.leaves() as leaves:
        resid = model(batch.clean, stop_at_layer=model.cfg.n_layers)
        m = _metric(model, resid, batch)
        inputs, index = [], []
        for s in splice.site_names:
            if leaves[s].features is not None:
                inputs.append(leaves[s].features)
                index.append((s, "f"))
            inputs.append(leaves[s].vector)
            index.append((s, "v"))
        grads = torch.autograd.grad(m.sum(), inputs, allow_unused=True)
    cost.forward_passes += 1
    cost.backward_passes += 1
    g = {key: (torch.zeros_like(x) if gr is None else gr) for key, x, gr in zip(index, inputs, grads)}
    out: SiteIE = {}
    clean: dict[str, SiteState] = {}
    node_grads: dict[str, SiteState] = {}
    for s in splice.site_names:
        st = leaves[s]
        f_c = None if st.features is None else st.features.detach()
        v_c = st.vector.detach()
        clean[s] = SiteState(f_c, v_c)
        node_grads[s] = SiteState(None if f_c is None else g[(s, "f")], g[(s, "v")])
        ie_f = None if f_c is None else g[(s, "f")] * (patch[s].features - f_c)
        ie_v = (g[(s, "v")] * (patch[s].vector - v_c)).sum(-1)
        out[s] = (ie_f, ie_v)
    return out, clean, m.detach(), node_grads


def _ig_ie(splice: Splice, batch: PairBatch, clean: dict[str, SiteState], patch: dict[str, SiteState],
           resid_pre: dict[int, torch.Tensor], steps: int, max_rows: int,
           cost: Cost) -> tuple[SiteIE, dict[str, SiteState]]:
    """Integrated gradients, one site at a time, the N interpolation steps batched together.

    Also returns each node's path-averaged gradient ``mean_k grad_a m``."""
    model = splice.model
    B = batch.clean.shape[0]
    alphas = torch.arange(steps, dtype=torch.float32) / steps
    per_chunk = max(1, max_rows // B)
    out: SiteIE = {}
    node_grads: dict[str, SiteState] = {}
    for s in splice.site_names:
        site = Site.parse(s)
        f_c, v_c = clean[s].features, clean[s].vector
        df = None if f_c is None else patch[s].features - f_c
        dv = patch[s].vector - v_c
        g_f = None if f_c is None else torch.zeros_like(f_c)
        g_v = torch.zeros_like(v_c)
        for start in range(0, steps, per_chunk):
            a = alphas[start:start + per_chunk].to(v_c.device, v_c.dtype)
            S = a.shape[0]
            shape = (S,) + (1,) * v_c.dim()
            v_a = (v_c.unsqueeze(0) + a.view(shape) * dv.unsqueeze(0)).flatten(0, 1).requires_grad_()
            f_a = None
            if f_c is not None:
                f_a = (f_c.unsqueeze(0) + a.view(shape) * df.unsqueeze(0)).flatten(0, 1).requires_grad_()

            def replace(x: torch.Tensor, f_a=f_a, v_a=v_a) -> torch.Tensor:  # noqa: ARG001
                return v_a if f_a is None else splice.decode(s, f_a) + v_a

            rows = torch.arange(B).repeat(S)
            with torch.enable_grad(), splice.hooks({s: replace}):
                resid = model(resid_pre[site.block].repeat(S, 1, 1), start_at_layer=site.block,
                              stop_at_layer=model.cfg.n_layers)
                m = _metric(model, resid, batch, rows)
                inputs = [v_a] if f_a is None else [f_a, v_a]
                grads = torch.autograd.grad(m.sum(), inputs)
            cost.forward_passes += 1
            cost.backward_passes += 1
            g_v += grads[-1].view(S, *v_c.shape).sum(0)
            if f_a is not None:
                g_f += grads[0].view(S, *f_c.shape).sum(0)
        g_f = None if f_c is None else g_f / steps
        g_v = g_v / steps
        node_grads[s] = SiteState(g_f, g_v)
        out[s] = (None if f_c is None else g_f * df, (g_v * dv).sum(-1))
    return out, node_grads


def _exact_ie(splice: Splice, batch: PairBatch, clean: dict[str, SiteState], patch: dict[str, SiteState],
              resid_pre: dict[int, torch.Tensor], m_clean: torch.Tensor, max_rows: int,
              cost: Cost) -> SiteIE:
    """Activation patching, one node per row; rows of one site share a forward from its block."""
    model = splice.model
    out: SiteIE = {}
    for s in splice.site_names:
        site = Site.parse(s)
        f_c, v_c = clean[s].features, clean[s].vector
        dv = patch[s].vector - v_c  # [B,T,d]
        ie_v = torch.zeros(dv.shape[:2], dtype=dv.dtype, device=dv.device)
        ie_f = None if f_c is None else torch.zeros_like(f_c)
        # variants: (pair row, position, delta vector, where to write the result)
        vb, vt = torch.nonzero((dv != 0).any(-1), as_tuple=True)
        deltas = [dv[vb, vt]]
        rows, poss = [vb], [vt]
        n_vec = vb.numel()
        if f_c is not None:
            df = patch[s].features - f_c
            fb, ft, fi = torch.nonzero(df != 0, as_tuple=True)
            dirs = splice.decoder_directions(s)
            deltas.append(df[fb, ft, fi].unsqueeze(-1) * dirs[fi])
            rows.append(fb)
            poss.append(ft)
        delta = torch.cat(deltas)
        row = torch.cat(rows)
        pos = torch.cat(poss)
        effects = torch.empty(row.numel(), dtype=dv.dtype, device=dv.device)
        start_block = site.block
        for lo in range(0, row.numel(), max_rows):
            sl = slice(lo, lo + max_rows)
            r, p, d = row[sl], pos[sl], delta[sl]
            k = torch.arange(r.numel(), device=r.device)

            def add(x: torch.Tensor, k=k, p=p, d=d) -> torch.Tensor:
                x = x.clone()
                x[k, p] += d
                return x

            with torch.no_grad(), splice.hooks({s: add}):
                resid = model(resid_pre[start_block][r], start_at_layer=start_block,
                              stop_at_layer=model.cfg.n_layers)
                effects[sl] = _metric(model, resid, batch, r) - m_clean[r]
            cost.forward_passes += 1
        ie_v[vb, vt] = effects[:n_vec]
        if f_c is not None:
            ie_f[fb, ft, fi] = effects[n_vec:]
        out[s] = (ie_f, ie_v)
    return out


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------
def score_nodes(
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
    max_rows: int = 256,
    progress: bool = True,
) -> NodeScores:
    """Score every node of ``level`` with ``method``, averaged over the pairs of ``data``.

    ``rules`` overrides the LRP rules used by ``relp`` (default: all on); ``atp`` never uses them.
    """
    settings = ScoreSettings(method, level, aggregation, ig_steps, max_rows,
                             rules if rules is not None else LRPRules())
    splice = make_splice(model, level, saes, sites)
    return score_nodes_with_splice(splice, data, settings, progress=progress)[0]


@dataclass
class BatchRecord:
    """What the edge pass needs from the node pass for one batch."""

    batch: PairBatch
    clean: dict[str, SiteState]
    patch: dict[str, SiteState]
    grads: dict[str, SiteState]  # node gradients (path-averaged for IG)
    resid_pre: Optional[dict[int, torch.Tensor]] = None
    ie: Optional[SiteIE] = None  # per-pair indirect effects {site: (features [B,T,F], vector [B,T])}


def score_nodes_with_splice(
    splice: Splice, data: PairDataset, settings: ScoreSettings, *, progress: bool = True,
    keep_records: bool = False,
) -> tuple[NodeScores, list[BatchRecord]]:
    """:func:`score_nodes` on a prepared splice; optionally keep per-batch states and gradients."""
    model = splice.model
    method, aggregation, ig_steps, max_rows = (settings.method, settings.aggregation,
                                               settings.ig_steps, settings.max_rows)
    if data.n_pairs == 0:
        raise ValueError("no pairs to score: the dataset is empty")
    records: list[BatchRecord] = []
    T = data.max_len
    cost = Cost()
    sums_f: dict[str, torch.Tensor] = {}
    sums_v: dict[str, torch.Tensor] = {}
    acts_f: dict[str, torch.Tensor] = {}
    acts_v: dict[str, torch.Tensor] = {}
    m_clean_sum = m_patch_sum = 0.0
    t0 = time.perf_counter()
    for batch in tqdm(data.batches, desc=f"{method} node scores", disable=not progress, leave=False):
        patch, _, m_patch = _record(splice, batch.patch, batch, cost)
        resid_pre = grads = None
        if method in ("atp", "relp"):
            rules_used = settings.rules if method == "relp" else LRPRules.none()
            ie, clean, m_clean, grads = _gradient_ie(splice, batch, patch, rules_used, cost)
        else:
            clean, resid_pre, m_clean = _record(splice, batch.clean, batch, cost)
            if method == "ig":
                ie, grads = _ig_ie(splice, batch, clean, patch, resid_pre, ig_steps, max_rows, cost)
            else:
                ie = _exact_ie(splice, batch, clean, patch, resid_pre, m_clean, max_rows, cost)
        if keep_records:
            records.append(BatchRecord(batch, clean, patch, grads or {}, resid_pre,
                                       {k: (None if f is None else f.detach(), v.detach()) for k, (f, v) in ie.items()}))
        m_clean_sum += float(m_clean.sum())
        m_patch_sum += float(m_patch.sum())
        for s, (ie_f, ie_v) in ie.items():
            _accumulate(sums_v, s, ie_v, T, aggregation)
            _accumulate(acts_v, s, clean[s].vector.norm(dim=-1), T, "none")
            if ie_f is not None:
                _accumulate(sums_f, s, ie_f, T, aggregation)
                _accumulate(acts_f, s, clean[s].features, T, "none")
    cost.seconds = time.perf_counter() - t0
    n = data.n_pairs
    feature_acts = {s: v / n for s, v in acts_f.items()}
    vector_acts = {s: v / n for s, v in acts_v.items()}
    if aggregation == "sum":
        feature_acts = {s: v.sum(0) for s, v in feature_acts.items()}
        vector_acts = {s: v.sum(0) for s, v in vector_acts.items()}
    scores = NodeScores(
        method=method, level=settings.level, aggregation=aggregation, sites=splice.site_names,
        features={s: v / n for s, v in sums_f.items()},
        vectors={s: v / n for s, v in sums_v.items()},
        feature_acts=feature_acts, vector_acts=vector_acts, n_pairs=n,
        metric_clean=m_clean_sum / n, metric_patch=m_patch_sum / n, cost=cost,
        info=dict(ig_steps=ig_steps if method == "ig" else None,
                  rules=vars(settings.rules) if method == "relp" else None,
                  n_layers=model.cfg.n_layers),
    )
    return scores, records


def _accumulate(store: dict[str, torch.Tensor], site: str, per_pair: torch.Tensor, T: int,
                aggregation: str) -> None:
    """Sum a ``[B, t, ...]`` per-pair tensor over pairs into ``[T, ...]`` (or ``[...]`` summed over positions)."""
    per_pair = per_pair.detach().float()
    if aggregation == "sum":
        summed = per_pair.sum(dim=(0, 1))
    else:
        summed = torch.zeros((T,) + per_pair.shape[2:], dtype=per_pair.dtype, device=per_pair.device)
        summed[: per_pair.shape[1]] = per_pair.sum(0)
    store[site] = store[site] + summed if site in store else summed
