"""Model loading by name (docs/design.md §10): ``tiny`` (bundled), ``gemma-3-270m`` (offline, from the
``gemma`` extra) and any TransformerLens model name (needs the Hugging Face hub).

Every model is returned in eval mode without weight processing (no LN folding, no centring of
writing weights or of the unembedding): the activations are the ones SAEs are trained on, and the
logits are the model's own.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Mapping, Optional

import torch
from transformer_lens import HookedTransformer

__all__ = ["KNOWN_MODELS", "GEMMA_NAMES", "ModelLoadError", "load_model", "model_info", "cache_root"]

KNOWN_MODELS: tuple[str, ...] = ("tiny", "gemma-3-270m")
"""Names that load offline on any machine where featcirc (and, for Gemma, its extra) is installed."""

GEMMA_NAMES: tuple[str, ...] = ("gemma-3-270m", "google/gemma-3-270m")
"""Accepted spellings of the offline Gemma-3-270M (case-insensitive)."""

TINY_HINT = "the tiny model bundle is not built yet: run `PYTHONPATH=. python experiments/train_tiny.py`"


class ModelLoadError(RuntimeError):
    """A model name could not be resolved or loaded."""


def cache_root():
    """featcirc's user cache directory (``$FEATCIRC_CACHE``, else ``$XDG_CACHE_HOME/featcirc``,
    else ``~/.cache/featcirc``); see :func:`featcirc.gemma.cache_root`."""
    from featcirc.models.gemma import cache_root as _root

    return _root()


def _load_tiny(device: str, dtype: torch.dtype) -> HookedTransformer:
    try:
        tiny = importlib.import_module("featcirc.models.tiny")
    except ModuleNotFoundError as e:
        if e.name not in ("featcirc.models.tiny", "featcirc"):
            raise  # a dependency of featcirc.models.tiny is missing: report that, not the bundle
        raise ModelLoadError(f"cannot load 'tiny': featcirc.models.tiny is missing; {TINY_HINT}") from e
    try:
        model = tiny.load_tiny_model(device=device)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"cannot load 'tiny': {TINY_HINT} ({e})") from e
    if dtype != model.cfg.dtype:
        model = model.to(dtype, print_details=False)
        model.cfg.dtype = dtype
    return model


def _is_hub_error(e: BaseException) -> bool:
    """True for errors of reaching or reading the Hugging Face hub (OSError covers transformers'
    'could not connect' and huggingface_hub's HTTP errors; httpx errors are not OSErrors)."""
    module = type(e).__module__ or ""
    return isinstance(e, OSError) or module.startswith(("httpx", "huggingface_hub", "requests"))


def _load_hub(name: str, device: str, dtype: torch.dtype,
              from_pretrained_kwargs: Optional[Mapping[str, Any]]) -> HookedTransformer:
    kwargs = dict(from_pretrained_kwargs or {})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype, **kwargs)
    except ValueError as e:
        if "not found" in str(e):
            raise ModelLoadError(
                f"unknown model {name!r}: offline models are {', '.join(KNOWN_MODELS)}; other names must be "
                "TransformerLens model names (e.g. 'gpt2-small', 'pythia-70m-deduped') and need the "
                "Hugging Face hub"
            ) from e
        raise
    except Exception as e:
        if not _is_hub_error(e):
            raise
        raise ModelLoadError(
            f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}: {e}). Offline models "
            f"are {', '.join(KNOWN_MODELS)}; other names need the hub (network access, or a filled Hugging "
            "Face cache with HF_HUB_OFFLINE=1)"
        ) from e
    model.eval()
    return model


def load_model(
    name: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    from_pretrained_kwargs: Optional[Mapping[str, Any]] = None,
) -> HookedTransformer:
    """Load a model as a frozen ``HookedTransformer`` (eval mode, ``requires_grad=False``): attribution
    takes gradients with respect to activations only.

    - ``"tiny"``: the bundled model (:func:`featcirc.tiny.load_tiny_model`);
    - ``"gemma-3-270m"`` / ``"google/gemma-3-270m"``: offline from the ``gemma`` extra
      (:func:`featcirc.gemma.load_gemma_3_270m`; the first load converts and caches, ~1 min);
    - anything else: ``HookedTransformer.from_pretrained_no_processing(name, **from_pretrained_kwargs)``
      (downloads from the Hugging Face hub). Pass e.g. an SAE release's
      ``model_from_pretrained_kwargs`` to reproduce the processing its SAEs were trained with.

    Raises :class:`ModelLoadError` for an unknown or unreachable name (the message lists
    :data:`KNOWN_MODELS`), ``FileNotFoundError`` when the tiny bundle is not built and
    :class:`featcirc.gemma.GemmaUnavailableError` (an ``ImportError``) when the gemma extra is missing.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}; known: {', '.join(KNOWN_MODELS)}")
    key = name.strip()
    if key.lower() == "tiny":
        return _frozen(_load_tiny(device, dtype))
    if key.lower() in GEMMA_NAMES:
        from featcirc.models.gemma import load_gemma_3_270m

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _frozen(load_gemma_3_270m(device=device, dtype=dtype))
    return _frozen(_load_hub(key, device, dtype, from_pretrained_kwargs))


def _frozen(model: HookedTransformer) -> HookedTransformer:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def model_info(model: HookedTransformer) -> dict[str, Any]:
    """A JSON-serialisable summary of a model's architecture, for run summaries."""
    cfg = model.cfg
    return {
        "name": cfg.model_name,
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
        "n_heads": int(cfg.n_heads),
        "d_mlp": None if cfg.d_mlp is None else int(cfg.d_mlp),
        "parallel_attn_mlp": bool(cfg.parallel_attn_mlp),
        "gated_mlp": bool(cfg.gated_mlp),
        "normalization_type": cfg.normalization_type,
        "positional_embedding_type": cfg.positional_embedding_type,
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(cfg.dtype).replace("torch.", ""),
    }
