"""Node effects (docs/design.md §5), batch by batch, for each estimator of the registry.

:func:`record_batch` runs the patch prompts and hands the rest to the method's estimator object
(:mod:`featcirc.attribution.estimators`); the functions below are the estimators' building blocks.

For a node with clean value ``a_c`` and patch value ``a_p`` the *score* is the effect of removing its
clean value, ``m(clean) - m(clean with a := a_p)`` (positive: the node supports the clean answer).

- ``exact``: activation patching. Each node's patched variant is one row of a batched forward that
  starts at the node's block from the cached clean residual stream; nodes whose patch value equals
  the clean value (e.g. every position before the first differing token) have effect exactly 0 and
  are not run.
- ``gradient`` (AtP, RelP): ``grad_a m|clean . (a_c - a_p)``: one clean and one patch forward, one
  backward (under the method's LRP rules).
- ``integrated`` (IG): ``mean_k grad_a m|(a_c + alpha_k (a_p - a_c)) . (a_c - a_p)``, ``alpha_k = k/N``,
  interpolating one site at a time (features and error together), the steps batched.

Vector nodes (error / component) sum the per-dimension products over the site's width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from featcirc.attribution.rules import LRPRules, lrp_rules
from featcirc.attribution.cost import Cost
from featcirc.attribution.splice import SiteState, Splice, record_resid_pre
from featcirc.data import PairBatch
from featcirc.metric import logit_diff_from_resid
from featcirc.sites import Site

if TYPE_CHECKING:
    from featcirc.attribution.methods import Method


@dataclass
class BatchRecord:
    """Everything one batch of the node pass computed; every field is always filled.

    ``clean`` / ``patch``: every site's node values on the clean and patch prompts.
    ``grads``: node gradients of the metric as the estimator defines them: on the clean run
    (``Gradient``), averaged along the interpolation path (``Integrated``); zeros for one without
    gradients (``Exact``).
    ``resid_pre``: the clean residual stream entering each block (``{block: [B, T, d]}``).
    ``effects``: every pair's node scores (``SiteState`` with features ``[B, T, F]`` and vector ``[B, T]``).
    ``m_clean`` / ``m_patch``: the metric on the clean and patch prompts, ``[B]``.
    """

    batch: PairBatch
    clean: dict[Site, SiteState]
    patch: dict[Site, SiteState]
    grads: dict[Site, SiteState]
    resid_pre: dict[int, torch.Tensor]
    effects: dict[Site, SiteState]
    m_clean: torch.Tensor
    m_patch: torch.Tensor

    def nbytes(self) -> int:
        tensors = [self.m_clean, self.m_patch, *self.resid_pre.values()]
        for states in (self.clean, self.patch, self.grads, self.effects):
            for st in states.values():
                tensors += [t for t in (st.features, st.vector) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def batch_metric(model, resid: torch.Tensor, batch: PairBatch, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ``[rows]`` metric from the final residual stream of (a selection of) the batch's pairs."""
    ca, pa = batch.clean_answer, batch.patch_answer
    if rows is not None:
        ca, pa = ca[rows], pa[rows]
    return logit_diff_from_resid(model, resid, ca, pa)


def record_batch(splice: Splice, batch: PairBatch, method: Method, ig_steps: int, max_rows: int,
                 cost: Cost) -> BatchRecord:
    """Run the method's estimator on one batch (docs/design.md §5): the patch run, then the estimator's."""
    patch, _, m_patch = _record(splice, batch.patch, batch, cost)
    run = method.estimator.node_effects(splice, batch, method, patch, ig_steps, max_rows, cost)
    return BatchRecord(batch, run.clean, patch, run.grads, run.resid_pre, run.effects, run.m_clean, m_patch)


def _dot(grad: SiteState, delta: SiteState) -> SiteState:
    """Per-node ``g . delta``: elementwise for features, summed over the width for the vector node."""
    f = None if grad.features is None else (grad.features * delta.features).detach()
    return SiteState(f, (grad.vector * delta.vector).sum(-1).detach())


def _record(splice: Splice, tokens: torch.Tensor, batch: PairBatch, cost: Cost):
    """No-grad run: site states, the residual stream entering every block, and the metric."""
    model = splice.model
    with torch.no_grad(), splice.record() as states, record_resid_pre(model) as resid_pre:
        m = batch_metric(model, model(tokens, stop_at_layer=model.cfg.n_layers), batch)
    cost.forward_passes += 1
    return dict(states), dict(resid_pre), m


def _gradients(splice: Splice, batch: PairBatch, rules: LRPRules, cost: Cost):
    """One clean forward with leaf nodes and one backward (under ``rules``): states and node gradients."""
    model = splice.model
    with torch.enable_grad(), lrp_rules(model, rules), splice.leaves() as leaves, \
            record_resid_pre(model) as resid_pre:
        m = batch_metric(model, model(batch.clean, stop_at_layer=model.cfg.n_layers), batch)
        inputs = [t for s in splice.sites for t in (leaves[s].features, leaves[s].vector) if t is not None]
        grads = iter(torch.autograd.grad(m.sum(), inputs, allow_unused=True))
    cost.forward_passes += 1
    cost.backward_passes += 1
    clean, node_grads = {}, {}
    for s in splice.sites:
        st = leaves[s]
        g_f = None if st.features is None else _or_zeros(next(grads), st.features)
        node_grads[s] = SiteState(g_f, _or_zeros(next(grads), st.vector))
        clean[s] = st.detach()
    return clean, node_grads, dict(resid_pre), m.detach()


