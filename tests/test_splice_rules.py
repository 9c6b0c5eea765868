"""Splicing is exact and straight-through; LRP rules change only the backward pass."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, make_saes
from featcirc.metric import logit_diff_from_resid
from featcirc.attribution.rules import LRPRules, lrp_rules
from featcirc.sites import Site
from featcirc.attribution.splice import Splice

TOKENS = torch.randint(1, 61, (3, 9), generator=torch.Generator().manual_seed(5))
CA, PA = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
READOUT = torch.randn(9, 32, generator=torch.Generator().manual_seed(6))


def final_metric(model, tokens=TOKENS):
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    return logit_diff_from_resid(model, resid, CA, PA)


def test_spliced_forward_is_exact(arch):
    model = make_model(arch)
    saes = make_saes(model)
    splice = Splice(model, saes)
    bare = model(TOKENS)
    with splice.leaves() as leaves:
        spliced = model(TOKENS)
    assert set(leaves) == set(saes)
    # the SAEs really reconstruct badly (random), so exactness comes from the error nodes
    st = leaves["resid.0"]
    assert st.vector.abs().max() > 0.1
    rel = (spliced - bare).abs().max() / bare.abs().max()
    assert rel < 1e-5


def test_straight_through_gradient_matches_bare(arch):
    model = make_model(arch)
    saes = make_saes(model)
    splice = Splice(model, {"resid.0": saes["resid.0"], "mlp.1": saes["mlp.1"]})
    hook = Site.parse("attn.0").hook_name
    grads = {}

    def grab(name):
        def fn(act, hook):
            leaf = act.detach().requires_grad_()
            grads[name] = leaf
            return leaf
        return fn

    with model.hooks(fwd_hooks=[(hook, grab("bare"))]):
        with torch.enable_grad():
            final_metric(model).sum().backward()
    with model.hooks(fwd_hooks=[(hook, grab("spliced"))]), splice.leaves() as leaves:
        with torch.enable_grad():
            final_metric(model).sum().backward()
        # a node's gradient is the model gradient at its site projected on the decoder directions
        g_site = leaves["resid.0"].vector.grad
        dirs = splice.decoder_directions("resid.0")
        assert torch.allclose(leaves["resid.0"].features.grad, g_site @ dirs.T, atol=1e-5)
    assert torch.allclose(grads["bare"].grad, grads["spliced"].grad, atol=1e-6)


def test_rules_leave_forward_unchanged(arch):
    model = make_model(arch)
    bare = model(TOKENS)
    with lrp_rules(model, LRPRules()):
        ruled = model(TOKENS)
    assert torch.equal(bare, ruled)


def test_rules_change_gradients_and_are_removed_after_error(arch):
    model = make_model(arch)
    n_hooks = sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())
    with pytest.raises(RuntimeError):
        with lrp_rules(model):
            assert sum(len(hp.fwd_hooks) for hp in model.hook_dict.values()) > n_hooks
            raise RuntimeError("boom")
    assert sum(len(hp.fwd_hooks) for hp in model.hook_dict.values()) == n_hooks


def _resid_grads(model, rules):
    """Gradient of the metric w.r.t. every block's resid_pre and the final resid."""
    store = {}

    def grab(name):
        def fn(act, hook):
            if name == "blocks.0.hook_resid_pre":
                act = act.detach().requires_grad_()  # the model's parameters are frozen
            act.retain_grad()
            store[name] = act
            return act
        return fn

    names = [f"blocks.{L}.hook_resid_pre" for L in range(model.cfg.n_layers)]
    names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    with torch.enable_grad(), lrp_rules(model, rules), model.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
        m = final_metric(model)
        m.sum().backward()
    return m.detach(), {n: store[n].grad for n in names}, {n: store[n].detach() for n in names}


def test_relevance_is_conserved_on_bias_free_model(arch):
    """With zero biases and all rules on, sum(grad x input) at every residual stream equals m."""
    model = make_model(arch, bias_free=True)
    m, grads, acts = _resid_grads(model, LRPRules())
    for name, g in grads.items():
        relevance = (g * acts[name]).sum(dim=(1, 2))
        assert torch.allclose(relevance, m, rtol=1e-4, atol=1e-5), name
    # and plain gradients do not conserve it (the check is not vacuous)
    m0, grads0, acts0 = _resid_grads(model, LRPRules.none())
    rel0 = (grads0["blocks.0.hook_resid_pre"] * acts0["blocks.0.hook_resid_pre"]).sum(dim=(1, 2))
    assert not torch.allclose(rel0, m0, rtol=1e-3)


