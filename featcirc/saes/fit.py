"""Does each SAE fit the site it is spliced at? (docs/design.md §10b)

An SAE spliced at the wrong hook (``hook_resid_pre`` for ``hook_resid_post``, the normalised input of
a block instead of its output: pre- vs post-norm), or trained for another model, or for other weights
of this one (Gemma Scope 2 was trained on the bf16 Gemma-3-270M, featcirc's is a Q4_K_M
dequantisation), loads without complaint: only its reconstruction shows it. :func:`check_fit`
measures, on a few hundred tokens of a fixed text (:func:`fit_sample`), every SAE's reconstruction of
its own site:

- ``fve``: fraction of variance explained, ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over
  tokens (BOS and padding excluded; ``z`` sites flattened over heads); for a transcoder at ``tc.L``,
  ``x`` is the MLP's output ``blocks.L.hook_mlp_out`` and ``x_hat = dec(enc(x_in)) (+ W_skip x_in)``
  from the MLP's input ``x_in`` (ln2's output, :func:`featcirc.models.mlp_io.recording_mlp_io`);
- ``l0``: mean number of active features per token, beside ``expected_l0``, what the SAE's card or
  config says (``metrics.json`` of a set trained by ``featcirc train-saes``, SAELens's registry for
  named sets, ``cfg.metadata.l0``, TopK's ``k``; None when unknown), and ``expected_fve`` where the
  card or registry has one.

An SAE with FVE below :data:`MIN_FVE` (or not finite) is an :class:`SAEFitError` (a ``ValueError``:
the command line prints one line, exit 2) naming the site, the FVE and the likely cause, found by
trying the SAE on the model's other hooks of its width in nearby blocks (a wrong hook, a pre- vs
post-norm mix-up) and by its card's own FVE (an SAE that reconstructs poorly anyway), else an SAE
trained for another model or other weights. A failing transcoder is tried on the other input points of
nearby blocks (the pre-norm residual stream, ln2's input, instead of ln2's output) and on the MLPs of
nearby blocks (another layer's transcoder). An L0 far from the expected one is a warning.
``--skip-fit-check`` (:func:`skipping`) or ``FEATCIRC_SKIP_FIT_CHECK=1`` (:data:`SKIP_ENV`) skips the check.

The measurements are cached once per (model identity, SAE identity, dtype, sample) in
``cache_root()/sae-fit/`` (:mod:`featcirc.saes.identity`), written atomically; the threshold is
applied to cached numbers too. :func:`fit_record` returns what the last check of a set measured
(``discover`` writes it to ``run.json`` as ``sae_fit``).

Only the commands check (:func:`featcirc.commands.common.load_model_and_saes`); the library's
:func:`featcirc.saes.loading.load_saes` does not. Nothing here imports torch at module level.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import math
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from featcirc.sites import Site, hook_names_of, sort_sites

logger = logging.getLogger("featcirc")

__all__ = ["FIT_CACHE_FORMAT", "MIN_FVE", "SKIP_ENV", "SAEFitError", "SiteFit", "check_fit", "fit_record",
           "fit_sample", "measure_fit", "skip_requested", "skipping"]

MIN_FVE = 0.3
"""An SAE explaining less of its site's variance than this does not fit it. Working SAEs explain 0.6-0.99
(the bundled tiny SAEs 0.98-1.0); an SAE at the wrong hook or of another model is usually below 0 on
GPT-style models, where the residual stream's scale differs from hook to hook."""
L0_FACTOR = 3.0
"""A measured L0 more than this factor above or below the expected one is warned about."""
SKIP_ENV = "FEATCIRC_SKIP_FIT_CHECK"
"""Set to 1 to skip the check (library users; the command line has ``--skip-fit-check``)."""
SKIP_HINT = f"pass --skip-fit-check (or set {SKIP_ENV}=1) to run with it anyway"
FIT_CACHE_FORMAT = "featcirc-sae-fit/1"
"""Bumped whenever what is measured changes, so older cached measurements are redone."""
SAMPLE_TOKENS = 512
"""Tokens of the packed sample (BOS included) for models other than ``tiny``."""
TINY_SENTENCES = 64
"""Sentences of the tiny model's language in its sample (one per window, about 700 tokens)."""
TINY_SEED = 1001
"""Seed of the tiny sample's sentences: not the training corpus's seed (0), so mostly unseen sentences."""
MAX_DIAGNOSED = 2
"""Failing SAEs whose likely cause is looked for (each tries the hooks of nearby blocks)."""
NEARBY_BLOCKS = 2
"""The cause of a failure is looked for among the hooks of the SAE's block and this many on each side."""