def _gradients_by_rules(splice: Splice, batch: PairBatch, method: Method, cost: Cost):
    """:func:`_gradients` once per distinct rule set of the method's nodes (one pass without overrides)."""
    clean, grads, resid_pre, m = _gradients(splice, batch, method.rules, cost)
    kinds = {s: ("feature" if splice.has_sae(s) else None, "error" if splice.has_sae(s) else "component")
             for s in splice.sites}
    needed = {method.rules_for(s.kind, k) for s, ks in kinds.items() for k in ks if k} - {method.rules}
    for rules in needed:
        _, other, _, _ = _gradients(splice, batch, rules, cost)
        for s, (fk, vk) in kinds.items():
            f = other[s].features if fk and method.rules_for(s.kind, fk) == rules else grads[s].features
            v = other[s].vector if method.rules_for(s.kind, vk) == rules else grads[s].vector
            grads[s] = SiteState(f, v)
    return clean, grads, resid_pre, m


def _or_zeros(grad: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _integrated_gradients(splice: Splice, batch: PairBatch, clean: dict[Site, SiteState],
                          patch: dict[Site, SiteState], resid_pre: dict[int, torch.Tensor], steps: int,
                          max_rows: int, cost: Cost) -> dict[Site, SiteState]:
    """Each node's path-averaged gradient ``mean_k grad_a m(a_c + alpha_k (a_p - a_c))``, one site at a
    time, the steps batched together (``max_rows`` rows per forward)."""
    model = splice.model
    B = batch.clean.shape[0]
    alphas = torch.arange(steps, dtype=torch.float32) / steps
    per_chunk = max(1, max_rows // B)
    out: dict[Site, SiteState] = {}
    for s in splice.sites:
        c, d = clean[s], patch[s] - clean[s]
        g_f = None if c.features is None else torch.zeros_like(c.features)
        g_v = torch.zeros_like(c.vector)
        for start in range(0, steps, per_chunk):
            a = alphas[start:start + per_chunk].to(c.vector.device, c.vector.dtype)
            S = a.shape[0]

            def path(x0: torch.Tensor, dx: torch.Tensor, a=a) -> torch.Tensor:
                shape = (S,) + (1,) * x0.dim()
                return (x0.unsqueeze(0) + a.view(shape) * dx.unsqueeze(0)).flatten(0, 1).requires_grad_()

            v_a = path(c.vector, d.vector)
            f_a = None if c.features is None else path(c.features, d.features)
            state = SiteState(f_a, v_a)
            rows = torch.arange(B).repeat(S)
            with torch.enable_grad(), splice.hooks({s: lambda x, state=state: splice.combine(s, state)}):
                resid = model(resid_pre[s.block].repeat(S, 1, 1), start_at_layer=s.block,
                              stop_at_layer=model.cfg.n_layers)
                m = batch_metric(model, resid, batch, rows)
                grads = torch.autograd.grad(m.sum(), [t for t in (f_a, v_a) if t is not None])
            cost.forward_passes += 1
            cost.backward_passes += 1
            g_v += grads[-1].view(S, *c.vector.shape).sum(0)
            if f_a is not None:
                g_f += grads[0].view(S, *c.features.shape).sum(0)
        out[s] = SiteState(None if g_f is None else g_f / steps, g_v / steps)
    return out


def _exact(splice: Splice, batch: PairBatch, clean: dict[Site, SiteState], patch: dict[Site, SiteState],
           resid_pre: dict[int, torch.Tensor], m_clean: torch.Tensor, max_rows: int,
           cost: Cost) -> dict[Site, SiteState]:
    """Activation patching, one node per row; rows of one site share a forward from its block."""
    model = splice.model
    out: dict[Site, SiteState] = {}
    for s in splice.sites:
        c, d = clean[s], patch[s] - clean[s]
        eff_v = torch.zeros(d.vector.shape[:2], dtype=d.vector.dtype, device=d.vector.device)
        eff_f = None if c.features is None else torch.zeros_like(c.features)
        # variants: (pair row, position, change of the site vector); vector nodes first, then features
        vb, vt = torch.nonzero((d.vector != 0).any(-1), as_tuple=True)
        deltas, rows, poss = [d.vector[vb, vt]], [vb], [vt]
        if c.features is not None:
            fb, ft, fi = torch.nonzero(d.features != 0, as_tuple=True)
            deltas.append(d.features[fb, ft, fi].unsqueeze(-1) * splice.decoder_directions(s)[fi])
            rows.append(fb)
            poss.append(ft)
        delta, row, pos = torch.cat(deltas), torch.cat(rows), torch.cat(poss)
        effects = torch.empty(row.numel(), dtype=d.vector.dtype, device=d.vector.device)
        for lo in range(0, row.numel(), max_rows):
            sl = slice(lo, lo + max_rows)
            r, p, dx = row[sl], pos[sl], delta[sl]
            k = torch.arange(r.numel(), device=r.device)

            def add(x: torch.Tensor, k=k, p=p, dx=dx) -> torch.Tensor:
                x = x.clone()
                x[k, p] += dx
                return x

            with torch.no_grad(), splice.hooks({s: add}):
                resid = model(resid_pre[s.block][r], start_at_layer=s.block, stop_at_layer=model.cfg.n_layers)
                effects[sl] = m_clean[r] - batch_metric(model, resid, batch, r)
            cost.forward_passes += 1
        eff_v[vb, vt] = effects[:vb.numel()]
        if eff_f is not None:
            eff_f[fb, ft, fi] = effects[vb.numel():]
        out[s] = SiteState(eff_f, eff_v)
    return out


class NodeAccumulator:
    """Sums of per-pair node effects and activations over batches (``T`` positions, zero-padded).

    :meth:`tensors` exposes every sum as one flat dict, so that several processes can add theirs
    (``torch.distributed.all_reduce``) before :meth:`finish` turns them into means.
    """

    def __init__(self, sites: list[Site], n_positions: int, aggregation: str, keep_pairs: bool) -> None:
        self.sites, self.T, self.aggregation, self.keep_pairs = sites, n_positions, aggregation, keep_pairs
        self.sums: dict[str, torch.Tensor] = {}
        self.pairs: list[tuple[BatchRecord, Optional[torch.Tensor]]] = []

    def add(self, record: BatchRecord, index: Optional[torch.Tensor] = None) -> None:
        """Add a batch's effects; ``index`` (``[T_batch]``) is the slot of each token position
        (:class:`featcirc.data.align.Alignment`; default: the position itself)."""
        for s in self.sites:
            eff, cl = record.effects[s], record.clean[s]
            self._add(f"effect.v.{s}", eff.vector, self.aggregation, index)
            self._add(f"act.v.{s}", cl.vector.norm(dim=-1), "none", index)
            if eff.features is not None:
                self._add(f"effect.f.{s}", eff.features, self.aggregation, index)
                self._add(f"act.f.{s}", cl.features, "none", index)
        self._add_scalar("metric.clean", record.m_clean.sum())
        self._add_scalar("metric.patch", record.m_patch.sum())
        self._add_scalar("pairs", torch.tensor(float(record.m_clean.numel())))
        if self.keep_pairs:
            self.pairs.append((record, index))

    def _slots(self, per_pair: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        """``[B, T_batch, ...]`` -> ``[B, T, ...]``: each position moved to its slot, others zero."""
        full = per_pair.new_zeros((per_pair.shape[0], self.T) + per_pair.shape[2:])
        if index is None:
            full[:, : per_pair.shape[1]] = per_pair
        else:
            full[:, index.to(per_pair.device)] = per_pair
        return full

    def _add(self, key: str, per_pair: torch.Tensor, aggregation: str, index: Optional[torch.Tensor] = None) -> None:
        per_pair = per_pair.detach().float()
        if aggregation == "sum":
            summed = per_pair.sum(dim=(0, 1))
        else:
            summed = self._slots(per_pair, index).sum(0)
        self.sums[key] = self.sums[key] + summed if key in self.sums else summed

    def _add_scalar(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().double().reshape(1)
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.sums

    def pair_effects(self) -> dict[str, tuple[Optional[torch.Tensor], torch.Tensor]]:
        """Every pair's per-position effects, zero-padded to ``T`` positions (slots), pairs in batch order."""
        out = {}
        for s in self.sites:
            vec = torch.cat([self._slots(r.effects[s].vector, i) for r, i in self.pairs])
            feats = None
            if self.pairs and self.pairs[0][0].effects[s].features is not None:
                feats = torch.cat([self._slots(r.effects[s].features, i) for r, i in self.pairs])
            out[s.name] = (feats, vec)
        return out

    def finish(self) -> dict:
        """Means over pairs: ``features``, ``vectors``, ``feature_acts``, ``vector_acts``, metrics, count."""
        n = int(self.sums["pairs"].item())
        mean = {k: v / n for k, v in self.sums.items()}

        def acts(key: str) -> torch.Tensor:
            return mean[key].sum(0) if self.aggregation == "sum" else mean[key]

        out = dict(features={}, vectors={}, feature_acts={}, vector_acts={}, n_pairs=n,
                   metric_clean=float(mean["metric.clean"]), metric_patch=float(mean["metric.patch"]))
        for s in self.sites:
            out["vectors"][s.name] = mean[f"effect.v.{s}"]
            out["vector_acts"][s.name] = acts(f"act.v.{s}")
            if f"effect.f.{s}" in mean:
                out["features"][s.name] = mean[f"effect.f.{s}"]
                out["feature_acts"][s.name] = acts(f"act.f.{s}")
        return out
