"""SAE sets trained on this machine (``featcirc train-saes``) and the recipes that make them.

A trained set lives in ``cache_root() / "saes" / "<model>-local"`` (``$FEATCIRC_CACHE`` honoured),
e.g. ``~/.cache/featcirc/saes/gemma-3-270m-local``. A recipe, ``saes/recipes/<model>.json`` (installed
as ``featcirc.saes.bundled``), fixes everything such a set is trained with: model, sites, corpus and
the :class:`featcirc.saes.train_settings.TrainSettings` fields; ``featcirc train-saes --recipe <model>``
trains it into that directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from featcirc.saes.bundled_path import bundled_sae_dir

__all__ = ["LOCAL_SUFFIX", "RECIPES_DIR", "TrainedSetMissing", "cache_root", "load_recipe", "recipe_command",
           "recipe_names", "trained_set_dir", "trained_set_path"]

LOCAL_SUFFIX = "-local"
RECIPES_DIR: Path = bundled_sae_dir() / "recipes"
"""The bundled recipes, ``<model>.json``."""

_RECIPE_KEYS = {"model", "sites", "corpus", "settings", "description"}


class TrainedSetMissing(FileNotFoundError):
    """A locally trained SAE set is not on this machine; the message names the command that makes it."""


def recipe_names() -> tuple[str, ...]:
    """Names of the bundled recipes."""
    if not RECIPES_DIR.is_dir():
        return ()
    return tuple(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))


def load_recipe(spec: "str | os.PathLike[str]") -> dict[str, Any]:
    """A recipe by bundled name (``gemma-3-270m``) or ``.json`` path: ``{"model", "sites", "corpus",
    "settings": {TrainSettings fields}}``. ``FileNotFoundError`` / ``ValueError`` say what is wrong."""
    text = os.fspath(spec)
    path = RECIPES_DIR / f"{text}.json" if text in recipe_names() else Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {text!r}: bundled recipes are {', '.join(recipe_names()) or 'none'}; "
                                "or give the path of a recipe .json file")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"recipe {path} is not valid JSON: {e}") from e
    if not isinstance(recipe, dict) or not {"model", "sites", "corpus"} <= set(recipe):
        raise ValueError(f"recipe {path} must be an object with 'model', 'sites', 'corpus' and 'settings'")
    unknown = set(recipe) - _RECIPE_KEYS
    if unknown:
        raise ValueError(f"recipe {path} has unknown keys {sorted(unknown)}; allowed: {sorted(_RECIPE_KEYS)}")
    from dataclasses import fields

    from featcirc.saes.train_settings import TrainSettings

    known = {f.name for f in fields(TrainSettings)}
    bad = set(recipe.get("settings", {})) - known
    if bad:
        raise ValueError(f"recipe {path} has unknown settings {sorted(bad)}; allowed: {sorted(known)}")
    return recipe


def recipe_command(model: str) -> str:
    """The one command that trains the local set of ``model``."""
    if model in recipe_names():
        return f"featcirc train-saes --recipe {model}"
    corpus = "tiny" if model.strip().lower() == "tiny" else "default"
    return (f"featcirc train-saes --model {model} --sites all-resid --corpus {corpus} "
            f"--out {trained_set_path(model + LOCAL_SUFFIX)}")


def cache_root() -> Path:
    """featcirc's user cache directory, as :func:`featcirc.models.loading.cache_root` (a test checks
    they agree) but without importing torch: ``$FEATCIRC_CACHE``, else ``$XDG_CACHE_HOME/featcirc``,
    else ``~/.cache/featcirc``."""
    env = os.environ.get("FEATCIRC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "featcirc"


def trained_set_path(name: str) -> Path:
    """Where the set ``<model>-local`` lives (whether or not it exists)."""
    if not name.endswith(LOCAL_SUFFIX) or name == LOCAL_SUFFIX:
        raise ValueError(f"{name!r} is not a locally trained SAE set name; those are '<model>{LOCAL_SUFFIX}', "
                         f"e.g. 'gemma-3-270m{LOCAL_SUFFIX}'")
    return cache_root() / "saes" / name


def trained_set_dir(name: str) -> Path:
    """The directory of the trained set ``name`` (``<model>-local``); :class:`TrainedSetMissing`
    naming the command that trains it when it is not on this machine."""
    path = trained_set_path(name)
    if not (path.is_dir() and any((p / "cfg.json").is_file() for p in path.iterdir() if p.is_dir())):
        model = name[: -len(LOCAL_SUFFIX)]
        raise TrainedSetMissing(f"the SAE set {name!r} is not trained on this machine (looked in {path}); "
                                f"train it once with: {recipe_command(model)}")
    return path
