"""What a run ran on: featcirc's version and commit, the versions of the libraries whose numerics
the scores depend on, the device and the dtype (recorded in ``run.json`` and ``summary.json``).

Scores drift with these: torch kernels, TransformerLens's model code and weight processing,
SAELens's SAE classes, and transformers' tokenizers and model conversions (Gemma's embedding
scaling changed in transformers 5). Two runs agree to float noise only when this record does.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

LIBRARIES = ("torch", "transformer-lens", "sae-lens", "transformers", "numpy", "networkx")
"""Distributions whose versions a run records, by their PyPI names."""


def package_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: "str | Path | None" = None) -> Optional[str]:
    """The commit of the git checkout featcirc runs from (``+dirty`` when its tracked files differ
    from it), or None for an installed wheel or a machine without git."""
    root = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: Any = None, dtype: Any = None) -> dict:
    """``{"featcirc": version, "commit": sha or None, "python": ..., "libraries": {name: version},
    "device": ..., "dtype": ...}`` for ``run.json`` / ``summary.json``."""
    return dict(
        featcirc=package_version("featcirc"),
        commit=git_commit(),
        python=platform.python_version(),
        platform=platform.platform(terse=True),
        libraries={name: package_version(name) for name in LIBRARIES},
        device=None if device is None else str(device),
        dtype=None if dtype is None else str(dtype).replace("torch.", ""),
    )


__all__ = ["LIBRARIES", "package_version", "git_commit", "environment"]
