"""SAE sets keyed by site (docs/design.md §3): load, validate, save.

``load_saes(model, spec)`` returns ``{site name: SAE}`` in forward order (``embed``, ``attn.0``,
``mlp.0``, ``resid.0``, ``attn.1``, ...), every SAE validated against the model, moved to the
model's device and dtype, in eval mode, with ``requires_grad=False`` on its parameters.

``spec`` is one of (parsed by :func:`featcirc.saes.spec.parse_sae_spec`, the one parser of ``--saes``)

1. a directory: one SAELens SAE directory (``cfg.json`` + ``sae_weights.safetensors``) or a
   directory of such directories (any names); each is loaded with ``SAE.load_from_disk`` and keyed
   by the site of its hook name;
2. the name of a set description ``saes/sets/<name>.json`` (see
   :data:`NAMED_SETS`), or the path of such a ``.json`` file: per site a SAELens release and SAE id,
   loaded with ``SAE.from_pretrained(release, sae_id)``;
   ``name:variant`` for templated sets (``gemma-3-270m:16k-small``: Gemma Scope 2, residual, MLP and
   attention (``hook_z``) SAEs at layers 5, 9, 12, 15; ``gemma-3-270m-all:262k-big``: every layer;
   ``gemma-3-270m-transcoders:16k-small-affine``: Gemma Scope 2 transcoders at every layer, ``-affine``
   for those with a linear skip connection);
3. ``"tiny"``: the SAEs bundled with the project's tiny model (``featcirc.models.tiny.TINY_SAE_DIR``);
4. ``"<model>-local"``: a set trained on this machine by ``featcirc train-saes`` (in the user cache;
   the error names the command that trains it when it is missing);
5. a dict ``{site: SAE}`` (keys may be site names or hook names), validated like the others.

Transcoders (docs/design.md §4b). A SAELens transcoder (``Transcoder``, ``SkipTranscoder``,
``JumpReLUTranscoder``, ``JumpReLUSkipTranscoder``: its config has ``d_out``) reads the MLP's input and
writes its output; it is keyed by ``tc.L`` from its input hook (``blocks.L.hook_mlp_in``, as Gemma Scope 2's
configs say, or ``blocks.L.ln2.hook_normalized``; :func:`featcirc.sites.transcoder_site_from_hook_name`),
and both its ``d_in`` and ``d_out`` must be the model's ``d_model``. A set may mix SAEs and transcoders
(``resid.*`` SAEs and ``tc.*`` transcoders); a layer has an ``mlp.L`` SAE or a ``tc.L`` transcoder.
In a directory of SAE directories, a subdirectory named like a site (``tc.1``, ``resid.3``: as
:func:`save_saes` writes them) must hold that site's SAE.

Hook aliasing. TransformerLens feeds block L's output, ``blocks.L.hook_resid_post``, unchanged into
block L+1, where it passes ``blocks.(L+1).hook_resid_pre``: the two hooks see the same tensor.
So an SAE trained on ``blocks.(L+1).hook_resid_pre`` (e.g. SAELens's ``gpt2-small-res-jb``) is the
SAE of site ``resid.L`` and is spliced at ``blocks.L.hook_resid_post``; ``blocks.0.hook_resid_pre``
is the site ``embed``. :func:`site_from_hook_name` applies this rule; an SAE keeps its own
``cfg.metadata.hook_name`` unchanged (so :func:`save_saes` round-trips it).

Offline use of named sets. ``SAE.from_pretrained`` downloads through
``huggingface_hub.hf_hub_download`` (called inside ``sae_lens.loading.pretrained_sae_loaders``).
Without network access, either fill the Hugging Face cache elsewhere and set
``HF_HUB_OFFLINE=1``, or keep a plain mirror of the repositories, laid out as
``<root>/<repo_id>/<path in repo>`` (e.g. ``<root>/jbloom/GPT2-Small-SAEs-Reformatted/
blocks.0.hook_resid_pre/cfg.json``), and set ``FEATCIRC_SAE_HUB=<root>`` (or use
:func:`local_sae_hub`): downloads are then answered from the mirror, and everything else
(registry look-up, config conversion, weight loading) is SAELens's own code.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from featcirc.attribution.splice import is_transcoder
from featcirc.commands.checks import TRANSCODER_ARCHITECTURES, InputError, check_sae_dir_name
from featcirc.io import staged_dir
from featcirc.saes.identity import load_sae_set_description, loaded_files, record_sae_files  # noqa: F401 - re-exported
from featcirc.saes.spec import SAESpec, named_sae_sets, parse_sae_spec
from featcirc.saes.trained import trained_set_dir
from featcirc.sites import Site, site_width, sort_sites, transcoder_site_from_hook_name
from featcirc.sites import site_from_hook_name as _aliased_site

__all__ = [
    "NAMED_SETS",
    "SAE_HUB_ENV",
    "SAEMismatchError",
    "SAEWeightsError",
    "check_finite_weights",
    "load_saes",
    "load_sae_set_description",
    "local_sae_hub",
    "sae_site",
    "save_saes",
    "site_from_hook_name",
    "validate_sae",
]


SAE_CFG_FILENAME = "cfg.json"
SAE_HUB_ENV = "FEATCIRC_SAE_HUB"
"""Environment variable naming a local mirror of Hugging Face SAE repositories (see module doc)."""

NAMED_SETS: tuple[str, ...] = named_sae_sets()
"""Names of the bundled SAE set descriptions (``saes/sets/<name>.json``)."""

class SAEMismatchError(ValueError):
    """An SAE (or SAE set) does not fit the model: wrong width, hook or model."""


class SAEWeightsError(ValueError):
    """An SAE's weights hold NaN or infinite values."""


