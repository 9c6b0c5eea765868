"""featcirc.saes.loading: SAE sets keyed by site (directories, named sets through SAE.from_pretrained with the
hub replaced by a local mirror, the tiny route, dicts), validation and round-trips."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
from huggingface_hub.errors import EntryNotFoundError
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from transformer_lens import HookedTransformer, HookedTransformerConfig

from featcirc.saes import loading as fs
from featcirc.saes.loading import (
    NAMED_SETS,
    SAE_HUB_ENV,
    SAEMismatchError,
    SAEUnavailableError,
    load_sae_set_description,
    load_saes,
    sae_site,
    save_saes,
    site_from_hook_name,
    validate_sae,
)
from featcirc.sites import Site

WIDTH = 32


def tiny_model(*, n_layers: int = 2, d_model: int = WIDTH, name: str = "test-model",
               dtype: torch.dtype = torch.float32, parallel: bool = False) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, d_head=8,
                                  n_heads=2 if d_model == WIDTH else 1,
                                  d_mlp=16, d_vocab=11, n_ctx=8, act_fn="gelu", normalization_type="LN",
                                  model_name=name, dtype=dtype, parallel_attn_mlp=parallel, seed=0)
    return HookedTransformer(cfg)


def make_sae(hook: "str | None", *, d_in: int = WIDTH, d_sae: int = 24, seed: int = 0,
             jumprelu: bool = False) -> SAE:
    """A random SAELens SAE (all parameters random, so equality checks see every tensor)."""
    torch.manual_seed(seed)
    sae = (JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)) if jumprelu
           else StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p).abs() if p.ndim == 1 and jumprelu else torch.randn_like(p))
    if hook is not None:
        sae.cfg.metadata.hook_name = hook
    return sae


def assert_same_weights(a: SAE, b: SAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k].cpu().to(sb[k].dtype), sb[k].cpu()), k


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return tiny_model()


# ----------------------------------------------------------------------------- hook names -> sites


def test_site_from_hook_name_with_resid_pre_alias():
    assert site_from_hook_name("blocks.0.hook_resid_pre") == Site("embed", -1)
    assert site_from_hook_name("blocks.1.hook_resid_pre") == Site("resid", 0)
    assert site_from_hook_name("blocks.11.hook_resid_pre") == Site("resid", 10)
    assert site_from_hook_name("blocks.11.hook_resid_post") == Site("resid", 11)
    assert site_from_hook_name("blocks.3.hook_attn_out") == Site("attn", 3)
    assert site_from_hook_name("blocks.3.hook_mlp_out") == Site("mlp", 3)
    assert site_from_hook_name("blocks.3.attn.hook_z") == Site("z", 3)  # Gemma Scope 2's attention SAEs
    for bad in ("hook_embed", "blocks.0.hook_mlp_in", "blocks.2.hook_resid_mid", "blocks.x.hook_resid_pre"):
        with pytest.raises(SAEMismatchError, match="cannot be spliced"):
            site_from_hook_name(bad)


def test_hook_aliasing_has_one_definition_in_sites():
    """featcirc.sites maps hook names to sites (the loader and the torch-free checks only word the error),
    and hook_names_of is its inverse: every hook that names a site, which the fit check leaves out of
    its search for a better hook."""
    from featcirc import sites
    from featcirc.commands.checks import InputError, _site_of_hook

    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.3.hook_resid_post",
             "blocks.3.hook_attn_out", "blocks.3.attn.hook_z", "blocks.3.hook_mlp_out"]
    for hook in hooks:
        site = sites.site_from_hook_name(hook)
        assert site_from_hook_name(hook) == _site_of_hook(hook, Path("cfg.json")) == site
        assert hook in sites.hook_names_of(site)
    for site in sites.all_sites(4, kinds=sites.SITE_KINDS):
        back = sites.transcoder_site_from_hook_name if site.is_transcoder else sites.site_from_hook_name
        assert {back(h) for h in sites.hook_names_of(site)} == {site}
    assert sites.hook_names_of("resid.2") == ("blocks.2.hook_resid_post", "blocks.3.hook_resid_pre")
    with pytest.raises(ValueError, match="not a featcirc site"):
        sites.site_from_hook_name("blocks.0.hook_mlp_in")
    with pytest.raises(InputError, match="is not a site featcirc can splice"):
        _site_of_hook("blocks.0.hook_mlp_in", Path("cfg.json"))


def test_sae_site_reads_the_hook_and_rejects_per_head_saes():
    assert sae_site(make_sae("blocks.2.hook_resid_pre")) == Site("resid", 1)
    with pytest.raises(SAEMismatchError, match="no cfg.metadata.hook_name"):
        sae_site(make_sae(None))
    head = make_sae("blocks.1.hook_attn_out")
    head.cfg.metadata.hook_head_index = 3
    with pytest.raises(SAEMismatchError, match="hook_head_index=3"):
        sae_site(head)


# ----------------------------------------------------------------------------- directories


def _save(sae: SAE, path: Path) -> Path:
    sae.save_model(path)
    return path


def test_directory_of_saes_loads_keyed_and_ordered_by_site(tmp_path, model):
    hooks = {"zz_first": "blocks.1.hook_resid_post", "b": "blocks.0.hook_resid_pre",
             "a": "blocks.1.hook_mlp_out",
             "c": "blocks.0.hook_attn_out", "d": "blocks.1.hook_resid_pre"}
    made = {name: make_sae(h, seed=i, jumprelu=(i % 2 == 1)) for i, (name, h) in enumerate(hooks.items())}
    for name, sae in made.items():
        _save(sae, tmp_path / name)
    (tmp_path / "notes").mkdir()  # a directory without cfg.json is ignored
    got = load_saes(model, tmp_path)
    assert list(got) == ["embed", "attn.0", "resid.0", "mlp.1", "resid.1"]  # forward order, not name order
    by_site = {"embed": "b", "attn.0": "c", "resid.0": "d", "mlp.1": "a", "resid.1": "zz_first"}
    for site, name in by_site.items():
        assert type(got[site]) is type(made[name])
        assert_same_weights(got[site], made[name])
        assert got[site].cfg.metadata.hook_name == hooks[name]  # own hook kept (resid.0 reads resid_pre.1)
        assert not got[site].training
        assert all(not p.requires_grad for p in got[site].parameters())


def test_single_sae_directory_loads(tmp_path, model):
    sae = make_sae("blocks.1.hook_attn_out", seed=7, jumprelu=True)
    got = load_saes(model, _save(sae, tmp_path / "one"))
    assert list(got) == ["attn.1"]
    assert_same_weights(got["attn.1"], sae)


def test_pre_6_config_directory_loads(tmp_path, model):
    """Configs written by SAELens < 6 (e.g. the gpt2-small-res-jb files) name the hook ``hook_point``."""
    sae = make_sae("blocks.2.hook_resid_pre", seed=3)
    d = _save(sae, tmp_path / "old")
    (d / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": WIDTH, "d_sae": 24, "dtype": "float32", "device": "cpu",
        "model_name": "gpt2-small", "hook_point": "blocks.2.hook_resid_pre", "hook_point_layer": 2,
        "hook_point_head_index": None, "activation_fn_str": "relu", "apply_b_dec_to_input": True}))
    got = load_saes(model, d)
    assert list(got) == ["resid.1"] and got["resid.1"].cfg.metadata.hook_name == "blocks.2.hook_resid_pre"
    assert_same_weights(got["resid.1"], sae)


def test_two_saes_for_one_site_in_a_directory_are_an_error(tmp_path, model):
    _save(make_sae("blocks.1.hook_resid_pre", seed=1), tmp_path / "x")
    _save(make_sae("blocks.0.hook_resid_post", seed=2), tmp_path / "y")  # same site, resid.0
    with pytest.raises(SAEMismatchError, match="two SAEs for site resid.0.*x and y"):
        load_saes(model, tmp_path)


def test_save_saes_round_trips_weights_and_keys(tmp_path, model):
    saes = {"embed": make_sae("blocks.0.hook_resid_pre", seed=1),
            "resid.1": make_sae("blocks.1.hook_resid_post", seed=2, jumprelu=True),
            "mlp.0": make_sae(None, seed=3)}  # no hook name: the site key supplies it
    out = save_saes(saes, tmp_path / "set")
    assert sorted(p.name for p in out.iterdir()) == ["embed", "mlp.0", "resid.1"]
    saved_cfg = json.loads((out / "mlp.0" / "cfg.json").read_text())
    assert saved_cfg["metadata"]["hook_name"] == "blocks.0.hook_mlp_out"
    back = load_saes(model, out)
    assert list(back) == ["embed", "mlp.0", "resid.1"]
    for site, sae in saes.items():
        assert_same_weights(back[site], sae)
    # saving again replaces a site's directory in place, leaving no temporary entries behind
    saes2 = {"resid.1": make_sae("blocks.1.hook_resid_post", seed=9)}
    save_saes(saes2, out)
    assert sorted(p.name for p in out.iterdir()) == ["embed", "mlp.0", "resid.1"]
    assert_same_weights(load_saes(model, out, sites=["resid.1"])["resid.1"], saes2["resid.1"])
    with pytest.raises(SAEMismatchError, match="stored under site resid.0"):
        save_saes({"resid.0": make_sae("blocks.1.hook_mlp_out")}, tmp_path / "bad")


def test_save_saes_replaces_a_site_through_staged_dir(tmp_path, model, monkeypatch):
    """Each site's directory goes through featcirc.io.staged_dir: a save that fails leaves the old SAE
    in place and nothing hidden behind; the partial directory of a save killed outright is removed."""
    import subprocess

    out = save_saes({"resid.0": make_sae("blocks.0.hook_resid_post", seed=1)}, tmp_path / "set")
    old = load_saes(model, out)["resid.0"]
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    (out / f".resid.0.partial-{dead.pid}-x").mkdir()  # a save killed with SIGKILL
    broken = make_sae("blocks.0.hook_resid_post", seed=2)

    def fail(path):
        (Path(path) / "cfg.json").write_text("{}")
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(broken, "save_model", fail)
    with pytest.raises(RuntimeError, match="disk trouble"):
        save_saes({"resid.0": broken}, out)
    assert sorted(p.name for p in out.iterdir()) == ["resid.0"]  # the stale partial went too
    assert_same_weights(load_saes(model, out)["resid.0"], old)


def test_sites_filter(tmp_path, model):
    names = ["embed", "resid.0", "resid.1"]
    save_saes({s: make_sae(Site.parse(s).hook_name, seed=i) for i, s in enumerate(names)}, tmp_path)
    got = load_saes(model, tmp_path, sites=["resid.1", "embed"])
    assert list(got) == ["embed", "resid.1"]
    with pytest.raises(KeyError, match=r"\['mlp.1'\] are not in .*has \['embed', 'resid.0', 'resid.1'\]"):
        load_saes(model, tmp_path, sites=["mlp.1", "embed"])


def test_saes_follow_model_dtype_and_device(tmp_path):
    m64 = tiny_model(dtype=torch.float64)
    sae = make_sae("blocks.0.hook_resid_post", seed=4)
    got = load_saes(m64, {"resid.0": sae})
    assert got["resid.0"].W_enc.dtype == torch.float64 and got["resid.0"].W_enc.device.type == "cpu"
    x = torch.randn(3, WIDTH, dtype=torch.float64)
    assert got["resid.0"].decode(got["resid.0"].encode(x)).dtype == torch.float64


# ----------------------------------------------------------------------------- validation


def test_d_in_mismatch_names_both(tmp_path, model):
    sae = make_sae("blocks.1.hook_resid_post", d_in=48)
    with pytest.raises(SAEMismatchError) as e:
        load_saes(model, _save(sae, tmp_path / "wide"))
    msg = str(e.value)
    assert "blocks.1.hook_resid_post" in msg and "d_in=48" in msg
    assert "'test-model'" in msg and f"d_model={WIDTH}" in msg and "another model" in msg


def test_wrong_hook_names_both(model):
    with pytest.raises(SAEMismatchError) as e:
        load_saes(model, {"resid.7": make_sae("blocks.7.hook_resid_post")})
    msg = str(e.value)
    assert "blocks.7.hook_resid_post" in msg and "'test-model'" in msg and "2 layers" in msg
    assert "blocks.0.hook_resid_pre" in msg and "L in 0..1" in msg
    # the hook of an SAE must denote the site it is given for
    with pytest.raises(SAEMismatchError, match="hook_mlp_out belongs at site mlp.1.*not at site resid.1"):
        validate_sae(model, "resid.1", make_sae("blocks.1.hook_mlp_out"))
    # a hook featcirc cannot splice, named with the model's sites
    with pytest.raises(SAEMismatchError, match="hook_embed.*'test-model' has d_model=32"):
        validate_sae(model, "embed", make_sae("hook_embed"))


def test_dict_spec_accepts_site_and_hook_keys(model):
    a, b = make_sae("blocks.1.hook_resid_pre", seed=1), make_sae(None, seed=2)
    got = load_saes(model, {"blocks.1.hook_resid_pre": a, "attn.1": b})
    assert list(got) == ["resid.0", "attn.1"] and got["resid.0"] is a and got["attn.1"] is b
    assert all(not p.requires_grad for p in b.parameters())
    with pytest.raises(SAEMismatchError, match="two SAEs given for site resid.0"):
        load_saes(model, {"blocks.1.hook_resid_pre": a, "resid.0": b})


# ----------------------------------------------------------------------------- named sets


def _mirror(root: Path, set_name: str, d_sae: int = 8) -> dict[str, SAE]:
    """Write the SAEs of a named set into a hub mirror <root>/<repo_id>/<path>, as SAELens files."""
    desc = load_sae_set_description(set_name)
    directory = get_pretrained_saes_directory()
    made = {}
    for i, (site, e) in enumerate(desc["saes"].items()):
        info = directory[e["release"]]
        sae = make_sae(e["hook_name"], d_in=desc["d_model"], d_sae=d_sae, seed=100 + i)
        sae.save_model(root / info.repo_id / info.saes_map[e["sae_id"]])
        made[site] = sae
    return made


@pytest.fixture
def spy_from_pretrained(monkeypatch):
    calls = []
    original = SAE.from_pretrained.__func__

    def spy(cls, release, sae_id, *args, **kwargs):
        calls.append((release, sae_id))
        return original(cls, release, sae_id, *args, **kwargs)

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(spy))
    return calls


@pytest.fixture(scope="module")
def gpt2_shaped() -> HookedTransformer:
    """Random model with GPT-2 small's name, width and depth (tiny heads and MLP: fast)."""
    return tiny_model(n_layers=12, d_model=768, name="gpt2")


