"""A disk cache of feature cards, one file per (model, SAE set, corpus, settings).

``cache_root()/cards/{model}--{saes}/{corpus sha256[:16]}-{settings hash[:12]}.json`` holds every
card computed so far for that key (settings: window length and layout, tokens scanned, what a card
shows), so a second circuit of the same model and SAEs reuses them and
only its new features are computed. The file records its full key, with content fingerprints of
the model and SAE weights (:func:`model_fingerprint`, :func:`sae_set_fingerprint`): SAEs retrained
under the same name do not match and their cards are recomputed. Writes are atomic and merge
with what another process may have added in the meantime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from featcirc.features.cards import CardSettings
from featcirc.io import write_json

logger = logging.getLogger("featcirc")

CACHE_FORMAT = "featcirc-card-cache/2"
"""Bumped whenever what a card holds changes, so older cached cards are recomputed."""
_SAMPLE = 4096


def _tensor_sample(t: torch.Tensor) -> bytes:
    """A cheap content sample of a weight: up to 4096 evenly strided values, as float32 bytes."""
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    return flat[::step][:_SAMPLE].float().cpu().numpy().tobytes()


def model_fingerprint(model) -> str:
    """sha256 of a model's shape (layers, widths, vocabulary, norm) and samples of its
    embedding, unembedding and last block weights."""
    cfg = model.cfg
    h = hashlib.sha256(json.dumps([cfg.model_name, cfg.n_layers, cfg.d_model, cfg.d_vocab, cfg.n_ctx,
                                   str(cfg.normalization_type)]).encode())
    for t in (model.W_E, model.W_U, *list(model.blocks[-1].parameters())[:4]):
        h.update(_tensor_sample(t))
    return h.hexdigest()


def sae_set_fingerprint(saes: Mapping[str, Any]) -> str:
    """sha256 over the sites of an SAE set: each SAE's site, width, architecture and samples of
    its encoder and decoder weights; for a transcoder (a config with an output width ``d_out``)
    also ``d_out``, its class (``Transcoder``, ``SkipTranscoder``, ...) and its skip weights, so a
    transcoder never shares cards with an SAE of the same shape."""
    h = hashlib.sha256()
    for site in sorted(saes):
        sae = saes[site]
        arch = getattr(sae.cfg, "architecture", None)
        arch = arch() if callable(arch) else arch
        h.update(json.dumps([site, int(sae.cfg.d_in), int(sae.cfg.d_sae), str(arch)]).encode())
        d_out = getattr(sae.cfg, "d_out", None)
        if d_out is not None:
            h.update(json.dumps(["transcoder", int(d_out), type(sae).__name__]).encode())
        for name in ("W_enc", "W_dec", "b_enc") + (("W_skip",) if d_out is not None else ()):
            if getattr(sae, name, None) is not None:
                h.update(_tensor_sample(getattr(sae, name)))
    return h.hexdigest()


def _safe(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(str(name).rstrip("/")).name or str(name))
    return out.strip("-.") or "x"


class CardCache:
    """The cached cards of one key (see the module doc)."""

    def __init__(self, root: "str | os.PathLike[str]", *, model_name: str, saes_name: str, model_fp: str,
                 saes_fp: str, corpus_sha256: str, context_size: int, max_tokens: Optional[int],
                 settings: CardSettings, pack: bool = True):
        self.key = dict(format=CACHE_FORMAT, model=model_fp, saes=saes_fp, corpus=corpus_sha256,
                        context_size=int(context_size), max_tokens=max_tokens, pack=bool(pack),
                        settings=settings.as_dict())
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()
        self.path = (Path(root) / f"{_safe(model_name)}--{_safe(saes_name)}" /
                     f"{corpus_sha256[:16]}-{digest[:12]}.json")

    def load(self) -> tuple[dict[str, dict], Optional[int]]:
        """``(cards, n_tokens)`` cached for this key (empty, None when nothing matches)."""
        if not self.path.exists():
            return {}, None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            logger.warning("ignoring unreadable card cache %s (%s)", self.path, e)
            return {}, None
        if not isinstance(data, dict) or data.get("key") != self.key or not isinstance(data.get("cards"), dict):
            return {}, None
        return data["cards"], data.get("n_tokens")

    def save(self, cards: Mapping[str, dict], n_tokens: int) -> Path:
        """Add ``cards`` to the cache file (atomically, keeping cards another process wrote)."""
        merged, cached_n = self.load()
        if cached_n is not None and cached_n != n_tokens:
            merged = {}  # cannot happen for one key; never mix two token counts
        merged.update(cards)
        return write_json(self.path, {"key": self.key, "n_tokens": int(n_tokens), "cards": merged}, indent=None)


__all__ = ["CardCache", "model_fingerprint", "sae_set_fingerprint", "CACHE_FORMAT"]
