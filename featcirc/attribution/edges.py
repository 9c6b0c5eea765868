"""Edge scores between the nodes of consecutive spliced sites (docs/design.md §7), vectorised.

The site graph: a downstream site ``d`` reads from ``R``, the last spliced residual-stream site before
it (``embed`` or ``resid.l``; none: the clean stream), and from every spliced attention / MLP site
between ``R`` and ``d``. With every site spliced this is Marks et al.'s graph
(``R -> attn.L, R -> mlp.L, attn.L -> mlp.L, R/attn.L/mlp.L -> resid.L``); with sparse sites (e.g.
Gemma Scope 2's layers 5, 9, 12, 15) the Jacobian runs through the unspliced layers in between.

    e(u -> d) = g_d . (d a_d / d a_u) . (a_c,u - a_p,u)

with ``g_d`` the node gradient of ``d`` (held constant; path-averaged for IG), the Jacobian on the
clean run (for IG averaged over ``a = a_c + alpha_k (a_p - a_c)``, all inputs moving together) with
the method's LRP rules, sites between ``u`` and ``d`` held constant. Edges into ``metric`` are the
node scores of the last residual site's nodes.

How it is computed, per group of downstream sites sharing ``R`` (one forward of the blocks they span):

1. *Encoder.* Each downstream node's gradient is pulled back to its site's input ``x_d`` in closed
   form: a feature ``i`` gives ``g_i [f_i != 0] E_i`` (``E``: the encoder directions), the error node
   gives ``g - E^T([f != 0] (D g))``, a component node ``g``.
2. *Blocks.* Those ``x_d``-cotangents are pulled back to the upstream sites' values in one batched
   backward (``is_grads_batched``) over a single shared forward. Cotangents are packed: pairs are
   independent rows, and when ``d`` depends on its inputs position by position (no live attention in
   between) nodes at different positions share a row too. Where ``x_d`` is the plain sum of its
   inputs (``resid.L = R + attn.L + mlp.L``) no backward is needed: the Jacobian is the identity.
3. *Upstream nodes.* The pulled-back gradients are projected on the upstream candidates (decoder
   directions for features, the delta for vector nodes) and multiplied by their deltas.

:mod:`featcirc.attribution.reference` computes the same with one backward per node, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from transformer_lens import HookedTransformer

from featcirc.attribution.candidates import SiteCandidates
from featcirc.attribution.methods import Method
from featcirc.attribution.nodes import BatchRecord
from featcirc.attribution.rules import lrp_rules
from featcirc.attribution.cost import Cost
from featcirc.attribution.splice import Splice
from featcirc.sites import Site, sort_sites

_BUDGET = 1 << 25  # elements per chunk of packed cotangents / projections


@dataclass(frozen=True)
class EdgeGroup:
    """Downstream sites sharing their residual input ``upstream`` and one forward of blocks ``start..stop``.

    ``leaves``: sites whose values enter as leaves (``upstream`` and every spliced attention / MLP site
    in the span); ``parents[d]``: the sites ``d`` receives edges from; ``positionwise[d]``: ``d``
    depends on its inputs position by position; ``identity[d]``: ``x_d`` is the sum of its parents.
    """

    upstream: Optional[Site]
    start: int
    stop: int
    leaves: tuple[Site, ...]
    parents: dict[Site, tuple[Site, ...]]
    positionwise: dict[Site, bool]
    identity: dict[Site, bool]


def edge_groups(model: HookedTransformer, sites: Iterable[Site], skip_sites: Iterable[Site] = ()) -> list[EdgeGroup]:
    """The site graph of ``sites`` (see the module doc), grouped by residual input. ``skip_sites``: skip
    transcoders, whose linear skip keeps ``resid.L`` from being the plain sum of its inputs."""
    skip_sites = {Site.parse(s) for s in skip_sites}
    spliced = sort_sites(sites)
    parallel = bool(model.cfg.parallel_attn_mlp)
    by_upstream: dict[Optional[Site], dict[Site, tuple[Site, ...]]] = {}
    for i, d in enumerate(spliced):
        if d.kind == "embed":
            continue
        before = spliced[:i]
        last_resid = max((j for j, s in enumerate(before) if s.is_resid), default=None)
        R = None if last_resid is None else before[last_resid]
        between = before if last_resid is None else before[last_resid + 1:]  # attention / MLP sites
        if parallel and d.is_mlp:  # attention and MLP read the same stream
            between = [s for s in between if not (s.is_attention and s.layer == d.layer)]
        parents = tuple(([R] if R is not None else []) + list(between))
        if parents:
            by_upstream.setdefault(R, {})[d] = parents
    groups = []
    for R, parents in by_upstream.items():
        start = 0 if R is None else R.layer + 1
        inner = sort_sites({u for ps in parents.values() for u in ps if u != R})
        leaves = tuple(([R] if R is not None else []) + inner)
        attn_leaf = {s.layer for s in inner if s.is_attention}
        positionwise, identity = {}, {}
        for d in parents:
            feeding = [layer for layer in range(start, d.block + 1)
                       if not (layer == d.block and (d.is_attention or (parallel and d.is_mlp)))]
            positionwise[d] = not d.is_attention and all(layer in attn_leaf for layer in feeding)
            identity[d] = (d.kind == "resid" and start == d.layer and Site("attn", d.layer) in inner
                           and (Site("mlp", d.layer) in inner or bool(model.cfg.attn_only)
                                or (Site("tc", d.layer) in inner and Site("tc", d.layer) not in skip_sites)))
        groups.append(EdgeGroup(R, start, max(d.block for d in parents), leaves, parents, positionwise,
                                identity))
    return groups


# --------------------------------------------------------------------------------------------
def batch_edges(splice: Splice, group: EdgeGroup, record: BatchRecord, cands: dict[Site, SiteCandidates],
                method: Method, ig_steps: int, summed: bool, max_rows: int, cost: Cost,
                out: dict[tuple[Site, Site], torch.Tensor]) -> None:
    """Add one batch's edges of ``group`` to ``out`` (``{(d, u): [n_cand(d), n_cand(u)]}``)."""
    model = splice.model
    B = record.batch.clean.shape[0]
    S = method.estimator.path_steps(ig_steps)  # interpolation points per pair (1: the clean run)
    alphas = torch.arange(S, dtype=torch.float32) / S
    # rows n = s * B + b: pair b at interpolation step s
    pair = torch.arange(B).repeat(S)
    alpha = alphas.repeat_interleave(B)
    x_clean = {u: splice.combine(u, record.clean[u]) for u in group.leaves}
    x_delta = {u: splice.combine(u, record.patch[u]) - x_clean[u] for u in group.leaves}
    leaves = {}
    for u in group.leaves:
        shape = (-1,) + (1,) * (x_clean[u].dim() - 1)
        leaves[u] = (x_clean[u][pair] + alpha.view(shape) * x_delta[u][pair]).detach().requires_grad_()
    down = [d for d in group.parents if len(cands[d])]
    if not down:
        return
    need_graph = any(not group.identity[d] for d in down)
    captured: dict[Site, torch.Tensor] = {}
    captured_in: dict[Site, torch.Tensor] = {}  # transcoders: the MLP input their encoder reads

    def make(site: Site) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(x: torch.Tensor) -> torch.Tensor:
            if site in group.parents:
                captured[site] = x
                captured_in[site] = splice.encoder_input(site, x)
            return leaves[site] if site in leaves else x

        return fn

    hooked = [s for s in list(group.leaves) + list(group.parents) if s != group.upstream]
    with torch.enable_grad() if need_graph else torch.no_grad(), lrp_rules(model, method.rules), \
            splice.hooks({s: make(s) for s in hooked}):
        x = leaves[group.upstream] if group.upstream is not None else record.resid_pre[group.start][pair]
        for layer in range(group.start, group.stop + 1):
            x = model.blocks[layer](x)
    cost.forward_passes += 1
    for d in down:
        # a transcoder's nodes read two tensors: cotangents live on [x_out | x_in] (docs/design.md §7)
        x_d = torch.cat([captured[d], captured_in[d]], -1) if d.is_transcoder else captured[d]
        rows = _downstream_rows(splice, d, cands[d], record, captured_in[d].detach(), pair, method, summed)
        if rows is None:
            continue
        for packed in _pack(rows, group.positionwise[d] and not summed, x_shape=x_d.shape, max_rows=max_rows):
            if group.identity[d]:
                grads = {u: packed.cotangent for u in group.parents[d]}
            else:
                inputs = [leaves[u] for u in group.parents[d]]
                gs = torch.autograd.grad(x_d, inputs, packed.cotangent, retain_graph=True,
                                         is_grads_batched=True, allow_unused=True)
                cost.backward_passes += 1
                grads = {u: (torch.zeros_like(packed.cotangent[..., :0]) if g is None else g)
                         for u, g in zip(group.parents[d], gs)}
            for u in group.parents[d]:
                if grads[u].shape[-1] == 0:
                    continue
                _project(splice, u, cands[u], grads[u], packed, record, pair, S, summed, out[(d, u)])