class SAEUnavailableError(FileNotFoundError):
    """The weights of a named SAE set cannot be had here (offline, or not in the mirror)."""


# --------------------------------------------------------------------------- sites of SAEs


def site_from_hook_name(hook_name: str, *, transcoder: bool = False) -> Site:
    """The featcirc site of a TransformerLens hook name, with resid_pre aliasing
    (:func:`featcirc.sites.site_from_hook_name`).

    ``blocks.0.hook_resid_pre -> embed``; ``blocks.(L+1).hook_resid_pre -> resid.L`` (same tensor as
    ``blocks.L.hook_resid_post``); ``blocks.L.hook_{resid_post,attn_out,mlp_out} -> {resid,attn,mlp}.L``.
    ``transcoder``: the hook of a transcoder, which reads the MLP's input: ``blocks.L.hook_mlp_in`` (or
    ``blocks.L.ln2.hook_normalized``, or its output hook ``blocks.L.hook_mlp_out``) ``-> tc.L``
    (:func:`featcirc.sites.transcoder_site_from_hook_name`). Raises ``SAEMismatchError`` for any other hook
    (an SAE, not a transcoder, at the MLP's input included).
    """
    if transcoder:
        try:
            return transcoder_site_from_hook_name(hook_name)
        except ValueError as e:
            raise SAEMismatchError(f"{e}; this transcoder cannot be spliced by featcirc") from None
    try:
        return _aliased_site(hook_name)
    except ValueError as e:
        try:
            tc = transcoder_site_from_hook_name(hook_name)
        except ValueError:
            tc = None
        only = (f"; {hook_name} is the MLP's input, where featcirc splices only a transcoder (site {tc.name})"
                if tc is not None else "")
        raise SAEMismatchError(
            f"{e} (blocks.L.hook_resid_pre for L >= 1 is also accepted, as resid.(L-1)){only}; "
            "SAEs on other hooks (hook_embed, hook_mlp_in, ...) cannot be spliced by featcirc"
        ) from None


def _hook_name(sae: Any) -> Optional[str]:
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    hook = getattr(meta, "hook_name", None) if meta is not None else None
    return hook or None


def _hook_name_out(sae: Any) -> Optional[str]:
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    hook = getattr(meta, "hook_name_out", None) if meta is not None else None
    return hook or None