def test_named_set_resolves_through_from_pretrained_with_local_hub(tmp_path, monkeypatch, gpt2_shaped,
                                                                     spy_from_pretrained):
    made = _mirror(tmp_path, "gpt2-small")
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path))
    got = load_saes(gpt2_shaped, "gpt2-small")
    assert list(got) == ["embed"] + [f"resid.{i}" for i in range(12)]
    desc = load_sae_set_description("gpt2-small")
    assert spy_from_pretrained == [(desc["saes"][s]["release"], desc["saes"][s]["sae_id"]) for s in got]
    assert spy_from_pretrained[1] == ("gpt2-small-res-jb", "blocks.1.hook_resid_pre")  # resid.0 via alias
    for site, sae in got.items():
        assert_same_weights(sae, made[site])
    assert got["resid.0"].cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert loaders.hf_hub_download.__module__.startswith("huggingface_hub")  # the seam is restored


def test_named_set_downloads_only_requested_sites_via_hf_hub_download(tmp_path, monkeypatch, gpt2_shaped,
                                                                       spy_from_pretrained):
    """Replace SAELens's download function itself: the files asked for are the release's, from its repo."""
    made = _mirror(tmp_path, "gpt2-small")
    asked = []

    def fake_download(repo_id, filename, *, subfolder=None, force_download=False, **kw):
        asked.append((repo_id, filename))
        path = tmp_path / repo_id / (subfolder or "") / filename
        if not path.exists():
            from huggingface_hub.errors import EntryNotFoundError
            raise EntryNotFoundError(str(path))
        return str(path)

    monkeypatch.setattr(loaders, "hf_hub_download", fake_download)
    got = load_saes(gpt2_shaped, "gpt2-small", sites=["resid.4"])
    assert list(got) == ["resid.4"]
    assert spy_from_pretrained == [("gpt2-small-res-jb", "blocks.5.hook_resid_pre")]
    repo = "jbloom/GPT2-Small-SAEs-Reformatted"
    assert (repo, "blocks.5.hook_resid_pre/cfg.json") in asked
    assert (repo, "blocks.5.hook_resid_pre/sae_weights.safetensors") in asked
    assert_same_weights(got["resid.4"], made["resid.4"])


