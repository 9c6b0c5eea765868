"""Gemma Scope 2-format SAE sets, offline: the bundled set description, SAELens's own gemma_3 loader
answered from a local mirror, hook_z attention SAEs at sparse layers (5, 9, 12, 15), splicing and edges
equal to the reference oracle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from conftest import D_VOCAB, make_dataset
from featcirc.attribution import AttributionSettings, attribute, get_method
from featcirc.attribution.nodes import record_batch
from featcirc.attribution.reference import reference_edges
from featcirc.attribution.scores import Cost
from featcirc.attribution.splice import make_splice
from featcirc.saes import SAE_HUB_ENV, load_saes
from featcirc.saes.bundled_path import bundled_sae_dir
from featcirc.saes.loading import SAEUnavailableError, load_sae_set_description
from featcirc.sites import METRIC, Site, parse_node_id

LAYERS = (5, 9, 12, 15)


def test_bundled_set_expands_to_the_releases_hooks():
    desc = load_sae_set_description("gemma-3-270m")
    assert desc["name"] == "gemma-3-270m:16k-small"
    assert set(desc["saes"]) == {f"{k}.{L}" for k in ("resid", "mlp", "z") for L in LAYERS}
    assert desc["saes"]["z.9"] == dict(release="gemma-scope-2-270m-pt-att", sae_id="layer_9_width_16k_l0_small",
                                       hook_name="blocks.9.attn.hook_z")
    assert desc["saes"]["resid.5"]["hook_name"] == "blocks.5.hook_resid_post"
    assert len(load_sae_set_description("gemma-3-270m-all:262k-big")["saes"]) == 3 * 18
    with pytest.raises(ValueError, match="variants: 16k-big, 16k-small, 262k-big, 262k-small"):
        load_sae_set_description("gemma-3-270m-all:65k-medium")


def small_gemma(n_layers: int = 16) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=D_VOCAB, d_mlp=64,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", gated_mlp=True,
        use_normalization_before_and_after=True, use_qk_norm=True, n_key_value_heads=1,
        positional_embedding_type="rotary", rotary_base=10000, final_rms=True, use_local_attn=True,
        window_size=4, attn_types=["local", "global"] * (n_layers // 2), model_name="small-gemma", seed=0)
    model = HookedTransformer(cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.normal_(1.0, 0.2)
    return model.eval().requires_grad_(False)


def write_mirror(root, model, d_sae=24):
    """Gemma Scope 2 files as the hub holds them: <repo>/<kind>/layer_L_width_16k_l0_small/params.safetensors."""
    folders = {"resid": "resid_post", "mlp": "mlp_out", "z": "attn_out"}
    for i, (kind, folder) in enumerate(folders.items()):
        d_in = model.cfg.n_heads * model.cfg.d_head if kind == "z" else model.cfg.d_model
        for L in LAYERS:
            g = torch.Generator().manual_seed(10 * i + L)
            path = root / "google" / "gemma-scope-2-270m-pt" / folder / f"layer_{L}_width_16k_l0_small"
            path.mkdir(parents=True)
            save_file({"w_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
                       "w_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
                       "b_enc": torch.randn(d_sae, generator=g) * 0.1,
                       "b_dec": torch.randn(d_in, generator=g) * 0.1,
                       "threshold": torch.rand(d_sae, generator=g) * 0.1}, str(path / "params.safetensors"))


@pytest.fixture
def scope_set(tmp_path, monkeypatch):
    model = small_gemma()
    write_mirror(tmp_path / "hub", model)
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path / "hub"))
    desc = json.loads((bundled_sae_dir() / "sets" / "gemma-3-270m.json").read_text())
    desc.update(model="small-gemma", model_aliases=[], n_layers=16, d_model=32)
    spec = tmp_path / "small-gemma-scope.json"
    spec.write_text(json.dumps(desc))
    return model, spec


def test_gemma_scope_saes_load_splice_and_give_edges(scope_set):
    model, spec = scope_set
    saes = load_saes(model, str(spec))
    assert list(saes) == [f"{k}.{L}" for L in LAYERS for k in ("z", "mlp", "resid")]
    z = saes["z.9"]
    assert type(z).__name__ == "JumpReLUSAE" and z.cfg.metadata.hook_name == "blocks.9.attn.hook_z"
    assert z.cfg.d_in == 32 and not z.cfg.apply_b_dec_to_input
    data = make_dataset(n_batches=1, batch=2, length=6)
    # splicing leaves the forward unchanged
    splice = make_splice(model, "feature", saes)
    tokens = data.batches[0].clean
    with torch.no_grad():
        bare = model(tokens, stop_at_layer=16)
        with splice.leaves():
            spliced = model(tokens, stop_at_layer=16)
    assert torch.allclose(bare, spliced, rtol=1e-5, atol=1e-5)
    settings = AttributionSettings(max_nodes=60, progress=False)
    nodes, edges = attribute(model, data, "relp", saes, settings=settings)
    got = {k: w for k, w in edges.as_dict().items() if k[1] != METRIC}
    site_pairs = {(parse_node_id(u).site, parse_node_id(d).site) for u, d in got}
    assert (Site("resid", 5), Site("z", 9)) in site_pairs or (Site("resid", 5), Site("resid", 9)) in site_pairs
    assert all(d.layer in LAYERS and (u.layer == d.layer or u.layer == LAYERS[LAYERS.index(d.layer) - 1])
               for u, d in site_pairs)
    m = get_method("relp")
    records = [record_batch(splice, b, m, 1, 256, Cost()) for b in data.batches]
    ref = reference_edges(model, {s.name: v for s, v in splice.saes.items()}, splice.site_names, records,
                          [n for n in edges.nodes if n != METRIC], m, 1, "none", data.n_pairs)
    assert set(got) == set(ref)
    scale = max(abs(w) for w in ref.values())
    assert max(abs(got[k] - ref[k]) for k in ref) <= 1e-5 * scale


def test_missing_weights_offline_is_a_clear_error(scope_set, tmp_path, monkeypatch):
    model, spec = scope_set
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(SAE_HUB_ENV, str(empty))
    with pytest.raises(SAEUnavailableError, match="HF_HUB_OFFLINE=1"):
        load_saes(model, str(spec), sites=["resid.5"])


# ------------------------------------------------------------------------------------- transcoders
def write_transcoder_mirror(root, model, layers, d_sae=24, variants=("small", "small_affine")):
    """Gemma Scope 2 transcoders as the hub holds them: <repo>/transcoder_all/layer_L_width_16k_l0_<v>/
    params.safetensors with w_enc [d_in, d_sae], w_dec [d_sae, d_out], b_enc, b_dec, threshold and, in the
    affine folders, affine_skip_connection [d_in, d_out]; no config.json (SAELens infers it from the path)."""
    d = model.cfg.d_model
    written = {}
    for v in variants:
        for L in layers:
            g = torch.Generator().manual_seed(100 * L + len(v))
            params = {"w_enc": torch.randn(d, d_sae, generator=g) * 0.3, "w_dec": torch.randn(d_sae, d, generator=g) * 0.3,
                      "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d, generator=g) * 0.1,
                      "threshold": torch.rand(d_sae, generator=g) * 0.1}
            if v.endswith("affine"):
                params["affine_skip_connection"] = torch.randn(d, d, generator=g) * 0.1
            path = root / "google" / "gemma-scope-2-270m-pt" / "transcoder_all" / f"layer_{L}_width_16k_l0_{v}"
            path.mkdir(parents=True)
            save_file(params, str(path / "params.safetensors"))
            written[(L, v)] = params
    return written


def test_transcoder_set_description_and_variants():
    desc = load_sae_set_description("gemma-3-270m-transcoders")
    assert desc["name"] == "gemma-3-270m-transcoders:16k-small"
    assert list(desc["saes"]) == [f"tc.{L}" for L in range(18)]
    assert desc["saes"]["tc.7"] == dict(release="gemma-scope-2-270m-pt-transcoders-all",
                                        sae_id="layer_7_width_16k_l0_small", hook_name="blocks.7.hook_mlp_in")
    affine = load_sae_set_description("gemma-3-270m-transcoders:262k-big-affine")["saes"]
    assert affine["tc.17"]["sae_id"] == "layer_17_width_262k_l0_big_affine"
    with pytest.raises(ValueError, match=r"no variant '65k-small' .*variants: 16k-big, 16k-big-affine, 16k-small, "
                                         r"16k-small-affine, 262k-big, 262k-big-affine, 262k-small, 262k-small-affine"):
        load_sae_set_description("gemma-3-270m-transcoders:65k-small")
    with pytest.raises(ValueError, match=r"no variant '16k-small-skip' \(write <width>-<l0>\[-affine\]\)"):
        load_sae_set_description("gemma-3-270m-transcoders:16k-small-skip")
    from featcirc.saes.loading import NAMED_SETS, _unknown

    assert "gemma-3-270m-transcoders" in NAMED_SETS and "gemma-3-270m-transcoders" in str(_unknown("x"))


@pytest.fixture(scope="module")
def gemma18():
    return small_gemma(18)


def test_gemma_scope_transcoders_load_by_name_offline_and_splice(gemma18, tmp_path, monkeypatch):
    from sae_lens.saes.transcoder import JumpReLUSkipTranscoder, JumpReLUTranscoder

    from featcirc.attribution.splice import Splice
    from featcirc.saes.fit import expectations

    model = gemma18
    written = write_transcoder_mirror(tmp_path / "hub", model, range(18))
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path / "hub"))
    desc = json.loads((bundled_sae_dir() / "sets" / "gemma-3-270m-transcoders.json").read_text())
    desc.update(model="small-gemma", model_aliases=[], d_model=32)
    spec = tmp_path / "small-gemma-transcoders.json"
    spec.write_text(json.dumps(desc))

    tcs = load_saes(model, str(spec))
    assert list(tcs) == [f"tc.{L}" for L in range(18)]
    tc = tcs["tc.4"]
    assert type(tc) is JumpReLUTranscoder and tc.cfg.metadata.hook_name == "blocks.4.hook_mlp_in"
    assert (tc.cfg.d_in, tc.cfg.d_out, tc.cfg.d_sae) == (32, 32, 24)
    assert torch.equal(tc.W_dec, written[(4, "small")]["w_dec"]) and torch.equal(tc.threshold,
                                                                                 written[(4, "small")]["threshold"])
    expected = expectations({"tc.4": tc}, str(spec))["tc.4"]  # the fit check's L0 from the registry (16 for layer 4)
    assert (expected["expected_l0"], expected["expected_l0_from"]) == (16.0, "SAELens registry")
    desc_affine = dict(desc, template=dict(desc["template"], default="16k-small-affine"))
    spec_affine = tmp_path / "small-gemma-transcoders-affine.json"
    spec_affine.write_text(json.dumps(desc_affine))
    skip = load_saes(model, str(spec_affine), sites=["tc.3", "tc.11"])
    assert list(skip) == ["tc.3", "tc.11"] and type(skip["tc.3"]) is JumpReLUSkipTranscoder
    assert torch.equal(skip["tc.3"].W_skip, written[(3, "small_affine")]["affine_skip_connection"].T)

    tokens = torch.randint(1, 61, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bare = model(tokens)
        for saes in (tcs, skip):
            with Splice(model, saes).leaves():
                assert torch.allclose(model(tokens), bare, rtol=1e-5, atol=1e-5)


def test_a_set_may_mix_gemma_scope_saes_and_transcoders(gemma18, tmp_path, monkeypatch):
    from featcirc.attribution.splice import Splice

    model = gemma18
    write_transcoder_mirror(tmp_path / "hub", model, (3, 7), variants=("small",))
    for L in (3, 7):  # residual SAEs of the -all release, as the hub holds them
        g = torch.Generator().manual_seed(L)
        path = tmp_path / "hub" / "google" / "gemma-scope-2-270m-pt" / "resid_post_all" / f"layer_{L}_width_16k_l0_small"
        path.mkdir(parents=True)
        save_file({"w_enc": torch.randn(32, 24, generator=g) * 0.3, "w_dec": torch.randn(24, 32, generator=g) * 0.3,
                   "b_enc": torch.randn(24, generator=g) * 0.1, "b_dec": torch.randn(32, generator=g) * 0.1,
                   "threshold": torch.rand(24, generator=g) * 0.1}, str(path / "params.safetensors"))
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path / "hub"))
    spec = tmp_path / "mixed.json"
    spec.write_text(json.dumps(dict(
        name="mixed", model="small-gemma", n_layers=18, d_model=32,
        template=dict(releases={"resid": "gemma-scope-2-270m-pt-res-all", "tc": "gemma-scope-2-270m-pt-transcoders-all"},
                      layers=[3, 7], sae_id="layer_{layer}_width_{width}_l0_{l0}{suffix}", suffixes={"affine": "_affine"},
                      default="16k-small"))))
    saes = load_saes(model, str(spec))
    assert list(saes) == ["tc.3", "resid.3", "tc.7", "resid.7"]
    assert type(saes["resid.3"]).__name__ == "JumpReLUSAE" and type(saes["tc.7"]).__name__ == "JumpReLUTranscoder"
    tokens = torch.randint(1, 61, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        bare = model(tokens)
        with Splice(model, saes).leaves():
            assert torch.allclose(model(tokens), bare, rtol=1e-5, atol=1e-5)