@dataclass
class _Rows:
    """Downstream nodes to pull back: row ``m`` is candidate ``cand[m]`` of batch row ``n[m]``, with its
    cotangent ``w[m]`` at the site's input (``[T, d]`` when summed, else ``[d]`` at ``pos[m]``)."""

    n: torch.Tensor
    cand: torch.Tensor
    pos: torch.Tensor
    w: torch.Tensor


def _downstream_rows(splice: Splice, d: Site, cands: SiteCandidates, record: BatchRecord, x_enc: torch.Tensor,
                     pair: torch.Tensor, method: Method, summed: bool) -> Optional[_Rows]:
    """Step 1: every live (row, candidate)'s gradient pulled back through ``d``'s encoder (closed form).
    A row is live when its gradient is nonzero and, for a feature, the feature is active there.
    ``x_enc`` is what the encoder reads (the site vector; a transcoder's MLP input). At a transcoder site
    the cotangents are on ``[x_out | x_in]``: a feature's ``[0 | g_i E_i]``, the error's
    ``[g | -E^T([f != 0] (D g))]`` (``eps = x_out - dec(enc(x_in))``)."""
    N, T = x_enc.shape[:2]
    grad = record.grads[d]
    nf = cands.n_features
    ns, cs, ws = [], [], []
    active = None
    if splice.has_sae(d):
        active = method.estimator.active_features(splice, d, record, x_enc, pair)
        E, D = splice.encoder_directions(d), splice.decoder_directions(d)
        if d.is_transcoder:
            E_out = torch.cat([torch.zeros_like(D), E], -1)  # a feature does not read x_out
    pos = cands.positions.clamp(max=T - 1)
    valid = torch.ones(len(cands), dtype=torch.bool) if summed else cands.positions < T
    if nf:
        fi, fp = cands.feat_idx, pos[:nf]
        gf = grad.features[pair][:, :, fi] * active[:, :, fi]  # [N, T, nf]
        if not summed:
            gf = gf[:, fp, torch.arange(nf)][:, None, :]  # [N, 1, nf]: each at its own position
        gate = gf * valid[:nf]
        n, c = torch.nonzero(gate.abs().sum(1) > 0, as_tuple=True)
        w = gate[n, :, c][..., None] * (E_out if d.is_transcoder else E)[fi[c]][:, None, :]  # [M, T or 1, d]
        ns.append(n)
        cs.append(c)
        ws.append(w if summed else w[:, 0])
    if len(cands) > nf:
        gv = grad.vector[pair]  # [N, T, d]
        vp = pos[nf:]
        g = gv[:, None] if summed else gv[:, vp][:, :, None]  # [N, nv, T or 1, d]
        g = g * valid[nf:, None, None]
        n, c = torch.nonzero(g.flatten(2).abs().sum(-1) > 0, as_tuple=True)
        w = g[n, c]  # [M, T or 1, d]
        if active is not None:  # error node: (I - E^T diag(f != 0) D) g
            act = active[n] if summed else active[n, vp[c]][:, None]
            if d.is_transcoder:
                w = torch.cat([w, -((w @ D.T) * act) @ E], -1)
            else:
                w = w - ((w @ D.T) * act) @ E
        ns.append(n)
        cs.append(c + nf)
        ws.append(w if summed else w[:, 0])
    n, c = torch.cat(ns), torch.cat(cs)
    if not len(n):
        return None
    return _Rows(n, c, torch.full_like(c, -1) if summed else cands.positions[c], torch.cat(ws))