def test_pythia_set_maps_marks_dictionaries(tmp_path, monkeypatch, spy_from_pretrained):
    made = _mirror(tmp_path, "pythia-70m-deduped")
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path))
    pythia = tiny_model(n_layers=6, d_model=512, name="pythia-70m-deduped", parallel=True)
    got = load_saes(pythia, "pythia-70m-deduped", sites=["resid.2", "mlp.2", "attn.2", "embed"])
    assert list(got) == ["embed", "attn.2", "mlp.2", "resid.2"]
    assert spy_from_pretrained == [("pythia-70m-deduped-res-sm", "blocks.0.hook_resid_pre"),
                                   ("pythia-70m-deduped-att-sm", "blocks.2.hook_attn_out"),
                                   ("pythia-70m-deduped-mlp-sm", "blocks.2.hook_mlp_out"),
                                   ("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")]
    for site, sae in got.items():
        assert_same_weights(sae, made[site])


def test_named_set_for_another_model_is_rejected_before_download(model, spy_from_pretrained):
    with pytest.raises(SAEMismatchError) as e:
        load_saes(model, "gpt2-small")
    msg = str(e.value)
    assert "'gpt2-small'" in msg and "'gpt2'" in msg and "d_model=768" in msg and "'test-model'" in msg
    wrong_depth = tiny_model(n_layers=2, d_model=768, name="gpt2")
    with pytest.raises(SAEMismatchError, match="12 layers.*2 layers"):
        load_saes(wrong_depth, "gpt2-small")
    assert spy_from_pretrained == []


