"""``--saes`` values, parsed once: what an SAE spec names, without loading anything.

An SAE spec (the ``--saes`` option, the ``spec`` of :func:`featcirc.saes.loading.load_saes`) is, in
this order of precedence:

1. ``"tiny"``: the SAEs bundled with the tiny model (kind ``bundled``);
2. a named set, ``<name>[:<variant>]`` with ``<name>`` in :func:`named_sae_sets` (the bundled
   ``saes/sets/<name>.json``), or the path of an existing set description ``.json`` file (kind ``named``);
3. ``<model>-local``: a set trained here by ``featcirc train-saes``, unless a directory of that name
   exists (kind ``local``);
4. anything else: a directory of SAELens SAEs (kind ``directory``; whether it exists is the caller's
   to say: the input checks and the loader name the fix, the run identity records it as missing).

So the names ``tiny`` and those of the bundled sets win over directories of the same name in the
working directory (write ``./name`` for those). Nothing here imports torch: the input checks
(:mod:`featcirc.commands.checks`) run it before torch loads, and the loader and the run identity
(:mod:`featcirc.saes.identity`) read the same result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from featcirc.saes.trained import LOCAL_SUFFIX

__all__ = ["BUNDLED_SETS", "LOCAL_SUFFIX", "SAESpec", "SPEC_KINDS", "TINY", "TINY_TRANSCODERS", "named_sae_sets", "parse_sae_spec", "set_reference",
           "sets_dir"]

TINY = "tiny"
"""The spec of the SAEs bundled with the tiny model."""
TINY_TRANSCODERS = "tiny-transcoders"
"""The spec of the transcoders bundled with the tiny model (``tc.0 .. tc.3``)."""
BUNDLED_SETS: tuple[str, ...] = (TINY, TINY_TRANSCODERS)
"""The sets bundled with the tiny model, each a directory ``saes/<name>`` (installed as ``featcirc.saes.bundled``)."""

SpecKind = Literal["bundled", "named", "local", "directory"]
SPEC_KINDS: tuple[str, ...] = ("bundled", "named", "local", "directory")


@dataclass(frozen=True)
class SAESpec:
    """A parsed SAE spec (see the module doc).

    - ``text``: the spec as given;
    - ``kind``: ``bundled``, ``named``, ``local`` or ``directory``;
    - ``name``: ``"tiny"`` or ``"tiny-transcoders"`` (:data:`BUNDLED_SETS`); a named set's name (without the variant); ``<model>-local``; None for a
      set description file or a directory;
    - ``variant``: the part after ``:`` of a templated named set (None: its default);
    - ``path``: the set description ``.json`` of a named set (bundled or given), the directory of a
      ``directory`` spec (which may not exist); None for ``bundled`` and ``local``, which their
      owners resolve (``featcirc.models.tiny.TINY_SAE_DIR``, :func:`featcirc.saes.trained.trained_set_dir`).
    """

    text: str
    kind: SpecKind
    name: Optional[str] = None
    variant: Optional[str] = None
    path: Optional[Path] = None


def sets_dir() -> Optional[Path]:
    """The bundled set descriptions, ``saes/sets`` (installed as ``featcirc.saes.bundled``), or None where
    the bundled data is missing."""
    from featcirc.saes.bundled_path import bundled_sae_dir

    try:
        return bundled_sae_dir() / "sets"
    except ModuleNotFoundError:
        return None


def named_sae_sets() -> tuple[str, ...]:
    """Names of the bundled SAE set descriptions (``saes/sets/<name>.json``), sorted."""
    root = sets_dir()
    if root is None or not root.is_dir():
        return ()
    return tuple(sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json")))


def set_reference(spec: "str | os.PathLike[str]") -> SAESpec:
    """The set description ``spec`` names, as a ``named`` :class:`SAESpec`, whatever else it could be: a
    path ending in ``.json`` is that file; ``name[:variant]`` is ``saes/sets/<name>.json`` (which may not
    exist: reading it says so)."""
    text = os.fspath(spec)
    if text.endswith(".json"):
        return SAESpec(text, "named", path=Path(text))
    name, _, variant = text.partition(":")
    root = sets_dir()
    return SAESpec(text, "named", name=name, variant=variant or None,
                   path=(root if root is not None else Path("saes") / "sets") / f"{name}.json")


def parse_sae_spec(spec: "str | os.PathLike[str]") -> SAESpec:
    """What the SAE spec ``spec`` (a string or path) names, by the precedence of the module doc.
    ``TypeError`` for anything else (a dict of SAEs is no spec: the loader takes it directly)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"an SAE spec is a name or a path, got {type(spec).__name__}")
    text = os.fspath(spec)
    path = Path(text)
    if text in BUNDLED_SETS:
        return SAESpec(text, "bundled", name=text)
    if text.partition(":")[0] in named_sae_sets() or (text.endswith(".json") and path.is_file()):
        return set_reference(text)
    if text.endswith(LOCAL_SUFFIX) and not path.is_dir():
        return SAESpec(text, "local", name=text)
    return SAESpec(text, "directory", path=path)
