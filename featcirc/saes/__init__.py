"""SAEs: sets keyed by site (``loading``), ``--saes`` values (``spec``), training (``training``), sets trained
here (``trained``).

Names are imported lazily, so ``import featcirc.saes`` does not import torch or SAELens.
"""

from __future__ import annotations

import importlib

_LAZY = {name: "loading" for name in (
    "NAMED_SETS", "SAE_HUB_ENV", "SAEMismatchError", "SAEUnavailableError", "load_saes",
    "load_sae_set_description", "local_sae_hub", "sae_site", "save_saes", "site_from_hook_name", "validate_sae")}
_LAZY.update({name: "spec" for name in ("SAESpec", "parse_sae_spec")})
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"featcirc.saes.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'featcirc.saes' has no attribute {name!r}")
