"""Transcoders in SAE sets (featcirc.saes.loading, featcirc.commands.checks): SAELens transcoder directories
keyed by ``tc.L`` from their input hook, mixed with SAEs in one set, saved and loaded back as the same classes,
and every way of putting one in the wrong place (wrong layer, wrong width, at an SAE site) a clear error
naming the site, before loading (the input checks) as well as in the loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_saes, make_transcoders, one_line_error
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.transcoder import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, JumpReLUTranscoder,
                                      SkipTranscoder, Transcoder)

from featcirc.attribution.splice import Splice
from featcirc.commands.checks import InputError, check_sae_config, check_sae_spec
from featcirc.saes.identity import sae_set_identity
from featcirc.saes.loading import SAEMismatchError, load_saes, sae_site, save_saes, validate_sae
from featcirc.sites import Site

D = 32  # make_model's d_model


@pytest.fixture(scope="module")
def model():
    return make_model("gpt2")


def _jumprelu_skip(model, layer: int, seed: int = 3) -> JumpReLUSkipTranscoder:
    torch.manual_seed(seed)
    tc = JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(d_in=D, d_sae=20, d_out=D, apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn_like(p).abs() * 0.1 if p.ndim == 1 else torch.randn_like(p) * 0.3)
    tc.cfg.metadata.hook_name = f"blocks.{layer}.hook_mlp_in"
    return tc.eval()


def _mixed_set(model) -> dict:
    """Residual SAEs, a Transcoder at tc.0, a SkipTranscoder at tc.1 (no mlp SAEs: a layer has one or the other)."""
    saes = make_saes(model, kinds=("resid",))
    saes["tc.0"] = make_transcoders(model, layers=[0], seed=1)["tc.0"]
    saes["tc.1"] = make_transcoders(model, layers=[1], seed=2, skip=True)["tc.1"]
    return saes


def _same(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k].cpu(), sb[k].cpu()), k


def _edit_cfg(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


# ------------------------------------------------------------------------------------- loading and saving
def test_a_directory_mixing_saes_and_transcoders_loads_keyed_by_site(tmp_path, model):
    made = _mixed_set(model)
    save_saes(made, tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["resid.0", "resid.1", "tc.0", "tc.1"]
    cfg = json.loads((tmp_path / "set" / "tc.1" / "cfg.json").read_text())
    assert cfg["architecture"] == "skip_transcoder" and cfg["metadata"]["hook_name"] == "blocks.1.hook_mlp_in"
    got = load_saes(model, tmp_path / "set")
    assert list(got) == ["tc.0", "resid.0", "tc.1", "resid.1"]  # forward order: tc.L where mlp.L would be
    assert type(got["tc.0"]) is Transcoder and type(got["tc.1"]) is SkipTranscoder
    for site, sae in made.items():
        _same(got[site], sae)
        assert got[site].cfg.metadata.hook_name == sae.cfg.metadata.hook_name
        assert not got[site].training and not any(p.requires_grad for p in got[site].parameters())
    assert sae_site(got["tc.1"]) == Site("tc", 1)
    # --sites selects tc.L by name
    assert list(load_saes(model, tmp_path / "set", sites=["tc.1", "resid.0"])) == ["resid.0", "tc.1"]
    with pytest.raises(KeyError, match=r"\['mlp.1'\] are not in"):
        load_saes(model, tmp_path / "set", sites=["mlp.1"])
    # the loaded set splices: the forward is the bare model's
    tokens = torch.randint(1, 61, (2, 6), generator=torch.Generator().manual_seed(0))
    splice = Splice(model, got)
    with torch.no_grad():
        bare = model(tokens)
        with splice.leaves():
            spliced = model(tokens)
    assert torch.allclose(bare, spliced, atol=1e-5)
    # the input checks and the run identity read the same set
    check_sae_spec(str(tmp_path / "set"), dict(d_model=D, n_layers=2, n_heads=4, d_head=8))
    ident = sae_set_identity(str(tmp_path / "set"))
    assert set(ident["sites"]) == {"resid.0", "resid.1", "tc.0", "tc.1"}


def test_save_saes_round_trips_every_transcoder_class(tmp_path, model):
    saes = {"tc.0": make_transcoders(model, layers=[0], jumprelu=True)["tc.0"], "tc.1": _jumprelu_skip(model, 1)}
    saes["tc.0"].cfg.metadata.hook_name = None  # no hook: the site's input hook is written
    save_saes(saes, tmp_path)
    assert json.loads((tmp_path / "tc.0" / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.0.hook_mlp_in"
    got = load_saes(model, tmp_path)
    assert type(got["tc.0"]) is JumpReLUTranscoder and type(got["tc.1"]) is JumpReLUSkipTranscoder
    for site in saes:
        _same(got[site], saes[site])
    assert torch.equal(got["tc.1"].W_skip, saes["tc.1"].W_skip)
    single = load_saes(model, tmp_path / "tc.1")  # one transcoder directory on its own
    assert list(single) == ["tc.1"]


def test_dict_specs_key_transcoders_by_site_or_hook(model):
    a = make_transcoders(model, layers=[0])["tc.0"]
    b = make_transcoders(model, layers=[1], seed=4)["tc.1"]
    b.cfg.metadata.hook_name = "blocks.1.ln2.hook_normalized"  # circuit-tracer's spelling of the MLP's input
    got = load_saes(model, {"blocks.0.hook_mlp_in": a, "blocks.1.hook_mlp_out": b})
    assert list(got) == ["tc.0", "tc.1"]


# ------------------------------------------------------------------------------------------- mistakes
def test_a_transcoder_in_a_directory_named_for_another_site_is_an_error(tmp_path, model):
    tc = make_transcoders(model, layers=[1])["tc.1"]
    tc.save_model(tmp_path / "tc.0")  # reads blocks.1.hook_mlp_in, filed under tc.0
    with pytest.raises(SAEMismatchError, match=r"tc\.0 is named for site tc\.0, but its cfg.json is for site tc\.1; "
                                                r"rename the directory to tc\.1"):
        load_saes(model, tmp_path)
    with pytest.raises(InputError, match=r"named for site tc\.0, but its cfg.json is for site tc\.1"):
        check_sae_spec(str(tmp_path))
    (tmp_path / "tc.0").rename(tmp_path / "my-transcoder")  # any other name: the hook decides
    assert list(load_saes(model, tmp_path)) == ["tc.1"]
    check_sae_spec(str(tmp_path))


@pytest.mark.parametrize("change, fragment", [
    (dict(d_out=16), "d_in=32 and d_out=16"),
    (dict(d_in=16), "d_in=16 and d_out=32"),
])
def test_a_transcoder_of_another_width_names_its_site(tmp_path, model, change, fragment):
    from sae_lens.saes.transcoder import TranscoderConfig

    cfg = {**dict(d_in=D, d_sae=12, d_out=D, apply_b_dec_to_input=False), **change}
    tc = Transcoder(TranscoderConfig(**cfg))
    tc.cfg.metadata.hook_name = "blocks.1.hook_mlp_in"
    save_saes({"tc.1": tc}, tmp_path)
    with pytest.raises(SAEMismatchError, match=rf"transcoder for blocks\.1\.hook_mlp_in at site tc\.1 has {fragment}, "
                                                r"but model .* d_model=32 .* both must be 32"):
        load_saes(model, tmp_path)
    with pytest.raises(InputError, match=rf"transcoder .*tc\.1 \(site tc\.1\) has {fragment}, but the model's MLP "
                                          r"input and output are d_model=32 wide"):
        check_sae_config(tmp_path / "tc.1", dict(d_model=D, n_layers=2))
    check_sae_config(tmp_path / "tc.1")  # consistent in itself: only the model's width is wrong


def test_transcoders_and_saes_only_go_at_their_own_sites(tmp_path, model):
    tc = make_transcoders(model, layers=[1])["tc.1"]
    sae = make_saes(model, kinds=("mlp",))["mlp.1"]
    with pytest.raises(SAEMismatchError, match=r"transcoder \(Transcoder, for blocks\.1\.hook_mlp_in\) cannot be "
                                                r"spliced at site mlp\.1: .* go at tc\.1"):
        validate_sae(model, "mlp.1", tc)
    with pytest.raises(SAEMismatchError, match=r"site tc\.1 takes a transcoder .* StandardSAE"):
        load_saes(model, {"tc.1": sae})
    with pytest.raises(SAEMismatchError, match=r"stored under site mlp\.1; it belongs at tc\.1"):
        save_saes({"mlp.1": tc}, tmp_path / "x")
    # an SAE (no d_out) that says it reads the MLP's input
    plain = StandardSAE(StandardSAEConfig(d_in=D, d_sae=12))
    plain.cfg.metadata.hook_name = "blocks.1.hook_mlp_in"
    plain.save_model(tmp_path / "plain")
    with pytest.raises(InputError, match=r"hook_name 'blocks\.1\.hook_mlp_in' is not a site featcirc can splice with "
                                          r"an SAE: it is the MLP's input, where featcirc splices only a transcoder"):
        check_sae_spec(str(tmp_path / "plain"))
    with pytest.raises(SAEMismatchError, match=r"blocks\.1\.hook_mlp_in is the MLP's input, where featcirc splices "
                                                r"only a transcoder \(site tc\.1\)"):
        load_saes(model, tmp_path / "plain")
    # a transcoder writing somewhere other than its own MLP's output (e.g. a cross-layer one)
    out = make_transcoders(model, layers=[0])["tc.0"]
    out.cfg.metadata.hook_name_out = "blocks.1.hook_mlp_out"
    with pytest.raises(SAEMismatchError, match=r"writes blocks\.1\.hook_mlp_out, but featcirc splices a transcoder "
                                                r"in place of its block's MLP, writing blocks\.0\.hook_mlp_out"):
        load_saes(model, {"tc.0": out})


def test_the_input_checks_read_transcoder_weights_against_the_config(tmp_path, model):
    tc = _jumprelu_skip(model, 1)
    save_saes({"tc.1": tc}, tmp_path)
    assert check_sae_config(tmp_path / "tc.1", dict(d_model=D, n_layers=2)) == Site("tc", 1)
    with pytest.raises(InputError, match=r"but the model has 1 layers"):
        check_sae_config(tmp_path / "tc.1", dict(d_model=D, n_layers=1))
    _edit_cfg(tmp_path / "tc.1" / "cfg.json", d_out=16)
    with pytest.raises(InputError, match=r"says d_in=32, d_sae=20, d_out=16 but sae_weights.safetensors holds W_dec "
                                          r"of shape \[20, 32\] \(expected \[20, 16\]\)"):
        check_sae_config(tmp_path / "tc.1")
    _edit_cfg(tmp_path / "tc.1" / "cfg.json", d_out="wide")
    with pytest.raises(InputError, match=r"'d_out' must be a positive integer"):
        check_sae_config(tmp_path / "tc.1")


def test_the_command_line_names_a_misfiled_transcoder_before_loading(tmp_path, capsys, monkeypatch):
    from conftest import set_tripwires
    from sae_lens.saes.transcoder import TranscoderConfig

    from featcirc.cli import main

    width = 128  # the tiny model's d_model (its config.json, read before loading)
    for d_out, where in ((width, "saes/tc.1"), (64, "wide/tc.3")):  # filed under tc.1; of another width
        tc = Transcoder(TranscoderConfig(d_in=width, d_sae=8, d_out=d_out, apply_b_dec_to_input=False))
        tc.cfg.metadata.hook_name = "blocks.3.hook_mlp_in"
        tc.save_model(tmp_path / where)
    set_tripwires(monkeypatch, "the command started loading although its --saes was bad")
    args = ["-q", "discover", "--model", "tiny", "--saes", str(tmp_path / "saes"), "--task", "sva-nounpp",
            "--pairs", "4", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "named for site tc.1, but its cfg.json is for site tc.3; rename the directory to tc.3" in one_line_error(capsys)
    args[args.index("--saes") + 1] = str(tmp_path / "wide")
    assert main(args) == 2
    assert "(site tc.3) has d_in=128 and d_out=64, but the model's MLP input and output are d_model=128 wide" \
        in one_line_error(capsys)
