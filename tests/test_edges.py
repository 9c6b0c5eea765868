"""Edge scores: the vectorised pass equals the independent per-node reference on every architecture,
method, aggregation and site layout (z sites, sparse sites); the direct path is the identity;
the compact format round-trips and old files still load."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from conftest import make_dataset, make_model, make_saes
from featcirc.attribution import AttributionSettings, attribute, get_method
from featcirc.attribution.edges import edge_groups
from featcirc.attribution.nodes import record_batch
from featcirc.attribution.reference import reference_edges
from featcirc.attribution.scores import Cost, EdgeScores
from featcirc.attribution.splice import make_splice
from featcirc.sites import METRIC, Site, parse_node_id


def saes_at(model, names, d_sae=24):
    """Random ReLU SAEs at the named sites (``z.L`` SAEs read the flattened heads)."""
    out = {}
    for i, name in enumerate(names):
        site = Site.parse(name)
        d_in = model.cfg.n_heads * model.cfg.d_head if site.kind == "z" else model.cfg.d_model
        torch.manual_seed(100 + i)
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
        with torch.no_grad():
            for p, std in ((sae.W_enc, 0.3), (sae.W_dec, 0.3), (sae.b_enc, 0.3), (sae.b_dec, 0.1)):
                p.normal_(0, std)
        sae.cfg.metadata.hook_name = site.hook_name
        out[name] = sae.eval().requires_grad_(False)
    return out


def fast_and_reference(model, saes, method, aggregation="none", level="feature", max_nodes=80, steps=3):
    data = make_dataset(n_batches=2, batch=2, length=6)
    settings = AttributionSettings(level=level, aggregation=aggregation, ig_steps=steps, max_nodes=max_nodes,
                                   max_rows=5, progress=False)
    nodes, edges = attribute(model, data, method, saes, settings=settings)
    splice = make_splice(model, level, saes)
    m = get_method(method)
    records = [record_batch(splice, b, m, steps, 256, Cost()) for b in data.batches]
    ref = reference_edges(model, {s.name: v for s, v in splice.saes.items()}, splice.site_names, records,
                          [n for n in edges.nodes if n != METRIC], m, steps, aggregation, data.n_pairs)
    fast = {k: w for k, w in edges.as_dict().items() if k[1] != METRIC}
    return nodes, edges, fast, ref


def assert_close(fast, ref, tol=1e-5):
    assert ref and set(fast) == set(ref)
    scale = max(abs(w) for w in ref.values())
    worst = max(abs(fast[k] - ref[k]) for k in ref)
    assert worst <= tol * scale, worst / scale


@pytest.mark.parametrize("method,aggregation", [("relp", "none"), ("atp", "sum"), ("ig", "none"),
                                                ("atp", "none")])
def test_vectorised_equals_reference(arch, method, aggregation):
    model = make_model(arch)
    _, edges, fast, ref = fast_and_reference(model, make_saes(model, d_sae=24), method, aggregation)
    assert_close(fast, ref)
    assert edges.cost.backward_passes > 0
    for (u, d) in fast:  # only the site graph's edges
        su, sd = parse_node_id(u).site, parse_node_id(d).site
        assert sd.layer == su.layer or (sd.layer == su.layer + 1 and su.is_resid)


@pytest.mark.parametrize("sites", [
    ["embed", "z.0", "mlp.0", "resid.0", "z.1", "mlp.1", "resid.1"],  # attention SAEs on hook_z
    ["embed", "resid.1"],  # sparse: the Jacobian runs through two unspliced layers
    ["attn.0", "resid.1", "mlp.1"],  # no residual site before attn.0; mlp.1 held between
])
@pytest.mark.parametrize("method", ["relp", "ig"])
def test_z_and_sparse_sites_equal_reference(sites, method):
    model = make_model("gemma3")
    _, _, fast, ref = fast_and_reference(model, saes_at(model, sites), method)
    assert_close(fast, ref)
    pairs = {(parse_node_id(u).site.name, parse_node_id(d).site.name) for u, d in fast}
    if sites[:2] == ["embed", "resid.1"]:
        assert pairs == {("embed", "resid.1")}


def test_component_level_equals_reference():
    model = make_model("pythia")
    _, _, fast, ref = fast_and_reference(model, None, "relp", level="component", max_nodes=None)
    assert_close(fast, ref)


def test_site_graph_groups():
    model = make_model("gpt2")
    groups = edge_groups(model, [Site.parse(s) for s in ("embed", "attn.0", "mlp.0", "resid.0", "attn.1",
                                                          "mlp.1", "resid.1")])
    g0 = groups[0]
    assert g0.upstream == "embed" and (g0.start, g0.stop) == (0, 0)
    assert g0.parents[Site.parse("mlp.0")] == ("embed", "attn.0")
    assert g0.parents[Site.parse("resid.0")] == ("embed", "attn.0", "mlp.0")
    assert g0.identity[Site.parse("resid.0")] and not g0.identity[Site.parse("mlp.0")]
    assert g0.positionwise[Site.parse("mlp.0")] and not g0.positionwise[Site.parse("attn.0")]
    pythia = edge_groups(make_model("pythia"), [Site.parse(s) for s in ("resid.0", "attn.1", "mlp.1")])
    assert pythia[0].parents[Site.parse("mlp.1")] == ("resid.0",)  # parallel: no attn -> mlp


def test_direct_resid_path_is_identity_at_component_level():
    """resid.L = resid.(L-1) + attn.L + mlp.L with attn/mlp held constant: e(R@p -> resid.L@q) =
    g_q . (clean_p - patch_p) when p == q, else 0; edges into the metric are the last site's scores."""
    model = make_model("gpt2")
    data = make_dataset(n_batches=1, batch=1, length=6)
    nodes, edges = attribute(model, data, "atp", settings=AttributionSettings(level="component", max_nodes=None,
                                                                              progress=False))
    splice = make_splice(model, "component")
    rec = record_batch(splice, data.batches[0], get_method("atp"), 1, 256, Cost())
    g = rec.grads["resid.1"].vector[0]
    delta = (rec.clean["resid.0"].vector - rec.patch["resid.0"].vector)[0]
    w = edges.as_dict()
    checked = 0
    for p in range(6):
        for q in range(6):
            want = float(g[q] @ delta[p]) if p == q else 0.0
            assert w.get((f"resid.0@{p}", f"resid.1@{q}"), 0.0) == pytest.approx(want, abs=1e-5)
            checked += want != 0.0
        assert w.get((f"resid.1@{p}", METRIC), 0.0) == pytest.approx(float(nodes.vectors["resid.1"][p]), abs=1e-7)
    assert checked >= 1