@dataclass
class _Packed:
    """Rows packed into ``K`` cotangents ``[K, N, T, d]``; ``owner[k, n, t]`` (positionwise) or
    ``owner[k, n]`` is the downstream candidate whose gradient occupies that slot (-1: none)."""

    cotangent: torch.Tensor
    owner: torch.Tensor
    positionwise: bool


def _pack(rows: _Rows, positionwise: bool, x_shape: torch.Size, max_rows: int) -> Iterable[_Packed]:
    """Step 2's packing: rows of different pairs (and, positionwise, of different positions) share a cotangent."""
    N, T, d = x_shape
    slot = rows.n * T + rows.pos if positionwise else rows.n
    order = torch.argsort(slot, stable=True)
    sorted_slot = slot[order]
    first = torch.searchsorted(sorted_slot, sorted_slot, side="left")
    rank = torch.empty_like(slot)
    rank[order] = torch.arange(len(slot)) - first  # the k-th row of its slot goes to cotangent k
    K = int(rank.max()) + 1
    per_chunk = max(1, min(max_rows, _BUDGET // max(1, N * T * d)))
    for k0 in range(0, K, per_chunk):
        k1 = min(K, k0 + per_chunk)
        sel = torch.nonzero((rank >= k0) & (rank < k1)).flatten()
        k = rank[sel] - k0
        cot = rows.w.new_zeros(k1 - k0, N, T, d)
        if rows.w.dim() == 3:  # summed: [T, d] per row
            cot[k, rows.n[sel]] = rows.w[sel]
        else:
            cot[k, rows.n[sel], rows.pos[sel]] = rows.w[sel]
        if positionwise:
            owner = torch.full((k1 - k0, N, T), -1, dtype=torch.long)
            owner[k, rows.n[sel], rows.pos[sel]] = rows.cand[sel]
        else:
            owner = torch.full((k1 - k0, N), -1, dtype=torch.long)
            owner[k, rows.n[sel]] = rows.cand[sel]
        yield _Packed(cot, owner, positionwise)


def _project(splice: Splice, u: Site, cands: SiteCandidates, grad_x: torch.Tensor, packed: _Packed,
             record: BatchRecord, pair: torch.Tensor, steps: int, summed: bool, out: torch.Tensor) -> None:
    """Step 3: ``[K, N, T, d]`` gradients at ``u``'s value -> edge weights into ``u``'s candidates.

    A feature candidate ``(q, j)`` moves ``x_u`` by ``delta_j D_j`` at position ``q``, a vector candidate by
    its delta vector; ``grad_x @ D^T`` over the distinct features gives the first in one product."""
    T = grad_x.shape[2]
    delta = record.clean[u] - record.patch[u]  # the sign convention: removing the clean value
    nf = cands.n_features
    pos = cands.positions
    idx = torch.arange(len(cands)) if summed else torch.nonzero(pos < T).flatten()
    vals = []
    f_idx = idx[idx < nf]
    if len(f_idx):
        fi = cands.feat_idx[f_idx]
        uniq, inv = torch.unique(fi, return_inverse=True)
        # in the scores' dtype (float32) whatever the model's (a bfloat16 model's records are bfloat16)
        proj = grad_x @ splice.decoder_directions(u)[uniq].T.to(grad_x.dtype)  # [K, N, T, n_unique]
        amount = delta.features[pair][:, :, fi].to(grad_x.dtype)  # [N, T, nf']
        if summed:
            vals.append(torch.einsum("kntc,ntc->knc", proj[..., inv], amount))
        else:
            q = pos[f_idx]
            vals.append(proj[:, :, q, inv] * amount[:, q, torch.arange(len(f_idx))])
    v_idx = idx[idx >= nf]
    if len(v_idx):
        per_pos = torch.einsum("kntd,ntd->knt", grad_x, delta.vector[pair].to(grad_x.dtype))  # [K, N, T]
        vals.append(per_pos.sum(-1, keepdim=True).expand(-1, -1, len(v_idx)) if summed else per_pos[:, :, pos[v_idx]])
    if not vals:
        return
    idx = torch.cat([f_idx, v_idx])
    val = torch.cat(vals, -1) / steps
    if packed.positionwise:
        owner = packed.owner[:, :, pos[idx]]  # [K, N, n]: the downstream node at the same position
    else:
        owner = packed.owner[:, :, None].expand(-1, -1, len(idx))
    ok = owner >= 0
    col = idx[None, None, :].expand_as(owner)
    out.index_put_((owner[ok], col[ok]), val[ok].detach().float(), accumulate=True)
