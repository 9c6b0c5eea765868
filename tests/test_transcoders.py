"""Transcoder sites (``tc.L``, docs/design.md §4b): the spliced forward is exact, node scores equal hand-written
patching and gradients, IG is complete, the vectorised edges equal the per-node reference, and RelP's
edges between transcoder features are the analytic linear direct effects (frozen attention and norms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_dataset, make_model, make_saes, make_transcoders
from featcirc.attribution import AttributionSettings, attribute
from featcirc.attribution.splice import Splice
from featcirc.metric import logit_diff_from_resid
from featcirc.models.mlp_io import recording_mlp_io
from featcirc.sites import METRIC, Site, parse_node_id
from test_edges import assert_close, fast_and_reference, saes_at

VARIANTS = {"plain": {}, "skip": {"skip": True}, "jumprelu": {"jumprelu": True}}


def metric(model, batch, fwd=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd)):
        resid = model(batch.clean, stop_at_layer=model.cfg.n_layers)
        return logit_diff_from_resid(model, resid, batch.clean_answer, batch.patch_answer)


def mlp_io(model, tokens, layer):
    with torch.no_grad(), recording_mlp_io(model, [layer]) as io:
        model(tokens, stop_at_layer=layer + 1)
    return io[layer]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_spliced_forward_is_exact(arch, variant):
    model = make_model(arch)
    tcs = make_transcoders(model, **VARIANTS[variant])
    saes = {**{k: v for k, v in make_saes(model).items() if k.startswith("resid")}, **tcs}
    tokens = torch.randint(1, 61, (2, 7))
    with torch.no_grad():
        bare = model(tokens)
    splice = Splice(model, saes)
    with torch.no_grad(), splice.leaves() as states:
        spliced = model(tokens)
    assert (spliced - bare).abs().max() < 1e-5
    # the features are the transcoder's encoding of the MLP's *input* (ln2's output), not of its output
    x_in, x_out = mlp_io(model, tokens, 1)
    assert torch.allclose(states[Site("tc", 1)].features, tcs["tc.1"].encode(x_in), atol=1e-6)
    assert not torch.allclose(states[Site("tc", 1)].features, tcs["tc.1"].encode(x_out), atol=1e-3)
    skip = x_in @ tcs["tc.1"].W_skip.T if variant == "skip" else 0.0
    assert torch.allclose(states[Site("tc", 1)].vector,
                          x_out - tcs["tc.1"].decode(tcs["tc.1"].encode(x_in)) - skip, atol=1e-5)


def test_splice_rejects_misplaced_transcoders():
    model = make_model("gpt2")
    tcs = make_transcoders(model)
    saes = make_saes(model)
    with pytest.raises(ValueError, match="both mlp.0 and a transcoder"):
        Splice(model, {"mlp.0": saes["mlp.0"], "tc.0": tcs["tc.0"]})
    with pytest.raises(ValueError, match="transcoders go at tc.1"):
        Splice(model, {"mlp.1": tcs["tc.1"]})
    with pytest.raises(ValueError, match="needs a transcoder"):
        Splice(model, {"tc.1": saes["mlp.1"]})
    with pytest.raises(ValueError, match="needs a transcoder"):
        Splice(model, None, ["tc.1"])


def score(model, data, method, saes, **kw):
    settings = AttributionSettings(level="feature", progress=False, **kw)
    return attribute(model, data, method, saes, edges=False, settings=settings)[0]


def test_exact_transcoder_nodes_equal_hand_patch():
    """Patching one skip transcoder's feature (or its error) by hand, with the MLP input read by our own
    pre-hook: the error is ``x - dec(f) - W_skip x_in``; the skip follows the input."""
    model = make_model("gpt2")
    tcs = make_transcoders(model, skip=True)
    tc = tcs["tc.0"]
    data = make_dataset(n_batches=1, batch=1, length=6)
    batch = data.batches[0]
    scores = score(model, data, "exact", tcs)
    m0 = metric(model, batch)
    pos = 4
    xi_p, xo_p = mlp_io(model, batch.patch, 0)
    xi_c, _ = mlp_io(model, batch.clean, 0)
    f_p, f_c = tc.encode(xi_p), tc.encode(xi_c)
    skip = lambda x_in: x_in @ tc.W_skip.T  # noqa: E731  (a linear path: neither a feature nor the error)
    e_p = xo_p - tc.decode(f_p) - skip(xi_p)
    seen = {}
    handle = model.blocks[0].mlp.register_forward_pre_hook(lambda mod, args: seen.__setitem__("in", args[0]))

    def patched(fn):
        def hook(act, hook):  # noqa: ARG001
            f = tc.encode(seen["in"])
            eps = act - tc.decode(f) - skip(seen["in"])
            f, eps = fn(f.clone(), eps.clone())
            return tc.decode(f) + eps + skip(seen["in"])
        return [("blocks.0.hook_mlp_out", hook)]

    try:
        feats = torch.nonzero(f_p[0, pos] != f_c[0, pos]).flatten()[:3].tolist()
        assert feats
        for i in feats:
            def swap(f, eps, i=i):
                f[:, pos, i] = f_p[:, pos, i]
                return f, eps
            want = float(m0 - metric(model, batch, patched(swap)))
            assert float(scores.features["tc.0"][pos, i]) == pytest.approx(want, abs=1e-5)

        def swap_err(f, eps):
            eps[:, pos] = e_p[:, pos]
            return f, eps
        want = float(m0 - metric(model, batch, patched(swap_err)))
        assert float(scores.vectors["tc.0"][pos]) == pytest.approx(want, abs=1e-5)
    finally:
        handle.remove()


def test_atp_transcoder_nodes_equal_hand_gradients():
    """AtP at tc.1: ``grad_f m . (f_c - f_p)`` with the gradient taken by hand: W_dec times the gradient
    at the MLP's output (straight-through: the true model's gradient)."""
    model = make_model("gemma3")
    tcs = make_transcoders(model)
    tc = tcs["tc.1"]
    data = make_dataset(n_batches=1, batch=2, length=6)
    batch = data.batches[0]
    scores = score(model, data, "atp", tcs)
    store = {}

    def keep(act, hook):  # noqa: ARG001
        store["out"] = act.detach().requires_grad_()
        return store["out"]

    with torch.enable_grad(), model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", keep)]):
        resid = model(batch.clean, stop_at_layer=model.cfg.n_layers)
        m = logit_diff_from_resid(model, resid, batch.clean_answer, batch.patch_answer).sum()
        g_out = torch.autograd.grad(m, store["out"])[0]  # [B, T, d]
    xi_c, xo_c = mlp_io(model, batch.clean, 1)
    xi_p, xo_p = mlp_io(model, batch.patch, 1)
    f_c, f_p = tc.encode(xi_c), tc.encode(xi_p)
    want_f = ((g_out @ tc.W_dec.T) * (f_c - f_p)).mean(0)  # mean over pairs, per position
    e_c, e_p = xo_c - tc.decode(f_c), xo_p - tc.decode(f_p)
    want_e = (g_out * (e_c - e_p)).sum(-1).mean(0)
    assert torch.allclose(scores.features["tc.1"][:6], want_f, atol=1e-5)
    assert torch.allclose(scores.vectors["tc.1"][:6], want_e, atol=1e-5)


@pytest.mark.parametrize("variant", ["plain", "jumprelu"])
def test_ig_is_complete_at_transcoder_sites(arch, variant):
    """Sum of a transcoder site's IG scores = m(clean) - m(MLP output patched) (within 2%)."""
    model = make_model(arch)
    tcs = make_transcoders(model, **VARIANTS[variant])
    data = make_dataset(n_batches=1, batch=1, length=6)
    batch = data.batches[0]
    scores = score(model, data, "ig", tcs, ig_steps=1000, aggregation="sum")
    m0 = metric(model, batch)
    checked = 0
    for layer in range(model.cfg.n_layers):
        _, xo_p = mlp_io(model, batch.patch, layer)
        want = float(m0 - metric(model, batch, [(f"blocks.{layer}.hook_mlp_out", lambda act, hook, x=xo_p: x)]))
        got = float(scores.vectors[f"tc.{layer}"]) + float(scores.features[f"tc.{layer}"].sum())
        if abs(want) > 1e-3:
            assert got == pytest.approx(want, rel=0.02, abs=1e-4), layer
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("arch_,variant,layout,method,aggregation", [
    ("gpt2", "plain", "tc", "relp", "none"),
    ("gpt2", "skip", "mixed", "atp", "sum"),
    ("pythia", "plain", "mixed", "relp", "none"),
    ("pythia", "jumprelu", "tc", "ig", "none"),
    ("gemma3", "jumprelu", "mixed", "ig", "none"),
    ("gemma3", "plain", "tc", "relp", "sum"),
])
def test_edges_equal_reference(arch_, variant, layout, method, aggregation):
    """The vectorised edge pass (cotangents on ``[x_out | x_in]``) equals the per-node reference, which
    encodes the downstream transcoder itself from the MLP input it captures."""
    model = make_model(arch_)
    saes = make_transcoders(model, d_sae=24, **VARIANTS[variant])
    if layout == "mixed":  # residual and attention SAEs beside the transcoders
        saes.update(saes_at(model, ["embed", "attn.0", "resid.0", "resid.1"]))
    _, edges, fast, ref = fast_and_reference(model, saes, method, aggregation)
    assert_close(fast, ref)
    kinds = {(parse_node_id(u).site.kind, parse_node_id(d).site.kind) for u, d in fast}
    assert ("tc", "tc") in kinds if layout == "tc" else {("resid", "tc"), ("tc", "resid")} <= kinds
    assert any(d == METRIC for _, d in edges.as_dict())