PASSAGE = """\
The river rose slowly through the night, and by morning the lower road was under water. Farmers who had \
lived in the valley for decades said they had never seen it climb so fast. A few families left their \
houses before dawn, carrying what they could, while others stayed to move animals to higher ground. The \
school in the village opened its doors as a shelter, and volunteers brought blankets, bread and hot soup.

Scientists have long argued about how the first cells came to be. One idea holds that simple molecules \
gathered in warm pools near volcanic vents, where energy was plentiful and minerals could act as \
catalysts. Another suggests that the earliest chemistry took place inside droplets of oil, which kept \
useful compounds close together. Neither theory has been proven, but experiments in the laboratory have \
produced many of the building blocks that life requires.

When the committee met on Tuesday, the chairman asked each member to report on the budget. The treasurer \
explained that costs had risen by nearly a fifth over the past year, mostly because of repairs to the old \
library roof. Several members wanted to delay the new playground until the spring; others pointed out \
that the children had waited long enough. After an hour of discussion they agreed to raise a small fund \
from local businesses and to revisit the question in March.

She opened the letter at the kitchen table and read it twice before she understood what it meant. Her \
grandfather, whom she had met only once, had left her a house by the sea and a box of notebooks filled \
with drawings of birds. The lawyer wrote that the house needed work but that the garden was in good \
order. She folded the letter, looked out at the grey city street, and began to make a list of what she \
would need for the journey.

A good recipe for bread needs only flour, water, salt and yeast, yet bakers spend years learning to get \
it right. The dough must rest long enough for the yeast to work, and the oven must be hot enough to form \
a crust without burning it. Some bakers add a spoonful of honey or a handful of seeds, and many keep a \
starter alive for years, feeding it every day as if it were a pet.

In the final minutes of the match, the visiting team scored twice and the crowd fell silent. Their coach \
later said that the players had trained all season for exactly that kind of pressure. The home side will \
have another chance next week, when they travel north to face the league leaders in a game that could \
decide the title.
"""
"""The built-in English sample for models other than ``tiny`` (about 600 tokens), written for featcirc."""


class SAEFitError(ValueError):
    """An SAE does not reconstruct the activations of the site it is spliced at; the message names the
    site, the FVE, the likely cause and how to proceed anyway."""


@dataclass
class SiteFit:
    """What :func:`check_fit` measured of one SAE (``run.json``'s ``sae_fit[site]``)."""

    fve: Optional[float]
    l0: Optional[float]
    expected_l0: Optional[float]
    tokens: int
    expected_l0_from: Optional[str] = None
    expected_fve: Optional[float] = None
    sample: Optional[str] = None

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------- skipping
_SKIP: contextvars.ContextVar[bool] = contextvars.ContextVar("featcirc_skip_fit_check", default=False)


def skip_requested() -> bool:
    """Whether the check is to be skipped: inside :func:`skipping` (``--skip-fit-check``) or with
    :data:`SKIP_ENV` set to 1 (``true``, ``yes``)."""
    return _SKIP.get() or os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def skipping(skip: bool = True) -> Iterator[None]:
    """Skip the check (``skip``) for the duration of the block: how ``--skip-fit-check`` reaches every
    command that loads SAEs (:func:`featcirc.cli.main`)."""
    token = _SKIP.set(bool(skip) or _SKIP.get())
    try:
        yield
    finally:
        _SKIP.reset(token)


# ------------------------------------------------------------------------------------------ records
_RECORDS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def fit_record(saes: Optional[Mapping[str, Any]]) -> Optional[dict]:
    """``{site: {"fve", "l0", "expected_l0", "tokens", ...}}`` as :func:`check_fit` last measured these
    SAEs (the objects, wherever the dict came from), or None when they were not checked (skipped,
    component level, or SAEs loaded by the library)."""
    if not saes:
        return None
    out = {}
    for site, sae in saes.items():
        try:
            rec = _RECORDS.get(sae)
        except TypeError:
            rec = None
        if rec is None:
            return None
        out[str(site)] = dict(rec)
    return out