def test_named_set_with_missing_files_says_what_to_do(tmp_path, monkeypatch, gpt2_shaped):
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path))  # an empty mirror
    expected = f"gpt2-small-res-jb/blocks.3.hook_resid_pre for site resid.2.*{SAE_HUB_ENV}"
    with pytest.raises(SAEUnavailableError, match=expected):
        load_saes(gpt2_shaped, "gpt2-small", sites=["resid.2"])


def test_named_set_that_maps_an_sae_to_the_wrong_site_is_rejected(tmp_path, monkeypatch, gpt2_shaped):
    _mirror(tmp_path, "gpt2-small")
    desc = load_sae_set_description("gpt2-small")
    desc["saes"] = {"resid.3": dict(desc["saes"]["resid.2"])}  # an SAE of resid.2 listed for resid.3
    path = tmp_path / "bad-set.json"
    path.write_text(json.dumps(desc))
    monkeypatch.setenv(SAE_HUB_ENV, str(tmp_path))
    with pytest.raises(SAEMismatchError, match=r"reads blocks.3.hook_resid_pre \(site resid.2\).*site resid.3"):
        load_saes(gpt2_shaped, str(path))


@pytest.mark.parametrize("name", NAMED_SETS)
def test_set_descriptions_match_saelens_registry(name, monkeypatch):
    """Every entry names a real release and id, and its hook (as SAELens will report it) is its site."""
    desc = load_sae_set_description(name)
    directory = get_pretrained_saes_directory()
    assert desc["name"].split(":")[0] == name and desc["saes"]
    for site, e in desc["saes"].items():
        info = directory[e["release"]]
        assert e["sae_id"] in info.saes_map, (name, site, e)
        assert info.model in {desc["model"], *desc["model_aliases"]}
        tc = Site.parse(site).is_transcoder
        assert site_from_hook_name(e["hook_name"], transcoder=tc) == Site.parse(site)
        assert Site.parse(site).layer < desc["n_layers"]
        if info.conversion_func is None:  # SAELens-format repos: ids are the hook names
            assert e["hook_name"] == e["sae_id"]
        elif info.conversion_func == "gemma_2":  # the config is computed offline from the path
            cfg = loaders.get_gemma_2_config_from_hf(info.repo_id, info.saes_map[e["sae_id"]], "cpu")
            assert cfg["hook_name"] == e["hook_name"] and cfg["d_in"] == desc["d_model"]
        elif info.conversion_func == "gemma_3":  # the loader's own rule, with the hub answered offline
            def no_config(*a, **k):
                raise EntryNotFoundError("no config.json")
            monkeypatch.setattr(loaders, "hf_hub_download", no_config)
            monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes",
                                lambda repo, f: {"w_enc": [1024, 16384], "w_dec": [16384, desc["d_model"]]})
            cfg = loaders.get_gemma_3_config_from_hf(info.repo_id, info.saes_map[e["sae_id"]], "cpu")
            want = ("jumprelu_skip_transcoder" if e["sae_id"].endswith("_affine") else "jumprelu_transcoder") if tc \
                else "jumprelu"
            assert cfg["hook_name"] == e["hook_name"] and cfg["architecture"] == want
        else:
            pytest.fail(f"untested conversion {info.conversion_func}")


