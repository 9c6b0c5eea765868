"""Shared fixtures: small random models of the three architecture families, random SAEs, pairs."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from featcirc.data import PairBatch, PairDataset, PromptPair
from featcirc.sites import all_sites

# One thread: on a small shared CPU torch's default thread pool is many times slower for these
# tiny tensors.
torch.set_num_threads(1)

D_VOCAB = 61


def make_model(arch: str = "gpt2", *, seed: int = 0, bias_free: bool = False) -> HookedTransformer:
    """A random 2-layer model: ``gpt2`` (LN, GELU, learned positions), ``pythia`` (parallel attn/MLP,
    rotary) or ``gemma3`` (RMSNorm before and after, GeGLU, GQA, qk-norm, local/global attention)."""
    common = dict(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=D_VOCAB, seed=seed,
                  init_weights=True)
    if arch == "gpt2":
        cfg = HookedTransformerConfig(d_mlp=64, act_fn="gelu", normalization_type="LN", **common)
    elif arch == "pythia":
        cfg = HookedTransformerConfig(d_mlp=64, act_fn="gelu", normalization_type="LN",
                                      parallel_attn_mlp=True, positional_embedding_type="rotary",
                                      rotary_dim=8, **common)
    elif arch == "gemma3":
        cfg = HookedTransformerConfig(
            d_mlp=64, act_fn="gelu_pytorch_tanh", normalization_type="RMS", gated_mlp=True,
            use_normalization_before_and_after=True, use_qk_norm=True, n_key_value_heads=1,
            positional_embedding_type="rotary", rotary_base=10000, final_rms=True,
            use_local_attn=True, window_size=4, attn_types=["local", "global"], **common)
    else:
        raise ValueError(arch)
    model = HookedTransformer(cfg)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if bias_free and (name.endswith(".b_in") or name.endswith("b_Q") or name.endswith("b_K")
                              or name.endswith("b_V") or name.endswith("b_O") or name.endswith("b_out")
                              or name.endswith(".b") or name.endswith("b_U")):
                p.zero_()
            elif not bias_free and (name.endswith(".b") or name.split(".")[-1].startswith("b_")):
                p.normal_(0, 0.1)  # exercise nonzero biases (TL initialises them to zero)
            elif name.endswith(".w"):
                p.normal_(1.0, 0.2)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_saes(model: HookedTransformer, *, d_sae: int = 48, seed: int = 0, kinds=("embed", "resid", "attn", "mlp")):
    """Random ReLU SAEs (SAELens ``StandardSAE``) at every site, with nonzero biases."""
    saes = {}
    for i, site in enumerate(all_sites(model.cfg.n_layers, kinds=kinds)):
        torch.manual_seed(seed * 1000 + i)
        sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae))
        with torch.no_grad():
            sae.W_enc.normal_(0, 0.3)
            sae.W_dec.normal_(0, 0.3)
            sae.b_enc.normal_(0, 0.3)
            sae.b_dec.normal_(0, 0.1)
        sae.cfg.metadata.hook_name = site.hook_name
        for p in sae.parameters():
            p.requires_grad_(False)
        saes[site.name] = sae.eval()
    return saes


def make_transcoders(model: HookedTransformer, *, layers=None, d_sae: int = 48, seed: int = 0, skip: bool = False,
                     jumprelu: bool = False) -> dict:
    """Random transcoders (SAELens ``Transcoder``; ``skip``: ``SkipTranscoder`` with a nonzero ``W_skip``;
    ``jumprelu``: ``JumpReLUTranscoder`` with positive thresholds) at ``tc.L`` for each layer, nonzero biases.
    Keyed by site name (``tc.0``); their input hook is ``blocks.L.hook_mlp_in`` as in Gemma Scope 2's configs."""
    from sae_lens.saes.transcoder import (JumpReLUTranscoder, JumpReLUTranscoderConfig, SkipTranscoder,
                                          SkipTranscoderConfig, Transcoder, TranscoderConfig)

    cls, cfg_cls = ((JumpReLUTranscoder, JumpReLUTranscoderConfig) if jumprelu else
                    (SkipTranscoder, SkipTranscoderConfig) if skip else (Transcoder, TranscoderConfig))
    out = {}
    for layer in (range(model.cfg.n_layers) if layers is None else layers):
        torch.manual_seed(seed * 1000 + 500 + layer)
        tc = cls(cfg_cls(d_in=model.cfg.d_model, d_sae=d_sae, d_out=model.cfg.d_model, apply_b_dec_to_input=False))
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.3)
            tc.W_dec.normal_(0, 0.3)
            tc.b_enc.normal_(0, 0.3)
            tc.b_dec.normal_(0, 0.1)
            if skip:
                tc.W_skip.normal_(0, 0.1)
            if jumprelu:
                tc.threshold.uniform_(0.05, 0.3)
        tc.cfg.metadata.hook_name = f"blocks.{layer}.hook_mlp_in"
        for p in tc.parameters():
            p.requires_grad_(False)
        out[f"tc.{layer}"] = tc.eval()
    return out


def make_dataset(n_batches: int = 2, batch: int = 3, length: int = 7, seed: int = 0,
                 diff_from: int = 3) -> PairDataset:
    """Random token pairs that agree before position ``diff_from`` and may differ after it."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        t = length + b  # batches of different lengths
        clean = torch.randint(1, D_VOCAB, (batch, t), generator=g)
        patch = clean.clone()
        patch[:, diff_from:] = torch.randint(1, D_VOCAB, (batch, t - diff_from), generator=g)
        ca = torch.randint(1, D_VOCAB, (batch,), generator=g)
        pa = (ca + 1 + torch.randint(0, D_VOCAB - 2, (batch,), generator=g)) % D_VOCAB
        pairs = [PromptPair("c", "p", " a", " b") for _ in range(batch)]
        batches.append(PairBatch(clean=clean, patch=patch, clean_answer=ca, patch_answer=pa, pairs=pairs))
    return PairDataset(batches=batches, n_pairs=n_batches * batch, dropped={}, source="random")


@pytest.fixture(params=["gpt2", "pythia", "gemma3"])
def arch(request) -> str:
    return request.param


def set_tripwires(monkeypatch, why: str, *extra: tuple) -> None:
    """Make a command fail the test if it starts its work: importing torch for it, loading a model, or
    any ``(module, name)`` of ``extra``; ``why`` says what should have stopped it first."""
    import featcirc.commands.common as common

    def tripwire(*args, **kwargs):
        raise AssertionError(why)

    for module, name in ((common, "start_torch"), (common, "load_model_and_saes"), *extra):
        monkeypatch.setattr(module, name, tripwire)


def one_line_error(capsys) -> str:
    """The captured stderr, asserted to be exactly one line and no traceback (a CLI error)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