# ------------------------------------------------------------------------------------------ sample
def _is_tiny(model: Any, model_name: Optional[str]) -> bool:
    return str(model_name or "").strip().lower() == "tiny" or getattr(model.cfg, "model_name", None) == "featcirc-tiny"


def fit_sample(model: Any, model_name: Optional[str] = None):
    """``(name, windows [N, T], keep [N, T])``: the fixed text the fit is measured on, as token windows
    with BOS first, and the positions counted (not BOS, not padding). The tiny model gets
    :data:`TINY_SENTENCES` sentences of its own language (one per window, as its SAEs were trained);
    other models :data:`PASSAGE` (or the first documents of the offline default corpus when it is
    already assembled here), packed into windows of up to 128 tokens, :data:`SAMPLE_TOKENS` in all."""
    import torch

    from featcirc.data.corpus import Corpus, token_windows

    tok = model.tokenizer
    if _is_tiny(model, model_name):
        from featcirc.data.tiny_corpus import build_corpus, load_vocab_split

        texts = build_corpus(load_vocab_split(), TINY_SEED, n_ioi=16, n_sva=4, n_filler=64)[:TINY_SENTENCES]
        windows = token_windows(model, Corpus.from_texts("fit", texts), min(32, int(model.cfg.n_ctx)), pack=False)
        name = f"tiny sentences (seed {TINY_SEED})"
    else:
        name, texts = "built-in passage", [PASSAGE]
        default = _default_corpus_head()
        if default:
            name, texts = "default corpus (first documents)", default
        stream = sum(len(ids) + 1 for ids in tok([t.strip() for t in texts], add_special_tokens=False)["input_ids"])
        ctx = max(2, min(128, int(model.cfg.n_ctx), stream + 1))  # a short text: one window of all of it
        windows = token_windows(model, Corpus.from_texts("fit", texts), ctx, max_tokens=max(SAMPLE_TOKENS, ctx))
    keep = torch.ones_like(windows, dtype=torch.bool)
    keep[:, 0] = False
    for special in (getattr(tok, "bos_token_id", None), getattr(tok, "pad_token_id", None)):
        if special is not None:
            keep &= windows != special
    used = int(keep.any(0).nonzero().max()) + 1 if bool(keep.any()) else windows.shape[1]
    return name, windows[:, :used], keep[:, :used]


def _default_corpus_head(max_docs: int = 40) -> Optional[list[str]]:
    """The first documents of the default corpus when it is already assembled (never assembled here)."""
    try:
        from featcirc.data.corpus import default_corpus_path

        path = default_corpus_path()
        if not path.is_file():
            return None
        texts = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if len(texts) >= max_docs or sum(len(t.split()) for t in texts) > SAMPLE_TOKENS:
                    break
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
                    texts.append(row["text"])
        return texts or None
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------- measuring
def _flat(act: Any) -> Any:
    """``[B, T, d]`` of a cached activation (``[B, T, H, d_head]`` flattened over heads)."""
    return act.flatten(-2) if act.dim() == 4 else act


def _reconstruction(sae: Any, x: Any, target: Any = None, chunk: int = 256) -> tuple[float, float, float, float]:
    """``(squared error, total variance around the mean, active features, tokens)`` of ``sae`` on the
    rows of ``x`` ``[N, d]``, in float64 sums. ``target``: what ``sae`` is to predict from ``x`` (a
    transcoder: the MLP's output from its input; a skip transcoder's ``x @ W_skip.T`` is added, as
    SAELens's ``SkipTranscoder.forward`` does); None: ``x`` itself."""
    import torch

    target = x if target is None else target
    n = x.shape[0]
    sq = act = 0.0
    s = torch.zeros(target.shape[-1], dtype=torch.float64, device=x.device)
    ss = 0.0
    dtype = getattr(getattr(sae, "W_dec", None), "dtype", x.dtype)
    skip = getattr(sae, "W_skip", None)
    for i in range(0, n, chunk):
        xi = x[i:i + chunk].to(dtype)
        f = sae.encode(xi)
        xh = sae.decode(f)
        if skip is not None:
            xh = xh + xi @ skip.T.to(xi.device)
        xh = xh.to(torch.float64)
        x64 = target[i:i + chunk].to(torch.float64)
        sq += float(((x64 - xh) ** 2).sum())
        act += float((f != 0).sum())
        s += x64.sum(0)
        ss += float((x64 ** 2).sum())
    var = ss - float((s ** 2).sum()) / max(n, 1)
    return sq, var, act, float(n)


