"""The settings of one ``train-saes`` run (:class:`TrainSettings`) and their defaults per model
(:data:`MODEL_DEFAULTS`, :func:`default_settings`): plain data, checked without torch. Here, below both
:mod:`featcirc.saes.training` (which trains with them) and :mod:`featcirc.saes.trained` (whose recipes
name them), so that neither imports the other."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["DEFAULT_CONTEXT", "MODEL_DEFAULTS", "SAE_DTYPES", "TrainSettings", "default_settings"]


DEFAULT_CONTEXT = 128
"""Tokens per window when neither the flag, the recipe nor :data:`MODEL_DEFAULTS` sets it (cut to the
model's ``n_ctx`` when that is shorter)."""

MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # The bundled tiny model (n_ctx 48) speaks single sentences of at most 21 tokens with BOS: one
    # sentence per window of 32. The SAE shape and learning rate of its bundled SAEs
    # (experiments/train_tiny.py: width 768, k 16, lr 2e-3); batches of 256 tokens, because at the
    # same tokens 600 steps of 256 gave circuits about as faithful as the bundled SAEs' where 150
    # steps of 1024 did not (docs/design.md §10a); 153,600 tokens (600 steps, under one pass over
    # the tiny corpus) train --sites all-resid in about a minute on one CPU thread.
    "tiny": {"width": 768, "k": 16, "tokens": 153_600, "batch_tokens": 256, "lr": 2e-3, "context_size": 32,
             "pack": False, "store_batch_prompts": 64},
}
"""Per-model defaults (lower-case model name -> :class:`TrainSettings` fields), below the flags and the
recipe and above the :class:`TrainSettings` defaults."""

_FLAGS = {"width": "--width", "k": "--k", "tokens": "--tokens", "context_size": "--context-size",
          "batch_tokens": "--batch-tokens", "lr": "--lr", "eval_tokens": "--eval-tokens",
          "ce_eval_tokens": "--ce-eval-tokens", "seed": "--seed", "dtype": "--sae-dtype",
          "l1_coefficient": "--l1-coefficient"}
"""The command-line flag of each setting that has one (for error messages)."""

SAE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def _flag(name: str) -> str:
    return _FLAGS.get(name, name)


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one ``train-saes`` run (every field goes into the card). These are the
    generic defaults; :func:`default_settings` gives a model's (:data:`MODEL_DEFAULTS`)."""

    width: int = 4096               # d_sae, features per SAE
    k: int = 32                     # TopK: active features per token
    tokens: int = 1_000_000         # training tokens seen by every SAE
    context_size: int = DEFAULT_CONTEXT  # tokens per window (BOS first); at most the model's n_ctx
    batch_tokens: int = 1024        # SAE batch size, in tokens
    lr: float = 1e-3
    warmup_fraction: float = 0.02   # linear warm-up, fraction of the steps
    decay_fraction: float = 0.2     # linear decay to lr/10 over the last fraction of the steps
    store_batch_prompts: int = 8    # windows per model forward
    buffer_windows: int = 64        # mixing buffer, in windows (SAELens n_batches_in_buffer)
    norm_estimate_batches: int = 20  # batches used to estimate the activation norm scaling
    aux_loss_coefficient: float = 1.0 / 32  # AuxK weight (Gao et al. 2024)
    l1_coefficient: float = 5.0     # transcoders only: L1 weight on f_i |W_dec,i| (activations at mean norm sqrt(d))
    heldout_fraction: float = 0.02  # documents held out of training, for the metrics
    eval_tokens: int = 8192         # held-out tokens for L0 and variance explained
    ce_eval_tokens: int = 2048      # held-out tokens for the CE-loss metrics (one forward per site each)
    eval_batch_windows: int = 4     # windows per evaluation forward
    seed: int = 0
    dtype: str = "float32"
    pack: bool = True               # False: one document per window, right-padded (token_windows)

    def check(self, n_ctx: Optional[int] = None) -> None:
        """``ValueError`` naming the flag for a setting that cannot work; with ``n_ctx`` (the
        model's context), also a context longer than the model's. Needs no torch."""
        for name in ("width", "k", "tokens", "context_size", "batch_tokens", "store_batch_prompts",
                     "buffer_windows", "norm_estimate_batches", "eval_tokens", "ce_eval_tokens",
                     "eval_batch_windows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{_flag(name)} must be a whole number >= 1, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be a whole number >= 0, got {self.seed!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr)
                                                                                     and self.lr > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr!r}")
        if isinstance(self.l1_coefficient, bool) or not isinstance(self.l1_coefficient, (int, float)) or not (
                math.isfinite(self.l1_coefficient) and self.l1_coefficient >= 0):
            raise ValueError(f"--l1-coefficient must be a finite number >= 0, got {self.l1_coefficient!r}")
        for name in ("warmup_fraction", "decay_fraction", "heldout_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
        if self.dtype not in SAE_DTYPES:
            raise ValueError(f"--sae-dtype must be one of {', '.join(SAE_DTYPES)}, got {self.dtype!r}")
        if self.context_size < 2:
            raise ValueError(f"--context-size must be at least 2 (BOS + one token), got {self.context_size}")
        if n_ctx is not None and self.context_size > n_ctx:
            raise ValueError(f"--context-size {self.context_size} exceeds the model's context of {n_ctx} tokens "
                             f"(n_ctx); use --context-size {n_ctx} or less")
        if self.k > self.width:
            raise ValueError(f"--k {self.k} must not exceed the width (--width {self.width})")
        if self.tokens < self.batch_tokens:
            raise ValueError(f"--tokens {self.tokens} is less than one batch (--batch-tokens {self.batch_tokens})")
        if self.buffer_windows * (self.context_size - 1) < self.batch_tokens:
            raise ValueError(f"--batch-tokens {self.batch_tokens} exceeds the mixing buffer ({self.buffer_windows} "
                             f"windows of {self.context_size - 1} training tokens): lower --batch-tokens or "
                             "raise --context-size")
        if self.eval_tokens < self.context_size:
            raise ValueError(f"--eval-tokens {self.eval_tokens} is less than one window (--context-size "
                             f"{self.context_size})")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_tokens


def default_settings(model_name: str, n_ctx: Optional[int] = None) -> dict[str, Any]:
    """The defaults for ``model_name`` (:data:`MODEL_DEFAULTS` over the :class:`TrainSettings`
    defaults) as a dict of fields; the context is cut to ``n_ctx`` when given and shorter."""
    from dataclasses import fields

    out = {f.name: f.default for f in fields(TrainSettings)}
    out.update(MODEL_DEFAULTS.get(str(model_name).strip().lower(), {}))
    if n_ctx is not None:
        out["context_size"] = min(out["context_size"], int(n_ctx))
    return out