def sae_site(sae: Any) -> Site:
    """The site of an SAE, from ``sae.cfg.metadata.hook_name`` (see :func:`site_from_hook_name`); a
    transcoder's (:func:`featcirc.attribution.splice.is_transcoder`) is ``tc.L`` from its input hook, and
    its output hook, where its config names one (``hook_name_out``), must be ``blocks.L.hook_mlp_out``."""
    hook = _hook_name(sae)
    if hook is None:
        raise SAEMismatchError(
            "this SAE has no cfg.metadata.hook_name, so its site is unknown; pass it in a dict keyed "
            "by site ({'resid.3': sae}) or set sae.cfg.metadata.hook_name"
        )
    head = getattr(sae.cfg.metadata, "hook_head_index", None)
    if head is not None:
        raise SAEMismatchError(
            f"SAE for {hook} reads attention head {head} only (hook_head_index={head}); featcirc sites "
            "are whole hook tensors, so per-head SAEs cannot be spliced"
        )
    if is_transcoder(sae):
        site = site_from_hook_name(hook, transcoder=True)
        out = _hook_name_out(sae)
        if out is not None and out != site.hook_name:
            raise SAEMismatchError(
                f"transcoder for {hook} writes {out}, but featcirc splices a transcoder in place of its block's "
                f"MLP, writing {site.hook_name}; use a transcoder of the MLP (input {hook}, output {site.hook_name})")
        return site
    return site_from_hook_name(hook)


def _site_of_key(key: "str | Site", sae: Any = None) -> Site:
    """A dict key as a site: a site name, a ``Site`` or a hook name (of a transcoder when ``sae`` is one:
    ``blocks.L.hook_mlp_in`` or ``blocks.L.hook_mlp_out`` is then ``tc.L``)."""
    if isinstance(key, str) and key.startswith("blocks."):
        return site_from_hook_name(key, transcoder=sae is not None and is_transcoder(sae))
    return Site.parse(key)


def _model_name(model: HookedTransformer) -> str:
    return str(getattr(model.cfg, "model_name", None) or "custom")


def _model_sites_text(model: HookedTransformer) -> str:
    n = model.cfg.n_layers
    last = n - 1
    probes = (Site("attn", 0), Site("mlp", 0), Site("resid", 0))
    kinds = [s.kind for s in probes if s.hook_name in model.hook_dict]
    per_layer = ", ".join(f"{k}.0..{last}" for k in kinds)
    tc = f", tc.0..{last} (transcoders)" if "mlp" in kinds else ""
    return (
        f"model {_model_name(model)!r} has d_model={model.cfg.d_model} and {n} layers; its sites are "
        f"embed, {per_layer}{tc} (hooks blocks.0.hook_resid_pre and blocks.L.hook_resid_post/hook_attn_out/"
        f"hook_mlp_out for L in 0..{last})"
    )


def validate_sae(model: HookedTransformer, site: "str | Site", sae: Any) -> None:
    """Check that ``sae`` can be spliced into ``model`` at ``site``; raise ``SAEMismatchError`` if not.

    Checks: the site exists in the model (kind and layer range; the hook is in ``model.hook_dict``);
    the SAE's hook name, if it has one, denotes that site (with resid_pre aliasing); and
    ``sae.cfg.d_in == model.cfg.d_model``. A transcoder goes at a ``tc.L`` site (and only a transcoder
    does), with ``d_in`` and ``d_out`` both ``d_model``.
    """
    site = Site.parse(site)
    hook = _hook_name(sae)
    label = hook or f"site {site.name}"
    tc = is_transcoder(sae)
    if tc and not site.is_transcoder:
        raise SAEMismatchError(
            f"a transcoder ({type(sae).__name__}{', for ' + hook if hook else ''}) cannot be spliced at site "
            f"{site.name}: transcoders replace an MLP and go at tc.{site.block} (MLP input -> MLP output)")
    if site.is_transcoder and not tc:
        raise SAEMismatchError(
            f"site {site.name} takes a transcoder (a SAELens Transcoder, whose config has d_out), but the SAE "
            f"given for it is a {type(sae).__name__}; put an SAE of the MLP's output at mlp.{site.layer} instead")
    if hook is not None:
        try:
            own = sae_site(sae)
        except SAEMismatchError as e:
            raise SAEMismatchError(f"{e}; {_model_sites_text(model)}") from None
        if own != site:
            raise SAEMismatchError(
                f"SAE for {hook} belongs at site {own.name} ({own.hook_name}), not at site {site.name} "
                f"({site.hook_name})"
            )
    if site.layer >= model.cfg.n_layers or site.hook_name not in model.hook_dict:
        raise SAEMismatchError(
            f"SAE for {label} needs hook {site.hook_name}, which {_model_name(model)!r} lacks: "
            f"{_model_sites_text(model)} — this SAE set was made for another model"
        )
    d_in = int(sae.cfg.d_in)
    width, what = site_width(site, model.cfg)
    if tc:
        d_out = int(sae.cfg.d_out)
        if (d_in, d_out) != (width, width):
            raise SAEMismatchError(
                f"transcoder for {label} at site {site.name} has d_in={d_in} and d_out={d_out}, but model "
                f"{_model_name(model)!r} has {what}={width} at the MLP's input and output: both must be {width} — "
                "this transcoder was made for another model")
        return
    if d_in != width:
        raise SAEMismatchError(
            f"SAE for {label} has d_in={d_in} but model {_model_name(model)!r} has {what}={width} at "
            f"{site.hook_name} — this SAE set was made for another model"
        )