def _fve(sq: float, var: float) -> float:
    return 1.0 - sq / var if var > 0 and math.isfinite(sq) and math.isfinite(var) else float("nan")


def measure_fit(model: Any, saes: Mapping[str, Any], windows: Any, keep: Any) -> dict[str, dict]:
    """``{site: {"fve", "l0", "tokens"}}`` of each SAE on its own site's activations over ``windows``
    (positions where ``keep``): one forward up to the last site's block. A transcoder (``tc.L``) predicts
    the MLP's output from its input, both recorded in the same forward."""
    import torch

    from featcirc.models.mlp_io import recording_mlp_io

    sites = sort_sites(saes)
    hooks = {s.hook_name for s in sites if not s.is_transcoder}
    tc_layers = sorted({s.layer for s in sites if s.is_transcoder})
    device = next(model.parameters()).device
    out: dict[str, dict] = {}
    with torch.no_grad():
        with recording_mlp_io(model, tc_layers) as mlp_io:
            _, cache = model.run_with_cache(windows.to(device), names_filter=lambda h: h in hooks,
                                            prepend_bos=False, stop_at_layer=max(s.block for s in sites) + 1)
        k = keep.to(device)
        for s in sites:
            sae = saes[s.name]
            if s.is_transcoder:
                x_in, x_out = mlp_io[s.layer]
                sq, var, act, n = _reconstruction(sae, x_in[k], x_out[k])
            else:
                sq, var, act, n = _reconstruction(sae, _flat(cache[s.hook_name])[k])
            out[s.name] = dict(fve=_fve(sq, var), l0=act / n if n else float("nan"), tokens=int(n))
    return out


# ------------------------------------------------------------------------------------ expectations
def _set_root(saes_spec: Optional[str]) -> Optional[Path]:
    if not saes_spec:
        return None
    try:
        from featcirc.saes.identity import _set_dir

        root = _set_dir(saes_spec)
    except Exception:  # noqa: BLE001 - a named set, or a spec the loader reported already
        return None
    return root if root is not None and root.is_dir() else None


def _registry_entries(saes_spec: Optional[str]) -> dict[str, tuple[str, str]]:
    """``{site: (release, sae_id)}`` of a named set, else {}."""
    if not saes_spec:
        return {}
    try:
        from featcirc.saes.spec import parse_sae_spec

        parsed = parse_sae_spec(saes_spec)
        if parsed.kind != "named":
            return {}
        from featcirc.saes.loading import load_sae_set_description

        desc = load_sae_set_description(parsed)
        return {Site.parse(s).name: (e["release"], e["sae_id"]) for s, e in desc["saes"].items()}
    except Exception:  # noqa: BLE001 - the loader reported a bad description already
        return {}