def test_relp_edges_are_the_analytic_linear_direct_effects():
    """With attention patterns and LayerNorm scales frozen (RelP's AH- and LN-rules) the path from tc.0's
    output to tc.1's input is linear: ``e(i@q -> j@p) = g_j[p] [f_j[p] != 0] W_enc[:, j] . J_pq (delta_i W_dec[i])``
    with ``J`` the residual stream plus block 1's attention (V and O only, pattern fixed) and both norms'
    centring and weights at fixed scale. circuit-tracer's direct effects are the same ``J`` (docs/design.md §7b)."""
    model = make_model("gpt2")
    tcs = make_transcoders(model, d_sae=24)
    data = make_dataset(n_batches=1, batch=1, length=6)
    batch = data.batches[0]
    settings = AttributionSettings(level="feature", aggregation="none", max_nodes=None, progress=False)
    nodes, edges = attribute(model, data, "relp", tcs, settings=settings)
    got = {k: w for k, w in edges.as_dict().items() if k[0].startswith("tc.0/") and k[1].startswith("tc.1/")
           and "err" not in k[0] + k[1]}
    assert got

    _, cache = model.run_with_cache(batch.clean)
    A = cache["blocks.1.attn.hook_pattern"][0]  # [H, p, q]
    s1, s2 = cache["blocks.1.ln1.hook_scale"][0], cache["blocks.1.ln2.hook_scale"][0]  # [T, 1]
    blk = model.blocks[1]
    tc0, tc1 = tcs["tc.0"], tcs["tc.1"]
    xi0_c, _ = mlp_io(model, batch.clean, 0)
    xi0_p, _ = mlp_io(model, batch.patch, 0)
    xi1_c, _ = mlp_io(model, batch.clean, 1)
    delta0 = (tc0.encode(xi0_c) - tc0.encode(xi0_p))[0]  # [T, F]
    f1 = tc1.encode(xi1_c)[0]
    centre = lambda v: v - v.mean(-1, keepdim=True)  # noqa: E731

    # the node gradient of tc.1's features under RelP (its own test: the node pass)
    splice = Splice(model, tcs)
    from featcirc.attribution import get_method
    from featcirc.attribution.nodes import record_batch
    from featcirc.attribution.scores import Cost
    rec = record_batch(splice, batch, get_method("relp"), 1, 256, Cost())
    g1 = rec.grads[Site("tc", 1)].features[0]  # [T, F]

    T = batch.clean.shape[1]
    checked = 0
    for (u, d), w in got.items():
        ru, rd = parse_node_id(u), parse_node_id(d)
        q, i, p, j = ru.position, ru.feature, rd.position, rd.feature
        dx = torch.zeros(T, model.cfg.d_model)
        dx[q] = delta0[q, i] * tc0.W_dec[i]
        ln1 = centre(dx) / s1 * blk.ln1.w  # frozen scale; bias cancels in a difference
        v = torch.einsum("td,hde->hte", ln1, blk.attn.W_V)
        z = torch.einsum("hpq,hqe->hpe", A, v)
        attn = torch.einsum("hpe,hed->pd", z, blk.attn.W_O)
        mid = dx + attn
        x_in = centre(mid) / s2 * blk.ln2.w
        want = float(g1[p, j] * (f1[p, j] != 0) * (x_in[p] @ tc1.W_enc[:, j]))
        assert w == pytest.approx(want, rel=1e-4, abs=1e-6 * max(abs(x) for x in got.values())), (u, d)
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("ablation", ["mean", "patch"])
def test_ablating_transcoder_nodes(ablation):
    """Keeping every node gives the clean metric; ablating one skip transcoder's nodes (features and error)
    under patch ablation equals patching its MLP output minus the skip, with the skip still live."""
    from featcirc.evaluate.faithfulness import Ablator

    model = make_model("gpt2")
    tcs = make_transcoders(model, skip=True)
    data = make_dataset(n_batches=1, batch=2, length=6)
    batch = data.batches[0]
    ab = Ablator(model, data, saes=tcs, ablation=ablation, progress=False)
    assert np.allclose(ab.m_full_values, metric(model, batch).numpy(), atol=1e-5)
    if ablation != "patch":
        assert not np.allclose(ab.m_empty_values, ab.m_full_values)
        return
    T = batch.clean.shape[1]
    keep = {f"tc.1/err@{t}" for t in range(T)} | {f"tc.1/{i}@{t}" for t in range(T) for i in range(48)}
    got = ab.metric_values(keep)  # tc.0's nodes ablated, tc.1's kept
    tc = tcs["tc.0"]
    xi_p, xo_p = mlp_io(model, batch.patch, 0)
    seen = {}
    handle = model.blocks[0].mlp.register_forward_pre_hook(lambda mod, args: seen.__setitem__("in", args[0]))
    try:  # the patch run's features and error at tc.0, the skip of the (clean) input of this run
        want = metric(model, batch, [("blocks.0.hook_mlp_out", lambda act, hook: xo_p - xi_p @ tc.W_skip.T
                                      + seen["in"] @ tc.W_skip.T)])
    finally:
        handle.remove()
    assert np.allclose(got, want.numpy(), atol=1e-5)