# For each rule alone: the hook points of the last block where gradients must still equal plain
# gradients (at or above the rule's op) and where they must first differ (the op's input).
RULE_POINTS = {
    "gpt2": {
        "activation": (["mlp.hook_post", "hook_mlp_out"], "mlp.hook_pre"),
        "ln": (["ln2.hook_normalized", "mlp.hook_pre"], "hook_resid_mid"),
        "attention": (["attn.hook_z", "attn.hook_v"], "attn.hook_attn_scores"),
    },
    "gemma3": {
        "activation": (["mlp.hook_post", "mlp.hook_pre_linear"], "mlp.hook_pre"),
        "gate": (["mlp.hook_post"], "mlp.hook_pre_linear"),
        "ln": (["hook_mlp_out"], "mlp.hook_post"),
        "attention": (["attn.hook_z", "attn.hook_v"], "attn.hook_attn_scores"),
    },
}


@pytest.mark.parametrize("arch_name", ["gpt2", "gemma3"])
def test_each_rule_changes_gradient_only_across_its_component(arch_name):
    model = make_model(arch_name)
    last = model.cfg.n_layers - 1
    for rule, (same, differ) in RULE_POINTS[arch_name].items():
        names = [f"blocks.{last}.{n}" for n in same + [differ]]
        results = []
        for rules in (LRPRules.none(), LRPRules(**{k: (k == rule) for k in ("ln", "attention", "activation", "gate")})):
            store = {}

            def grab(name):
                def fn(act, hook):
                    if act.requires_grad:
                        act.retain_grad()
                    store[name] = act
                    return act
                return fn

            with torch.enable_grad(), lrp_rules(model, rules), model.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
                # make the residual stream a leaf so every hook point is on the gradient path
                resid = model(TOKENS, stop_at_layer=last)
                resid = resid.detach().requires_grad_()
                out = model(resid, start_at_layer=last, stop_at_layer=model.cfg.n_layers)
                # a fixed linear read-out of the block's output, so no rule acts above the block
                (out * READOUT[: out.shape[1]]).sum().backward()
            results.append({n: (store[n].grad if store[n].grad is not None else torch.zeros_like(store[n]))
                            for n in names})
        plain, ruled = results
        for n in names[:-1]:
            assert torch.allclose(plain[n], ruled[n], atol=1e-7), (rule, n)
        assert not torch.allclose(plain[names[-1]], ruled[names[-1]], atol=1e-6), (rule, names[-1])


@pytest.mark.parametrize("kind", ["standard", "topk", "jumprelu", "topk-rescaled"])
def test_encoder_directions_are_the_encoder_jacobian(kind):
    """d f_i / d x = E_i wherever f_i != 0, for every supported SAE family."""
    from sae_lens import (JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                          TopKSAEConfig)

    torch.manual_seed(0)
    d, F = 16, 40
    sae = {"standard": lambda: StandardSAE(StandardSAEConfig(d_in=d, d_sae=F)),
           "topk": lambda: TopKSAE(TopKSAEConfig(d_in=d, d_sae=F, k=5)),
           "topk-rescaled": lambda: TopKSAE(TopKSAEConfig(d_in=d, d_sae=F, k=5, rescale_acts_by_decoder_norm=True)),
           "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=F))}[kind]()
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.5)
        if kind == "jumprelu":
            sae.threshold.abs_()
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    model = make_model("gpt2")
    splice = Splice(model, {"resid.0": sae})
    E = splice.encoder_directions("resid.0")
    x = torch.randn(5, d, requires_grad=True)
    f = sae.encode(x)
    for i in torch.nonzero(f[0]).flatten().tolist()[:3]:
        g = torch.autograd.grad(f[0, i], x, retain_graph=True)[0][0]
        assert torch.allclose(g, E[i], atol=1e-5)


def test_encoder_directions_reject_a_per_token_normalised_encoder():
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=24, normalize_activations="layer_norm"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.5)
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    splice = Splice(make_model("gpt2"), {"resid.0": sae})
    with pytest.raises(ValueError, match="affine encoder"):
        splice.encoder_directions("resid.0")