def expectations(saes: Mapping[str, Any], saes_spec: Optional[str] = None) -> dict[str, dict]:
    """``{site: {"expected_l0", "expected_l0_from", "expected_fve"}}`` from what the SAEs' cards and
    configs say: ``metrics.json`` of a set trained here, SAELens's registry for named sets,
    ``cfg.metadata.l0``, TopK's ``k`` (in that order); None where nothing says."""
    card: dict = {}
    root = _set_root(saes_spec)
    if root is not None and (root / "metrics.json").is_file():
        try:
            card = json.loads((root / "metrics.json").read_text(encoding="utf-8")).get("saes") or {}
        except (OSError, ValueError, AttributeError):
            card = {}
    registry: dict[str, tuple[Optional[float], Optional[float]]] = {}
    entries = _registry_entries(saes_spec)
    if entries:
        try:
            from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

            directory = get_pretrained_saes_directory()
            for site, (release, sae_id) in entries.items():
                lookup = directory.get(release)
                if lookup is not None:
                    registry[site] = (lookup.expected_l0.get(sae_id), lookup.expected_var_explained.get(sae_id))
        except Exception:  # noqa: BLE001 - an older SAELens without the registry fields
            registry = {}
    out: dict[str, dict] = {}
    for site, sae in saes.items():
        site = str(site)
        l0 = fve = src = None
        m = card.get(site) if isinstance(card, dict) else None
        if isinstance(m, dict) and _number(m.get("l0")) is not None:
            l0, src, fve = _number(m["l0"]), "metrics.json", _number(m.get("fve"))
        elif site in registry and _number(registry[site][0]) is not None:
            l0, src, fve = _number(registry[site][0]), "SAELens registry", _number(registry[site][1])
        else:
            meta = getattr(getattr(sae, "cfg", None), "metadata", None)
            meta_l0 = _number(getattr(meta, "l0", None) if meta is not None else None)
            if meta_l0 is None and meta is not None and hasattr(meta, "get"):
                meta_l0 = _number(meta.get("l0"))
            k = _number(getattr(getattr(sae, "cfg", None), "k", None))
            if meta_l0 is not None:
                l0, src = meta_l0, "cfg.json metadata"
            elif k is not None:
                l0, src = k, "TopK k"
        out[site] = dict(expected_l0=None if l0 is None else round(l0, 3), expected_l0_from=src,
                         expected_fve=None if fve is None else round(fve, 4))
    return out


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------- cache
def _cache_key(model: Any, saes: Mapping[str, Any], model_name: Optional[str], saes_spec: Optional[str],
               windows: Any, keep: Any) -> Optional[dict]:
    """What identifies a measurement, or None when the SAEs' files are unknown (built in memory)."""
    if not model_name or not saes_spec:
        return None
    from featcirc.saes.identity import model_identity, sae_set_identity

    ident = sae_set_identity(saes_spec, saes)
    sites = (ident or {}).get("sites") or {}
    if not sites or any(str(s) not in sites for s in saes):
        return None
    h = hashlib.sha256(windows.cpu().numpy().tobytes())
    h.update(keep.cpu().numpy().tobytes())
    model_id = model_identity(model_name)
    return dict(format=FIT_CACHE_FORMAT, model=model_id.get("sha256") or model_id.get("name"),
                saes={str(s): sites[str(s)] for s in saes}, dtype=str(model.cfg.dtype).replace("torch.", ""),
                sample=h.hexdigest())


def _cache_path(key: Mapping[str, Any]) -> Path:
    from featcirc.saes.trained import cache_root

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_root() / "sae-fit" / f"{digest[:32]}.json"


def _cache_load(key: Mapping[str, Any]) -> Optional[dict]:
    path = _cache_path(key)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != json.loads(json.dumps(key)):
        return None
    sites = doc.get("sites")
    if not isinstance(sites, dict) or set(sites) != set(key["saes"]):
        return None
    for rec in sites.values():
        if not isinstance(rec, dict) or not {"fve", "l0", "tokens"} <= set(rec):
            return None
    return {s: dict(fve=_float(r["fve"]), l0=_float(r["l0"]), tokens=int(r["tokens"])) for s, r in sites.items()}


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _cache_save(key: Mapping[str, Any], measured: Mapping[str, dict]) -> None:
    from featcirc.io import jsonable, write_json

    path = _cache_path(key)
    try:
        write_json(path, jsonable(dict(key=key, sites=measured)))
    except OSError as e:  # a read-only cache costs a second measurement, nothing else
        logger.debug("SAE fit: cannot cache in %s: %s", path, e)


