"""featcirc: sparse feature circuits with RelP, IG, attribution patching and activation patching.

Public entry points are imported lazily so that ``import featcirc`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "featcirc.models",
    "load_saes": "featcirc.saes",
    "read_pairs": "featcirc.data",
    "write_pairs": "featcirc.data",
    "PromptPair": "featcirc.data",
    "Site": "featcirc.sites",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featcirc' has no attribute {name!r}")
