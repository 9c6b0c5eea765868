"""Node scores: exact equals hand-written patching, IG is complete, RelP without rules is AtP.

Sign convention: a score is m(clean) - m(clean with the node patched)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_dataset, make_model, make_saes
from featcirc.attribution import AttributionSettings, Method, attribute, get_method, method_names
from featcirc.attribution.rules import LRPRules
from featcirc.metric import logit_diff_from_resid
from featcirc.sites import Site


def score_nodes(model, data, *, method, level, saes=None, sites=None, rules=None, **settings):
    if rules is not None:
        method = Method(f"{method}-custom", get_method(method).estimator, rules)
    settings = AttributionSettings(level=level, sites=None if sites is None else tuple(sites), **settings)
    return attribute(model, data, method, saes, edges=False, settings=settings)[0]


def metric_with_hook(model, batch, hook_name=None, fn=None):
    fwd = [] if hook_name is None else [(hook_name, lambda act, hook: fn(act))]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        resid = model(batch.clean, stop_at_layer=model.cfg.n_layers)
        return logit_diff_from_resid(model, resid, batch.clean_answer, batch.patch_answer)


def site_values(model, tokens, site, sae=None):
    store = {}

    def grab(act, hook):
        store["x"] = act.detach()
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(Site.parse(site).hook_name, grab)]):
        model(tokens, stop_at_layer=model.cfg.n_layers)
    x = store["x"]
    if sae is None:
        return x
    f = sae.encode(x)
    return x, f, x - sae.decode(f)


def test_exact_component_equals_hand_patch(arch):
    model = make_model(arch)
    data = make_dataset(n_batches=1, batch=1, length=6)
    batch = data.batches[0]
    scores = score_nodes(model, data, method="exact", level="component", progress=False)
    m0 = metric_with_hook(model, batch)
    for site in ("attn.0", "mlp.1", "resid.0"):
        x_p = site_values(model, batch.patch, site)
        for pos in (0, 2, 4, 5):
            def patch_one(act, pos=pos, x_p=x_p):
                act = act.clone()
                act[:, pos] = x_p[:, pos]
                return act
            want = float(m0 - metric_with_hook(model, batch, Site.parse(site).hook_name, patch_one))
            got = float(scores.vectors[site][pos])
            assert got == pytest.approx(want, abs=1e-5), (site, pos)
    # positions before the first differing token have exactly zero effect
    assert float(scores.vectors["resid.1"][:3].abs().max()) == 0.0


def test_exact_feature_and_error_equal_hand_patch():
    model = make_model("gpt2")
    saes = make_saes(model)
    data = make_dataset(n_batches=1, batch=1, length=6)
    batch = data.batches[0]
    scores = score_nodes(model, data, method="exact", level="feature", saes=saes, progress=False)
    m0 = metric_with_hook(model, batch)
    site, pos = "resid.0", 4
    sae = saes[site]
    _, f_p, e_p = site_values(model, batch.patch, site, sae)
    _, f_c, _ = site_values(model, batch.clean, site, sae)
    feats = torch.nonzero(f_p[0, pos] != f_c[0, pos]).flatten()[:3].tolist()
    assert feats, "random SAE should have differing features"
    for i in feats:
        def patch_feature(act, i=i):
            f = sae.encode(act)
            eps = act - sae.decode(f)
            f = f.clone()
            f[:, pos, i] = f_p[:, pos, i]
            return sae.decode(f) + eps
        want = float(m0 - metric_with_hook(model, batch, Site.parse(site).hook_name, patch_feature))
        assert float(scores.features[site][pos, i]) == pytest.approx(want, abs=1e-5)

    def patch_error(act):
        f = sae.encode(act)
        eps = act - sae.decode(f)
        eps = eps.clone()
        eps[:, pos] = e_p[:, pos]
        return sae.decode(f) + eps
    want = float(m0 - metric_with_hook(model, batch, Site.parse(site).hook_name, patch_error))
    assert float(scores.vectors[site][pos]) == pytest.approx(want, abs=1e-5)


def test_exact_batched_rows_equal_one_row_at_a_time():
    model = make_model("gpt2")
    saes = make_saes(model)
    data = make_dataset(n_batches=2, batch=2)
    sites = ["embed", "mlp.1"]
    wide = score_nodes(model, data, method="exact", level="feature", saes=saes, sites=sites, progress=False)
    narrow = score_nodes(model, data, method="exact", level="feature", saes=saes, sites=sites, max_rows=3,
                         progress=False)
    for s in wide.sites:
        assert torch.allclose(wide.features[s], narrow.features[s], atol=1e-5)
        assert torch.allclose(wide.vectors[s], narrow.vectors[s], atol=1e-5)
    assert wide.cost.forward_passes < narrow.cost.forward_passes


@pytest.mark.parametrize("level", ["component", "feature"])
def test_ig_is_complete(arch, level):
    """Sum over a site's nodes of IG equals m(clean) - m(site patched) (within 2%)."""
    model = make_model(arch)
    saes = make_saes(model) if level == "feature" else None
    data = make_dataset(n_batches=1, batch=1, length=6)
    batch = data.batches[0]
    scores = score_nodes(model, data, method="ig", level=level, saes=saes, ig_steps=1000,
                         aggregation="sum", progress=False)
    m0 = metric_with_hook(model, batch)
    checked = 0
    for site in ("attn.0", "mlp.1", "resid.0"):
        x_p = site_values(model, batch.patch, site)
        want = float(m0 - metric_with_hook(model, batch, Site.parse(site).hook_name, lambda act: x_p))
        got = float(scores.vectors[site])
        if level == "feature":
            got += float(scores.features[site].sum())
        if abs(want) > 1e-3:
            assert got == pytest.approx(want, rel=0.02, abs=1e-4), site
            checked += 1
    assert checked >= 2


