"""Reference edge scores: one forward per (pair, step, downstream site) and one backward per node.

A test oracle and the baseline of ``experiments/bench_edges.py``. It shares no maths with
:mod:`featcirc.attribution.edges`: it runs the model from the tokens with its own hooks, keeps the
upstream *nodes* (features and errors) as leaves, encodes the downstream site itself, takes one
backward per downstream node and multiplies by the deltas itself. Only the node pass's records (clean
and patch node values, node gradients) are taken as inputs; they are tested on their own.

    e(u -> d) = mean over pairs and steps of  d(g_d . a_d) / d a_u  .  (a_c,u - a_p,u)
"""

from __future__ import annotations

from typing import Optional

import torch

from featcirc.attribution.methods import Method
from featcirc.attribution.nodes import BatchRecord
from featcirc.attribution.rules import lrp_rules
from featcirc.sites import Site, node_id, parse_node_id, sort_sites


def _parents(site: Site, spliced: list[Site], parallel: bool) -> list[Site]:
    """The sites ``site`` reads from: the last residual-stream site before it and the attention /
    MLP sites after that one (in a parallel block the MLP does not read the attention)."""
    key = lambda s: (s.layer, _rank(s))  # noqa: E731  (forward order)
    earlier = sorted((s for s in spliced if key(s) < key(site)), key=key)
    out: list[Site] = []
    for s in reversed(earlier):
        if parallel and site.kind in ("mlp", "tc") and s.kind in ("attn", "z") and s.layer == site.layer:
            continue
        out.insert(0, s)
        if s.kind in ("embed", "resid"):
            break
    return out


def _rank(s: Site) -> int:
    return {"embed": -1, "attn": 0, "z": 0, "mlp": 1, "tc": 1, "resid": 2}[s.kind]


def reference_edges(model, saes: dict, sites: list[str], records: list[BatchRecord], candidate_ids: list[str],
                    method: Method, ig_steps: int, aggregation: str, n_pairs: int) -> dict[tuple[str, str], float]:
    """``{(upstream id, downstream id): weight}`` among ``candidate_ids`` (``metric`` edges excluded)."""
    spliced = sort_sites(sites)
    parallel = bool(model.cfg.parallel_attn_mlp)
    summed = aggregation == "sum"
    steps = method.estimator.path_steps(ig_steps)
    by_site: dict[Site, list] = {}
    for nid in candidate_ids:
        ref = parse_node_id(nid)
        if isinstance(ref.position, str):  # candidates name slots by index; labels are for graphs (§3)
            raise ValueError(f"candidate {nid!r}: reference_edges takes slot indices, not slot labels")
        if ref.site is not None:
            by_site.setdefault(ref.site, []).append(ref)
    out: dict[tuple[str, str], float] = {}
    for rec in records:
        B, T = rec.batch.clean.shape
        for b in range(B):
            for k in range(steps):
                alpha = k / steps
                for d in spliced:
                    parents = _parents(d, spliced, parallel)
                    if d.kind == "embed" or not parents or d not in by_site:
                        continue
                    _one(model, saes, rec, b, alpha, d, parents, by_site, method, summed, T, steps, n_pairs, out)
    return {key: w for key, w in out.items() if w != 0.0}


def _one(model, saes, rec: BatchRecord, b: int, alpha: float, d: Site, parents: list[Site], by_site, method,
         summed: bool, T: int, steps: int, n_pairs: int, out: dict) -> None:
    leaves: dict[Site, tuple[Optional[torch.Tensor], torch.Tensor]] = {}
    for u in parents:
        fc = rec.clean[u].features
        fp = rec.patch[u].features
        f = None if fc is None else (fc[b:b + 1] + alpha * (fp[b:b + 1] - fc[b:b + 1])).requires_grad_()
        e = (rec.clean[u].vector[b:b + 1] + alpha * (rec.patch[u].vector[b:b + 1]
                                                    - rec.clean[u].vector[b:b + 1])).requires_grad_()
        leaves[u] = (f, e)
    seen: dict[str, torch.Tensor] = {}

    def skip(site: Site) -> "torch.Tensor | float":  # a skip transcoder's linear path, live (docs/design.md §4b)
        w = getattr(saes.get(site.name), "W_skip", None)
        return 0.0 if w is None else seen[f"in{site.layer}"] @ w.T

    def replace(u: Site):
        def hook(act, hook):  # noqa: ARG001
            f, e = leaves[u]
            value = e if f is None else saes[u.name].decode(f) + e
            return value.view_as(act) + (skip(u) if u.kind == "tc" else 0.0)

        return hook

    def capture(act, hook):  # noqa: ARG001
        seen["x"] = act.flatten(-2) if d.kind == "z" else act - (skip(d) if d.kind == "tc" else 0.0)
        return act

    def capture_mlp_input(layer: int):  # a transcoder reads the MLP's input
        def pre_hook(module, args):  # noqa: ARG001
            seen[f"in{layer}"] = args[0]

        return pre_hook

    fwd = [(u.hook_name, replace(u)) for u in parents] + [(d.hook_name, capture)]
    handles = [model.blocks[s.block].mlp.register_forward_pre_hook(capture_mlp_input(s.block))
               for s in parents + [d] if s.kind == "tc"]
    try:
        with torch.enable_grad(), lrp_rules(model, method.rules), model.hooks(fwd_hooks=fwd):
            model(rec.batch.clean[b:b + 1], stop_at_layer=d.block + 1)
    finally:
        for h in handles:
            h.remove()
    x = seen["x"]
    sae = saes.get(d.name)
    f_d = None if sae is None else sae.encode(seen[f"in{d.block}"] if d.kind == "tc" else x)
    e_d = x if sae is None else x - sae.decode(f_d)
    g = rec.grads[d]
    for ref in by_site[d]:
        if not summed and ref.position >= T:
            continue
        if ref.kind == "feature":
            i = ref.feature
            value = (g.features[b, :, i] * f_d[0, :, i]).sum() if summed else \
                g.features[b, ref.position, i] * f_d[0, ref.position, i]
        else:
            value = (g.vector[b] * e_d[0]).sum() if summed else (g.vector[b, ref.position] * e_d[0, ref.position]).sum()
        if not value.requires_grad:
            continue
        inputs = [t for u in parents for t in leaves[u] if t is not None]
        grads = iter(torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True))
        for u in parents:
            gf = next(grads) if leaves[u][0] is not None else None
            ge = next(grads)
            for uref in by_site.get(u, []):
                if not summed and uref.position >= T:
                    continue
                if uref.kind == "feature":
                    if gf is None:
                        continue
                    j = uref.feature
                    delta = rec.clean[u].features[b, :, j] - rec.patch[u].features[b, :, j]
                    w = (gf[0, :, j] * delta).sum() if summed else gf[0, uref.position, j] * delta[uref.position]
                else:
                    if ge is None:
                        continue
                    delta = rec.clean[u].vector[b] - rec.patch[u].vector[b]
                    w = (ge[0] * delta).sum() if summed else (ge[0, uref.position] * delta[uref.position]).sum()
                key = (node_id(u, uref.kind, uref.feature, uref.position), node_id(d, ref.kind, ref.feature, ref.position))
                out[key] = out.get(key, 0.0) + float(w) / steps / n_pairs