def test_bundled_sets_cover_the_expected_sites():
    assert {"gpt2-small", "pythia-70m-deduped", "gemma-2-2b"} <= set(NAMED_SETS)
    py = load_sae_set_description("pythia-70m-deduped")["saes"]
    assert len(py) == 19 and "embed" in py
    assert all(f"{k}.{i}" in py for k in ("attn", "mlp", "resid") for i in range(6))
    gm = load_sae_set_description("gemma-2-2b")["saes"]
    assert list(gm) == [f"resid.{i}" for i in range(26)]
    assert gm["resid.7"]["sae_id"] == "layer_7/width_16k/canonical"


# ----------------------------------------------------------------------------- tiny and unknown specs


def test_tiny_dispatches_to_its_directory(tmp_path, monkeypatch, model):
    sae = make_sae("blocks.0.hook_mlp_out", seed=5)
    save_saes({"mlp.0": sae}, tmp_path)
    monkeypatch.setitem(sys.modules, "featcirc.models.tiny", types.SimpleNamespace(TINY_SAE_DIR=tmp_path))
    got = load_saes(model, "tiny")
    assert list(got) == ["mlp.0"]
    assert_same_weights(got["mlp.0"], sae)
    monkeypatch.setitem(sys.modules, "featcirc.models.tiny", types.SimpleNamespace(TINY_SAE_DIR=tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="TINY_SAE_DIR.*absent"):
        load_saes(model, "tiny")
    monkeypatch.setitem(sys.modules, "featcirc.models.tiny", None)  # module missing: import fails
    with pytest.raises(FileNotFoundError, match="featcirc.models.tiny"):
        load_saes(model, "tiny")


def test_unknown_spec_lists_named_sets(tmp_path, model):
    for spec in ("no-such-set", tmp_path / "missing", 42):
        with pytest.raises(ValueError) as e:
            load_saes(model, spec)
        assert all(n in str(e.value) for n in NAMED_SETS) and "'tiny'" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a SAELens SAE directory"):
        load_saes(model, tmp_path / "empty")


def test_one_parser_of_sae_specs(tmp_path, monkeypatch):
    """parse_sae_spec is the one reading of --saes: the loader, the input checks and the run identity
    agree with it, by its precedence (names before directories of the same name)."""
    from featcirc.commands.checks import InputError, check_sae_spec
    from featcirc.saes.identity import _kind, resolve_sae_spec
    from featcirc.saes.spec import SAESpec, named_sae_sets, parse_sae_spec

    monkeypatch.chdir(tmp_path)
    assert named_sae_sets() == NAMED_SETS
    assert parse_sae_spec("tiny") == SAESpec("tiny", "bundled", name="tiny")
    p = parse_sae_spec("gemma-3-270m:65k-medium")
    assert (p.kind, p.name, p.variant, p.path.name) == ("named", "gemma-3-270m", "65k-medium", "gemma-3-270m.json")
    assert parse_sae_spec("gpt2-small").variant is None
    (tmp_path / "gpt2-small").mkdir()  # a name wins over a directory of that name (write ./gpt2-small)
    assert parse_sae_spec("gpt2-small").kind == "named" and resolve_sae_spec("gpt2-small") == "gpt2-small"
    assert parse_sae_spec("./gpt2-small").kind == "directory"
    (tmp_path / "mine.json").write_text('{"saes": {}}')
    assert parse_sae_spec("mine.json") == SAESpec("mine.json", "named", path=Path("mine.json"))
    assert parse_sae_spec("missing.json").kind == "directory"
    assert parse_sae_spec("gemma-3-270m-local") == SAESpec("gemma-3-270m-local", "local", name="gemma-3-270m-local")
    (tmp_path / "x-local").mkdir()
    assert parse_sae_spec("x-local").kind == "directory"
    assert parse_sae_spec(tmp_path / "nowhere") == SAESpec(str(tmp_path / "nowhere"), "directory",
                                                            path=tmp_path / "nowhere")
    with pytest.raises(TypeError):
        parse_sae_spec(42)
    for spec in ("tiny", "gpt2-small", "mine.json", "gemma-3-270m-local", "x-local", "nowhere"):
        assert _kind(spec) == parse_sae_spec(spec).kind
    for spec in ("tiny", "gpt2-small", "gemma-3-270m:65k-medium", "mine.json", "gemma-3-270m-local"):
        check_sae_spec(spec)  # the loader's to check
    with pytest.raises(InputError, match="is no directory and no known set name"):
        check_sae_spec("nowhere")
    with pytest.raises(InputError, match="neither a SAELens SAE directory"):
        check_sae_spec("x-local")  # an (empty) directory of that name is a directory


def test_module_is_exported_lazily():
    import featcirc

    assert featcirc.load_saes is fs.load_saes


def test_locally_trained_set_is_found_in_the_cache(tmp_path, monkeypatch, model):
    from featcirc.saes.trained import TrainedSetMissing

    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path))
    with pytest.raises(TrainedSetMissing, match="featcirc train-saes"):
        load_saes(model, "gemma-3-270m-local")
    saes = {"resid.0": make_sae("blocks.0.hook_resid_post")}
    save_saes(saes, tmp_path / "saes" / "custom-local")
    assert list(load_saes(model, "custom-local")) == ["resid.0"]