def _model_device(model: HookedTransformer) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device(model.cfg.device or "cpu")


def _prepare(sae: Any, device: "str | torch.device", dtype: torch.dtype) -> Any:
    sae = sae.to(device=device, dtype=dtype)
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae


def check_finite_weights(site: "str | Site", sae: Any, *, after: Optional[str] = None) -> None:
    """Raise :class:`SAEWeightsError` naming the site (and the directory it came from) when a floating
    tensor of ``sae``'s state dict holds NaN or infinite values; ``after``: the dtype it was just
    converted to, for the message."""
    site = Site.parse(site)
    for name, t in sae.state_dict().items():
        if not torch.is_tensor(t) or not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        files = loaded_files(sae)
        where = f" ({files[-1].parent})" if files else ""
        cause = (f"after conversion to {after} (its values overflow that dtype: use --dtype float32)" if after
                 else "re-save or retrain this SAE, or leave it out of the set")
        raise SAEWeightsError(
            f"SAE at site {site.name}{where} has non-finite weights: {name} holds {n_nan} NaN and {n_inf} "
            f"infinite values of {t.numel()}; {cause}")


def _finish(
    model: HookedTransformer,
    saes: Mapping[Site, Any],
    device: Optional[str],
) -> dict[str, Any]:
    dev = torch.device(device) if device is not None else _model_device(model)
    out: dict[str, Any] = {}
    for site in sort_sites(saes):
        sae = saes[site]
        validate_sae(model, site, sae)
        check_finite_weights(site, sae)  # cheap: one isfinite per tensor
        out[site.name] = _prepare(sae, dev, model.cfg.dtype)
        check_finite_weights(site, out[site.name], after=str(model.cfg.dtype).replace("torch.", ""))
    return out


def _wanted(sites: Optional[Iterable[str]]) -> Optional[set[Site]]:
    if sites is None:
        return None
    if isinstance(sites, str):
        sites = [sites]
    return {Site.parse(s) for s in sites}


def _check_requested(wanted: Optional[set[Site]], available: Iterable[Site], source: str) -> None:
    if wanted is None:
        return
    available = set(available)
    missing = wanted - available
    if missing:
        raise KeyError(
            f"sites {[s.name for s in sort_sites(missing)]} are not in {source}; it has "
            f"{[s.name for s in sort_sites(available)]}"
        )


# --------------------------------------------------------------------------- directories


def _cfg_hook(cfg_path: Path) -> tuple[Optional[str], bool]:
    """``(hook name, transcoder)`` of a SAELens ``cfg.json`` (``metadata.hook_name``; before 6.0
    ``hook_point``); ``transcoder``: its architecture is one of :data:`TRANSCODER_ARCHITECTURES` (or it
    has an output width ``d_out``)."""
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    cfg = handle_config_defaulting(json.loads(cfg_path.read_text(encoding="utf-8")))
    meta = cfg.get("metadata") or {}
    tc = cfg.get("architecture") in TRANSCODER_ARCHITECTURES or cfg.get("d_out") is not None
    return meta.get("hook_name") or cfg.get("hook_name"), tc