# --------------------------------------------------------------------------------------------- check
def check_fit(model: Any, saes: Mapping[str, Any], *, model_name: Optional[str] = None,
              saes_spec: Optional[str] = None, min_fve: float = MIN_FVE, use_cache: bool = True) -> dict:
    """Measure every SAE's reconstruction of its own site (see the module doc), remember it for
    :func:`fit_record` and return ``{site: {"fve", "l0", "expected_l0", "tokens", ...}}``; raise
    :class:`SAEFitError` when an SAE's FVE is below ``min_fve`` or not finite. ``model_name`` /
    ``saes_spec`` (as the command line names them) pick the sample and the expectations and key the
    cache (without them nothing is cached)."""
    import time

    t0 = time.perf_counter()
    sample, windows, keep = fit_sample(model, model_name)
    key = _cache_key(model, saes, model_name, saes_spec, windows, keep) if use_cache else None
    measured = _cache_load(key) if key is not None else None
    cached = measured is not None
    if measured is None:
        measured = measure_fit(model, saes, windows, keep)
        if key is not None:
            _cache_save(key, measured)
    expect = expectations(saes, saes_spec)
    fits = {s.name: SiteFit(fve=_finite(measured[s.name]["fve"]), l0=_finite(measured[s.name]["l0"]),
                            tokens=int(measured[s.name]["tokens"]), sample=sample, **expect[s.name])
            for s in sort_sites(saes)}
    record = {site: f.to_json() for site, f in fits.items()}
    for site, sae in saes.items():
        try:
            _RECORDS[sae] = record[str(site)]
        except TypeError:  # not weak-referenceable: not recorded
            pass
    bad = [site for site, f in fits.items() if f.fve is None or f.fve < min_fve]
    for site, f in fits.items():
        if (site not in bad and f.l0 is not None and f.expected_l0
                and not f.expected_l0 / L0_FACTOR <= f.l0 <= f.expected_l0 * L0_FACTOR):
            logger.warning("SAE at site %s: L0 %.1f on %d tokens of %s, expected %.1f (%s): its sparsity differs "
                           "from what it was trained for (another model's weights, or another dtype?)",
                           site, f.l0, f.tokens, sample, f.expected_l0, f.expected_l0_from)
    if bad:
        raise SAEFitError(_failure(model, saes, fits, bad, windows, keep, sample, model_name, min_fve))
    fves = [(f.fve, s) for s, f in fits.items()]
    lo = min(fves)
    l0s = sorted(f.l0 for f in fits.values() if f.l0 is not None)
    logger.info("SAE fit of %d SAE%s: FVE %s (lowest at %s), L0 %s, on %d tokens of %s%s (%.2f s)",
                len(fits), "s" * (len(fits) > 1),
                f"{lo[0]:.3f}" if len(fits) == 1 else f"{lo[0]:.3f}-{max(fves)[0]:.3f}",
                lo[1], "n/a" if not l0s else f"{l0s[0]:.1f}" if l0s[0] == l0s[-1] else f"{l0s[0]:.1f}-{l0s[-1]:.1f}",
                next(iter(fits.values())).tokens, sample, ", cached" if cached else "", time.perf_counter() - t0)
    return record


def _finite(x: Any) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# ------------------------------------------------------------------------------------------ the cause
def _failure(model: Any, saes: Mapping[str, Any], fits: Mapping[str, SiteFit], bad: list[str], windows: Any,
             keep: Any, sample: str, model_name: Optional[str], min_fve: float) -> str:
    """The one-line message: per failing site its FVE, L0 and likely cause; how to proceed."""
    from featcirc.saes.identity import loaded_files

    name = model_name or getattr(model.cfg, "model_name", None) or "the model"
    parts = []
    searched = 0
    for site in bad:
        f, sae = fits[site], saes[site]
        files = loaded_files(sae)
        where = f" ({files[0].parent})" if files else ""
        fve = "not finite" if f.fve is None else f"{f.fve:.3f}"
        l0 = "" if f.l0 is None else f", L0 {f.l0:.1f}" + (
            f" (expected {f.expected_l0:g})" if f.expected_l0 else "")
        cause = _cause(model, site, sae, f, windows, keep, name, min_fve, search=searched < MAX_DIAGNOSED)
        searched += cause.startswith("likely")
        s = Site.parse(site)
        at = (f"a transcoder from block {s.layer}'s MLP input to {s.hook_name}" if s.is_transcoder
              else f"at {s.hook_name}")
        parts.append(f"site {site}{where} {at}: FVE {fve}{l0}; {cause}")
    head = (f"{'an SAE does' if len(bad) == 1 else f'{len(bad)} SAEs do'} not fit {name!r}: "
            f"below FVE {min_fve} (fraction of its site's variance explained, on {f.tokens} tokens of {sample}): ")
    return (head + "; ".join(parts)
            + f". Check each SAE's cfg.json hook_name and the model it was made for, or {SKIP_HINT}")