def test_relp_without_rules_equals_atp(arch):
    model = make_model(arch)
    saes = make_saes(model)
    data = make_dataset()
    atp = score_nodes(model, data, method="atp", level="feature", saes=saes, progress=False)
    relp0 = score_nodes(model, data, method="relp", level="feature", saes=saes,
                        rules=LRPRules.none(), progress=False)
    relp = score_nodes(model, data, method="relp", level="feature", saes=saes, progress=False)
    for s in atp.sites:
        assert torch.equal(atp.features[s], relp0.features[s])
        assert torch.equal(atp.vectors[s], relp0.vectors[s])
    assert any(not torch.allclose(atp.vectors[s], relp.vectors[s]) for s in atp.sites)
    assert atp.cost.forward_passes == relp.cost.forward_passes == 2 * len(data.batches)
    assert atp.cost.backward_passes == len(data.batches)


def test_atp_matches_exact_for_a_linear_patch_of_the_last_site():
    """Near the output the metric is almost linear in resid.last, so AtP ~ exact there."""
    model = make_model("gpt2")
    data = make_dataset(n_batches=1, batch=2)
    ex = score_nodes(model, data, method="exact", level="component", sites=["resid.1"], progress=False)
    atp = score_nodes(model, data, method="atp", level="component", sites=["resid.1"], progress=False)
    # only the last position feeds the metric
    assert torch.allclose(ex.vectors["resid.1"][:-1], torch.zeros_like(ex.vectors["resid.1"][:-1]), atol=1e-6)
    assert torch.allclose(atp.vectors["resid.1"][:-1], torch.zeros_like(atp.vectors["resid.1"][:-1]), atol=1e-6)


def test_aggregation_sum_equals_sum_of_positions():
    model = make_model("gpt2")
    saes = make_saes(model)
    data = make_dataset()
    per_pos = score_nodes(model, data, method="atp", level="feature", saes=saes, progress=False)
    summed = score_nodes(model, data, method="atp", level="feature", saes=saes, aggregation="sum",
                         progress=False)
    for s in per_pos.sites:
        assert torch.allclose(per_pos.features[s].sum(0), summed.features[s], atol=1e-5)
        assert torch.allclose(per_pos.vectors[s].sum(0), summed.vectors[s], atol=1e-5)


def test_bad_settings_raise():
    model = make_model("gpt2")
    data = make_dataset()
    with pytest.raises(ValueError, match="unknown method 'magic'; choose one of exact, atp, relp, ig"):
        score_nodes(model, data, method="magic", level="component")
    with pytest.raises(ValueError, match="SAEs"):
        score_nodes(model, data, method="atp", level="feature")
    with pytest.raises(ValueError, match="ig_steps"):
        score_nodes(model, data, method="ig", level="component", ig_steps=0)
    with pytest.raises(ValueError, match="max_nodes"):
        AttributionSettings(max_nodes=0)


def test_registry_drives_the_choices():
    assert method_names()[:4] == ("exact", "atp", "relp", "ig")
    assert "exact" not in method_names(with_edges=True)
    assert get_method("relp-no-ah").rules == LRPRules(attention=False)
    model = make_model("gpt2")
    data = make_dataset()
    nodes, edges = attribute(model, data, "exact", settings=AttributionSettings(level="component", progress=False))
    assert edges is None and nodes.method == "exact"