def _check_dir_name(d: Path, root: Path, site: Site) -> None:
    """A subdirectory named like a site (as :func:`save_saes` names them) must hold that site's SAE
    (:func:`featcirc.commands.checks.check_sae_dir_name`, the input checks' rule)."""
    try:
        check_sae_dir_name(d, root, site)
    except InputError as e:
        raise SAEMismatchError(str(e)) from None


def _sae_dirs(root: Path) -> list[Path]:
    if (root / SAE_CFG_FILENAME).is_file():
        return [root]
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / SAE_CFG_FILENAME).is_file())
    if not dirs:
        raise FileNotFoundError(
            f"{root} is neither a SAELens SAE directory (cfg.json + sae_weights.safetensors) nor a "
            "directory of such directories"
        )
    return dirs


def _load_dir(root: Path, wanted: Optional[set[Site]]) -> dict[Site, Any]:
    found: dict[Site, Path] = {}
    for d in _sae_dirs(root):
        hook, tc = _cfg_hook(d / SAE_CFG_FILENAME)
        if hook is None:
            raise SAEMismatchError(f"{d / SAE_CFG_FILENAME} names no hook_name, so its site is unknown")
        try:
            site = site_from_hook_name(hook, transcoder=tc)
        except SAEMismatchError as e:
            raise SAEMismatchError(f"{d / SAE_CFG_FILENAME}: {e}") from None
        if site in found:
            raise SAEMismatchError(
                f"two SAEs for site {site.name} in {root}: {found[site].name} and {d.name}; keep one"
            )
        found[site] = d
    for site, d in found.items():
        _check_dir_name(d, root, site)
    _check_requested(wanted, found, str(root))
    out = {s: _load_sae_dir(d) for s, d in found.items() if wanted is None or s in wanted}
    for s, sae in out.items():  # the files of its identity (featcirc.saes.identity)
        record_sae_files(sae, [found[s] / SAE_CFG_FILENAME, found[s] / "sae_weights.safetensors"])
    return out


def _load_sae_dir(d: Path) -> Any:
    """``SAE.load_from_disk(d)``; a damaged weights file (safetensors' ``SafetensorError``: truncated,
    bad header) is a ``ValueError`` naming the file."""
    try:
        return SAE.load_from_disk(d)
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{d / 'sae_weights.safetensors'} cannot be read ({e}): the file is damaged or "
                         f"truncated; copy, download or save the SAE again") from None