def _cause(model: Any, site: str, sae: Any, fit: SiteFit, windows: Any, keep: Any, model_name: str,
           min_fve: float, *, search: bool = True) -> str:
    """The likely cause of one SAE's poor fit (see the module doc); ``search``: try the nearby hooks."""
    s = Site.parse(site)
    if fit.fve is None:
        return (f"its reconstruction is not finite in {str(model.cfg.dtype).replace('torch.', '')} (the "
                "activations overflow? try --dtype float32)")
    if fit.expected_fve is not None and fit.expected_fve < min_fve + 0.15 and fit.fve > fit.expected_fve - 0.2:
        return (f"the SAE reconstructs poorly anyway: its card reports FVE {fit.expected_fve:.2f} on its own "
                "evaluation (undertrained? train longer with --tokens)")
    if not search:
        return "cause not looked for (see the sites before)"
    if s.is_transcoder:
        return _transcoder_cause(model, s, sae, fit, windows, keep, model_name, min_fve)
    best = _best_other_hook(model, s, sae, windows, keep)
    if best is not None and best[0] >= max(min_fve, fit.fve + 0.2):
        fve, hook = best
        if "hook_normalized" in hook or "hook_scale" in hook:
            return (f"likely a pre- vs post-norm mix-up: it reconstructs {hook} (FVE {fve:.2f}), a normalised "
                    "input, instead")
        return f"likely a wrong hook: it reconstructs {hook} (FVE {fve:.2f}) instead"
    other = _trained_on(sae, model, model_name)
    near = "" if best is None else f" (best: {best[1]}, FVE {best[0]:.2f})"
    return (f"likely an SAE trained for another model{other}, or for other weights of this one (e.g. another "
            f"precision or quantisation): no hook of blocks {max(0, s.block - NEARBY_BLOCKS)}-"
            f"{min(model.cfg.n_layers - 1, s.block + NEARBY_BLOCKS)} of its width fits it either{near}")


def _trained_on(sae: Any, model: Any, model_name: str) -> str:
    """`` (its cfg.json says model 'x')`` when the SAE's config names a model other than this one."""
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    trained_on = getattr(meta, "model_name", None) if meta is not None else None
    own = {str(model_name), str(getattr(model.cfg, "model_name", ""))}
    return f" (its cfg.json says model {trained_on!r})" if trained_on and str(trained_on) not in own else ""


def _transcoder_cause(model: Any, s: Site, sae: Any, fit: SiteFit, windows: Any, keep: Any, model_name: str,
                      min_fve: float) -> str:
    """The likely cause of a transcoder's poor fit: its input read at another point (the pre-norm residual
    stream, ln2's input, instead of ln2's output), a transcoder of another layer's MLP, else another model."""
    best = _best_other_transcoder_input(model, s, sae, windows, keep)
    lo, hi = max(0, s.block - NEARBY_BLOCKS), min(model.cfg.n_layers - 1, s.block + NEARBY_BLOCKS)
    if best is not None and best[0] >= max(min_fve, fit.fve + 0.2):
        fve, what, layer = best
        if layer != s.layer:
            return (f"likely a transcoder of another layer: it predicts block {layer}'s MLP output from that "
                    f"MLP's input (FVE {fve:.2f}) instead")
        norm = ("the pre-norm residual stream (ln2's input)" if what.endswith("hook_resid_mid")
                else "the normalised stream before ln2's weight and bias" if "hook_normalized" in what
                else "the residual stream" if "hook_resid" in what else "another point")
        return (f"likely its input is read at the wrong point: it predicts {s.hook_name} from {what} (FVE "
                f"{fve:.2f}), {norm}, instead of the MLP's input (ln2's output, which featcirc feeds it): a "
                "transcoder trained on another hook, e.g. pre- vs post-norm")
    near = "" if best is None else f" (best: {best[1]}, FVE {best[0]:.2f})"
    return (f"likely a transcoder trained for another model{_trained_on(sae, model, model_name)}, or for other "
            f"weights of this one (e.g. another precision or quantisation): no input point of blocks {lo}-{hi} "
            f"predicts the MLP's output with it, and no nearby block's MLP fits it either{near}")