def test_records_recomputed_when_over_budget_give_the_same_edges():
    model = make_model("gpt2")
    saes = make_saes(model, d_sae=24)
    data = make_dataset()
    kept = attribute(model, data, "relp", saes, settings=AttributionSettings(max_nodes=50, progress=False))[1]
    redone = attribute(model, data, "relp", saes, settings=AttributionSettings(max_nodes=50, record_bytes=0,
                                                                               progress=False))[1]
    assert not kept.info["recomputed_node_pass"] and redone.info["recomputed_node_pass"]
    assert kept.nodes == redone.nodes and torch.allclose(kept.weight, redone.weight, atol=1e-7)


def test_compact_edges_round_trip_and_old_files_load(tmp_path):
    model = make_model("gpt2")
    _, edges = attribute(model, make_dataset(), "atp", make_saes(model, d_sae=24),
                         settings=AttributionSettings(max_nodes=40, progress=False))
    edges.save(tmp_path / "e.pt")
    back = EdgeScores.load(tmp_path / "e.pt")
    assert back.as_dict() == edges.as_dict() and len(back) == len(edges) > 0
    old = dict(method="atp", aggregation="none", edges=[("resid.0/1@2", "resid.1/3@2", 0.5)],
               cost=dict(seconds=1.0, forward_passes=2, backward_passes=1), info={})
    torch.save(old, tmp_path / "old.pt")
    assert EdgeScores.load(tmp_path / "old.pt").as_dict() == {("resid.0/1@2", "resid.1/3@2"): 0.5}
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(ValueError, match="not a featcirc edge scores file"):
        EdgeScores.load(tmp_path / "junk.pt")