def save_saes(saes: Mapping[str, Any], directory: "str | os.PathLike[str]") -> Path:
    """Save each SAE in SAELens format to ``directory/<site name>/`` and return ``directory``.

    Each subdirectory is built in a temporary sibling and moved into place (:func:`featcirc.io.staged_dir`),
    replacing an existing one of the same site; other entries of ``directory`` are left alone. An SAE
    without a hook name gets its site's hook in the saved config (a transcoder its input hook,
    ``blocks.L.hook_mlp_in``), so that ``load_saes`` keys it the same way.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for key, sae in saes.items():
        site = _site_of_key(key, sae)
        hook = _hook_name(sae)
        tc = is_transcoder(sae)
        if hook is not None and sae_site(sae) != site:
            raise SAEMismatchError(
                f"SAE for {hook} is stored under site {site.name}; it belongs at {sae_site(sae).name}"
            )
        if tc != site.is_transcoder:
            raise SAEMismatchError(
                f"a {type(sae).__name__} cannot be stored under site {site.name}: transcoders go at tc.L sites, "
                "and only transcoders do")
        with staged_dir(directory / site.name, replace=True) as tmp:
            sae.save_model(tmp)
            if hook is None:
                cfg_path = tmp / SAE_CFG_FILENAME
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
                cfg.setdefault("metadata", {})["hook_name"] = (f"blocks.{site.layer}.hook_mlp_in" if tc
                                                               else site.hook_name)
                cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    return directory


# --------------------------------------------------------------------------- named sets


def _check_set_model(model: HookedTransformer, desc: Mapping[str, Any]) -> None:
    names = {desc["model"], *desc.get("model_aliases", [])}
    got = (_model_name(model), model.cfg.n_layers, model.cfg.d_model)
    want = (desc["model"], int(desc["n_layers"]), int(desc["d_model"]))
    if got[0] not in names or got[1:] != want[1:]:
        raise SAEMismatchError(
            f"SAE set {desc['name']!r} was made for model {want[0]!r} (d_model={want[2]}, {want[1]} layers; "
            f"names {sorted(names)}) but the model is {got[0]!r} (d_model={got[2]}, {got[1]} layers) — "
            f"load {want[0]!r} or choose another set ({', '.join(NAMED_SETS)}, tiny, or a directory)"
        )


@contextmanager
def local_sae_hub(root: "str | os.PathLike[str]") -> Iterator[Path]:
    """Answer SAELens's Hugging Face downloads from a local mirror ``<root>/<repo_id>/<path>``.

    Patches ``hf_hub_download`` in ``sae_lens.loading.pretrained_sae_loaders`` (the function every
    SAELens pretrained loader downloads with), and ``get_safetensors_tensor_shapes`` (Gemma Scope 2's
    loader reads shapes from the file header over HTTP), for the duration of the block. A file absent from the
    mirror raises ``huggingface_hub`` ``EntryNotFoundError``, which SAELens treats as "optional file
    missing" for sparsity files and reports otherwise.
    """
    from huggingface_hub.errors import EntryNotFoundError
    from sae_lens.loading import pretrained_sae_loaders as loaders

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"local SAE hub mirror {root} ({SAE_HUB_ENV}) is not a directory")

    def mirror_download(repo_id: str, filename: str, *, subfolder: Optional[str] = None, **_: Any) -> str:
        path = root / repo_id / (subfolder or "") / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{path} is not in the local SAE hub mirror {root}")
        return str(path)

    def mirror_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        from safetensors import safe_open

        path = Path(mirror_download(repo_id, filename))
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    originals = (loaders.hf_hub_download, loaders.get_safetensors_tensor_shapes)
    loaders.hf_hub_download, loaders.get_safetensors_tensor_shapes = mirror_download, mirror_shapes
    try:
        yield root
    finally:
        loaders.hf_hub_download, loaders.get_safetensors_tensor_shapes = originals


@contextmanager
def _recording_downloads() -> Iterator[list[Path]]:
    """Collect the paths SAELens's loaders get from ``hf_hub_download`` (Hugging Face cache or the
    local mirror): the files a named SAE was read from, for its identity (featcirc.saes.identity)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    files: list[Path] = []
    inner = loaders.hf_hub_download

    def recording(*args: Any, **kwargs: Any) -> str:
        path = inner(*args, **kwargs)
        if isinstance(path, (str, os.PathLike)) and Path(path).is_file():
            files.append(Path(path))
        return path

    loaders.hf_hub_download = recording
    try:
        yield files
    finally:
        loaders.hf_hub_download = inner


def _load_named(
    model: HookedTransformer, spec: SAESpec, wanted: Optional[set[Site]], device: str
) -> dict[Site, Any]:
    desc = load_sae_set_description(spec)
    _check_set_model(model, desc)
    entries = {Site.parse(s): e for s, e in desc["saes"].items()}
    _check_requested(wanted, entries, f"SAE set {desc['name']!r}")
    hub = os.environ.get(SAE_HUB_ENV)
    out: dict[Site, Any] = {}
    with local_sae_hub(hub) if hub else nullcontext():
        for site in sort_sites(entries):
            if wanted is not None and site not in wanted:
                continue
            e = entries[site]
            try:
                with _recording_downloads() as files:
                    sae = SAE.from_pretrained(e["release"], e["sae_id"], device=device)
                record_sae_files(sae, sorted(set(files), key=lambda p: p.name))
            except Exception as err:  # network, missing files, registry drift: say what to do
                raise SAEUnavailableError(
                    f"could not load SAE {e['release']}/{e['sae_id']} for site {site.name} of set "
                    f"{desc['name']!r}: {type(err).__name__}: {err}. Without network access, fill the "
                    f"Hugging Face cache and set HF_HUB_OFFLINE=1, or set {SAE_HUB_ENV}=<dir> to a mirror "
                    "laid out as <dir>/<repo_id>/<path in repo>"
                ) from err
            own = sae_site(sae)
            if own != site:
                raise SAEMismatchError(
                    f"SAE {e['release']}/{e['sae_id']} reads {_hook_name(sae)} (site {own.name}) but set "
                    f"{desc['name']!r} lists it for site {site.name}"
                )
            out[site] = sae
    return out