CANDIDATE_HOOKS = ("hook_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                   "hook_mlp_out", "attn.hook_z", "hook_normalized")
"""The hooks (by the end of their names) a failing SAE is tried at: every site's, the stream between
attention and MLP, and the normalised inputs and outputs of the norms (pre- vs post-norm)."""
SEARCH_TOKENS = 128
"""Tokens of the sample the search uses (a ranking needs fewer than the check)."""


def _best_other_hook(model: Any, site: Site, sae: Any, windows: Any, keep: Any) -> Optional[tuple[float, str]]:
    """``(fve, hook)`` of the hook of :data:`CANDIDATE_HOOKS` in blocks near ``site``'s (other than its own
    and its alias), of the SAE's width, that it reconstructs best, or None when there is none."""
    import torch

    lo, hi = max(0, site.block - NEARBY_BLOCKS), min(model.cfg.n_layers - 1, site.block + NEARBY_BLOCKS)
    own = set(hook_names_of(site))
    prefixes = tuple(f"blocks.{b}." for b in range(lo, hi + 1))
    names = {h for h in model.hook_dict if (h.startswith(prefixes) or (lo == 0 and h == "hook_embed"))
             and h.endswith(CANDIDATE_HOOKS) and h not in own}
    d_in = int(sae.cfg.d_in)
    device = next(model.parameters()).device
    keep = keep.clone()
    keep.view(-1)[keep.view(-1).cumsum(0) > SEARCH_TOKENS] = False
    rows = keep.any(1)
    windows, keep = windows[rows], keep[rows]
    best = None
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(windows.to(device), names_filter=lambda h: h in names, prepend_bos=False,
                                            stop_at_layer=hi + 1)
            k = keep.to(device)
            for hook in sorted(cache.keys()):
                act = cache[hook]
                if act.dim() not in (3, 4) or tuple(act.shape[:2]) != tuple(windows.shape):
                    continue
                act = _flat(act)
                if act.shape[-1] != d_in:
                    continue
                fve = _fve(*_reconstruction(sae, act[k])[:2])
                if math.isfinite(fve) and (best is None or fve > best[0]):
                    best = (fve, hook)
    except RuntimeError as e:  # out of memory or an odd hook: the message does without the search
        logger.debug("SAE fit: looking for a better hook failed: %s", e)
    return best


def _search_sample(windows: Any, keep: Any) -> tuple[Any, Any]:
    """The first :data:`SEARCH_TOKENS` counted tokens of the sample (rows without any dropped)."""
    keep = keep.clone()
    keep.view(-1)[keep.view(-1).cumsum(0) > SEARCH_TOKENS] = False
    rows = keep.any(1)
    return windows[rows], keep[rows]


def _best_other_transcoder_input(model: Any, site: Site, sae: Any, windows: Any,
                                 keep: Any) -> Optional[tuple[float, str, int]]:
    """``(fve, what, layer)`` of what a failing transcoder at ``site`` fits best: its own block's MLP output
    predicted from another hook of :data:`CANDIDATE_HOOKS` (or ``hook_mlp_in``) of nearby blocks of its
    width (``what`` the hook, ``layer`` its own), or a nearby block's MLP output from that MLP's input
    (``what`` names the block, ``layer`` that block's); None when nothing was tried."""
    import torch

    from featcirc.models.mlp_io import recording_mlp_io

    lo, hi = max(0, site.block - NEARBY_BLOCKS), min(model.cfg.n_layers - 1, site.block + NEARBY_BLOCKS)
    prefixes = tuple(f"blocks.{b}." for b in range(lo, hi + 1))
    ends = CANDIDATE_HOOKS + ("hook_mlp_in",)
    names = {h for h in model.hook_dict if (h.startswith(prefixes) or (lo == 0 and h == "hook_embed"))
             and h.endswith(ends) and h != site.hook_name}
    d_in = int(sae.cfg.d_in)
    device = next(model.parameters()).device
    windows, keep = _search_sample(windows, keep)
    best = None
    try:
        with torch.no_grad():
            with recording_mlp_io(model, range(lo, hi + 1)) as mlp_io:
                _, cache = model.run_with_cache(windows.to(device), names_filter=lambda h: h in names,
                                                prepend_bos=False, stop_at_layer=hi + 1)
            k = keep.to(device)
            target = mlp_io[site.layer][1][k]
            tried = [(hook, site.layer, _flat(cache[hook])) for hook in sorted(cache.keys())]
            tried += [(f"block {b}'s MLP", b, mlp_io[b][0]) for b in range(lo, hi + 1) if b != site.layer]
            for what, layer, act in tried:
                if act.dim() != 3 or tuple(act.shape[:2]) != tuple(windows.shape) or act.shape[-1] != d_in:
                    continue
                out = target if layer == site.layer else mlp_io[layer][1][k]
                fve = _fve(*_reconstruction(sae, act[k], out)[:2])
                if math.isfinite(fve) and (best is None or fve > best[0]):
                    best = (fve, what, layer)
    except RuntimeError as e:  # out of memory or an odd hook: the message does without the search
        logger.debug("SAE fit: looking for a better input of a transcoder failed: %s", e)
    return best