def test_demo_over_the_bundled_transcoders_discovers_evaluates_exports_and_views(tmp_path, capsys):
    """``featcirc demo --transcoders``: a circuit of tiny transcoder features, evaluated on held-out pairs
    under mean and patch ablation, exported with transcoder feature types, with cards and the viewer."""
    import json

    from featcirc.cli import main

    out = tmp_path / "demo"
    assert main(["-q", "demo", "--transcoders", "--pairs", "4", "--max-nodes", "60", "--cards-tokens", "256",
                 "--out", str(out)]) == 0
    summ = json.loads((out / "summary.json").read_text())
    assert list(summ["faithfulness"]) == ["mean", "patch"]
    circuit = json.loads((out / "circuit.json").read_text())
    sites = {n["site"] for n in circuit["nodes"] if n["kind"] in ("feature", "error")}
    assert sites and all(s.startswith("tc.") for s in sites)
    np_graph = json.loads((out / "neuronpedia.json").read_text())
    feats = [n for n in np_graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and np_graph["metadata"]["info"]["features"]["kind"] == "transcoder"
    cards = json.loads((out / "cards.json").read_text())
    assert cards["cards"] and all(k.startswith("tc.") for k in cards["cards"])
    assert "tc" in (out / "circuit.html").read_text()