# --------------------------------------------------------------------------- entry point


def _tiny_dir(name: str = "tiny") -> Path:
    """The directory of a set bundled with the tiny model (``tiny``: ``featcirc.models.tiny.TINY_SAE_DIR``;
    ``tiny-transcoders`` beside it)."""
    try:
        import importlib

        tiny = importlib.import_module("featcirc.models.tiny")  # the tiny model's module, owner of its SAEs
    except ImportError as e:
        raise FileNotFoundError(
            f"SAE set {name!r} needs featcirc.models.tiny (the project's tiny model), which cannot be imported: {e}"
        ) from e
    path = getattr(tiny, "TINY_SAE_DIR", None)
    if path is not None and name != "tiny":
        path = Path(path).parent / name
    if path is None or not Path(path).is_dir():
        script = "experiments/train_tiny.py" if name == "tiny" else "experiments/train_tiny_transcoders.py"
        raise FileNotFoundError(
            f"the tiny model's bundled set {name!r} is missing: featcirc.models.tiny.TINY_SAE_DIR"
            f"{'' if name == 'tiny' else '/../' + name} = {path} is not a directory; "
            f"reinstall featcirc or rebuild the bundle with {script}"
        )
    return Path(path)


def _unknown(spec: Any) -> ValueError:
    return ValueError(
        f"unknown SAE spec {spec!r}: give a directory of SAELens SAEs, a named set "
        f"({', '.join(NAMED_SETS)}; templated ones take ':<width>-<l0>'), 'tiny', '<model>-local' (trained "
        "here by `featcirc train-saes`), a set description .json file, or a dict {site: SAE}"
    )


def load_saes(
    model: HookedTransformer,
    spec: "str | os.PathLike[str] | Mapping[str, Any]",
    *,
    device: Optional[str] = None,
    sites: Optional[Iterable[str]] = None,
) -> dict[str, SAE]:
    """Load SAEs for ``model`` from ``spec`` (see the module doc), keyed by site name in forward order.

    The names ``"tiny"`` and those in :data:`NAMED_SETS` take precedence over directories of the same
    name in the working directory (write ``./name`` for those).

    Every SAE is checked with :func:`validate_sae` (``SAEMismatchError`` on a wrong ``d_in``, hook or
    model), moved to ``device`` (default: the model's) and the model's dtype, set to eval mode with
    ``requires_grad=False``. ``sites`` keeps only those sites (all must be available); named sets then
    download only those. Dict SAEs are modified in place (device, dtype, eval, grad flags).
    """
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"load_saes(): model must be a TransformerLens HookedTransformer (e.g. "
                        f"featcirc.load_model('tiny')), got {type(model).__name__}")
    wanted = _wanted(sites)
    dev = str(torch.device(device) if device is not None else _model_device(model))
    if isinstance(spec, Mapping):
        raw: dict[Site, Any] = {}
        for key, sae in spec.items():
            site = _site_of_key(key, sae)
            if site in raw:
                raise SAEMismatchError(f"two SAEs given for site {site.name}")
            raw[site] = sae
        _check_requested(wanted, raw, "the SAEs given")
        raw = {s: v for s, v in raw.items() if wanted is None or s in wanted}
        return _finish(model, raw, device)
    if not isinstance(spec, (str, os.PathLike)):
        raise _unknown(spec)
    parsed = parse_sae_spec(spec)
    if parsed.kind == "bundled":
        return _finish(model, _load_dir(_tiny_dir(parsed.name), wanted), device)
    if parsed.kind == "named":
        return _finish(model, _load_named(model, parsed, wanted, dev), device)
    if parsed.kind == "local":
        return _finish(model, _load_dir(trained_set_dir(parsed.name), wanted), device)
    if parsed.path.is_dir():
        return _finish(model, _load_dir(parsed.path, wanted), device)
    raise _unknown(spec)
