"""Models by name: the bundled tiny model, the offline Gemma-3-270M, TransformerLens hub names."""

from __future__ import annotations

_LAZY = {"load_model": "loading", "model_info": "loading", "ModelLoadError": "loading",
         "KNOWN_MODELS": "loading", "cache_root": "loading"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):  # lazy: importing transformer_lens takes seconds
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"featcirc.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'featcirc.models' has no attribute {name!r}")
