"""The metric (docs/design.md §2): logit difference at the last position,

    m = logit(clean_answer) - logit(patch_answer),

computed from the final residual stream and the two unembedding columns only. The full
``[d_model, d_vocab]`` unembedding is never applied (Gemma-3-270M has 262,144 tokens).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer


def logit_diff_from_resid(
    model: HookedTransformer,
    resid_final: torch.Tensor,
    clean_answer: torch.Tensor,
    patch_answer: torch.Tensor,
) -> torch.Tensor:
    """``[B, T, d_model]`` residual after the last block (before ``ln_final``) -> ``[B]`` metric.

    Goes through ``model.ln_final`` as a module so its hooks (the LN-rule) apply, then takes the two
    unembedding columns; the output soft-cap of Gemma-2-style models is applied to each logit.
    """
    x = resid_final[:, -1:, :]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    x = x[:, 0, :]  # [B, d]
    w_u = model.W_U  # [d, V]
    cols = torch.stack([w_u[:, clean_answer], w_u[:, patch_answer]], dim=-1)  # [d, B, 2]
    logits = torch.einsum("bd,dbk->bk", x, cols)
    b_u = getattr(model, "b_U", None)
    if b_u is not None:
        logits = logits + torch.stack([b_u[clean_answer], b_u[patch_answer]], dim=-1)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits[:, 0] - logits[:, 1]


def logit_diff(
    model: HookedTransformer,
    tokens: torch.Tensor,
    clean_answer: torch.Tensor,
    patch_answer: torch.Tensor,
) -> torch.Tensor:
    """Run ``tokens`` ``[B, T]`` (no padding) and return the ``[B]`` logit difference."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    return logit_diff_from_resid(model, resid, clean_answer, patch_answer)


def logit_diff_full(
    model: HookedTransformer,
    tokens: torch.Tensor,
    clean_answer: torch.Tensor,
    patch_answer: torch.Tensor,
) -> torch.Tensor:
    """Reference: the same metric from the full vocabulary logits (slow; for tests and benchmarks)."""
    logits = model(tokens, return_type="logits")[:, -1, :]
    idx = torch.arange(tokens.shape[0], device=logits.device)
    return logits[idx, clean_answer] - logits[idx, patch_answer]