def test_pair_effects_average_to_the_scores():
    model = make_model("gpt2")
    saes = make_saes(model)
    data = make_dataset()
    nodes = score_nodes(model, data, method="relp", level="feature", saes=saes, pair_effects=True,
                        progress=False)
    for s in nodes.sites:
        feats, vec = nodes.pair_effects[s]
        assert feats.shape[0] == vec.shape[0] == data.n_pairs
        assert torch.allclose(vec.mean(0), nodes.vectors[s], atol=1e-6)
        assert torch.allclose(feats.mean(0), nodes.features[s], atol=1e-6)


def test_per_node_rule_overrides_take_each_node_from_its_rules():
    """relp-feat-grad: features scored as AtP, error nodes as RelP; relp-attn-grad: attention sites as
    RelP without the AH-rule, every other site as RelP. One extra backward per extra rule set."""
    model = make_model("gemma3")
    saes = make_saes(model)
    data = make_dataset()
    run = lambda m: score_nodes(model, data, method=m, level="feature", saes=saes, progress=False)  # noqa: E731
    relp, atp, no_ah = run("relp"), run("atp"), run("relp-no-ah")
    feat, attn = run("relp-feat-grad"), run("relp-attn-grad")
    for s in relp.sites:
        assert torch.equal(feat.features[s], atp.features[s]) and torch.equal(feat.vectors[s], relp.vectors[s])
        want = no_ah if s.startswith("attn") else relp
        assert torch.equal(attn.features[s], want.features[s]) and torch.equal(attn.vectors[s], want.vectors[s])
    assert feat.cost.backward_passes == attn.cost.backward_passes == 2 * relp.cost.backward_passes


def test_a_new_estimator_is_one_class_and_one_register_call(monkeypatch):
    """A toy estimator (AtP, written again from the node pass's building blocks) registered in one place
    runs through attribute(), the edge pass and the memory estimate, and gives AtP's scores exactly."""
    from dataclasses import dataclass
    from typing import ClassVar

    from featcirc.attribution import methods
    from featcirc.attribution.estimators import GRADIENT, Estimator, NodeEffects
    from featcirc.attribution.nodes import _dot, _gradients
    from featcirc.memory import estimate_peak_bytes

    @dataclass(frozen=True, repr=False)
    class ToyAtP(Estimator):
        name: ClassVar[str] = "toy-gradient"

        def node_effects(self, splice, batch, method, patch, ig_steps, max_rows, cost):
            clean, grads, resid_pre, m_clean = _gradients(splice, batch, method.rules, cost)
            effects = {s: _dot(grads[s], clean[s] - patch[s]) for s in splice.sites}
            return NodeEffects(clean, grads, resid_pre, m_clean, effects)

        def node_transient_elements(self, cfg, sites, **kw):
            return GRADIENT.node_transient_elements(cfg, sites, **kw)

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))  # leave the real registry alone
    methods.register(Method("toy-atp", ToyAtP(), LRPRules.none(), "AtP, again"))
    assert "toy-atp" in method_names(with_edges=True)

    model = make_model("gpt2")
    saes = make_saes(model)
    data = make_dataset()
    settings = AttributionSettings(level="feature", max_nodes=60, progress=False)
    atp_nodes, atp_edges = attribute(model, data, "atp", saes, settings=settings)
    toy_nodes, toy_edges = attribute(model, data, "toy-atp", saes, settings=settings)
    assert toy_nodes.method == "toy-atp" and toy_nodes.info["estimator"] == "toy-gradient"
    assert toy_nodes.info["ig_steps"] is None
    for s in atp_nodes.sites:
        assert torch.equal(toy_nodes.features[s], atp_nodes.features[s])
        assert torch.equal(toy_nodes.vectors[s], atp_nodes.vectors[s])
    assert toy_edges.nodes == atp_edges.nodes
    for name in ("upstream", "downstream", "weight"):
        assert torch.equal(getattr(toy_edges, name), getattr(atp_edges, name)), name
    assert (toy_nodes.cost.forward_passes, toy_nodes.cost.backward_passes) == \
        (atp_nodes.cost.forward_passes, atp_nodes.cost.backward_passes)
    kw = dict(batch_size=3, n_positions=7, n_pairs=6)
    assert estimate_peak_bytes(model.cfg, saes, method="toy-atp", **kw) == \
        estimate_peak_bytes(model.cfg, saes, method="atp", **kw)
    with pytest.raises(TypeError, match="Estimator"):
        Method("by-name", "gradient")
