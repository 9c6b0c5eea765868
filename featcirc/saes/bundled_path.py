"""Where the bundled SAE data lives: the repository's top-level ``saes/`` directory (set
descriptions, training recipes and cards, the tiny model's SAEs), installed as the package
``featcirc.saes.bundled`` (setuptools ``package-dir``), so ``pip install .`` carries it too."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_sae_dir() -> Path:
    """The directory of ``featcirc.saes.bundled`` (the top-level ``saes/`` in a checkout)."""
    return Path(str(resources.files("featcirc.saes.bundled")))
