"""Feature cards for a run directory: the circuit's feature nodes (plus any requested), computed
over a corpus with the run's model and SAEs, cached, written as ``cards.json`` and as
circuit-tracer feature files under ``graph_files/features/{model}.{saes}/``.

``cards.json`` (read by featcirc's viewer)::

    {"format": "featcirc-cards/1", "model": ..., "saes": ...,
     "corpus": {"name": ..., "sha256": ..., "n_tokens": ...},
     "cards": {"resid.2/123": {"site": "resid.2", "feature": 123, "density": 0.013, "max_activation": 5.2,
        "top_examples": [{"tokens": [...], "activations": [...], "max_index": 1}, ...],
        "quantiles": [{"label": "0.5-0.75 of max", "examples": [...]}, ...],
        "logit_lens": {"top": [[" is", 0.83], ...], "bottom": [[" are", -0.77], ...]}}}}

``corpus.n_tokens`` counts the token positions the statistics cover (BOS and padding excluded);
the corpus name of a file corpus is its file name (no absolute paths).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import networkx as nx

from featcirc.features.cards import CardSettings, card_key, compute_cards, normalize_request, parse_card_key
from featcirc.run_dir import CARDS_JSON, RunDir
from featcirc.run_files import RunRecord

logger = logging.getLogger("featcirc")

CARDS_FORMAT = "featcirc-cards/1"
CARDS_FILE = CARDS_JSON  # featcirc.run_dir names it
DEFAULT_MAX_TOKENS = 65_536
"""Corpus tokens scanned by default (the ``tiny`` corpus has about 230k; about 1 minute for a
circuit of the tiny model on 2 CPU cores, a few minutes for Gemma-3-270M)."""
DEFAULT_CONTEXT = 128
"""Window length, capped by the model's context (48 for the tiny model)."""


def circuit_features(G: nx.DiGraph) -> dict[str, list[int]]:
    """``{site: sorted SAE feature indices}`` of a circuit's feature nodes."""
    out: dict[str, set[int]] = {}
    for _, d in G.nodes(data=True):
        if d.get("kind") == "feature":
            out.setdefault(d["site"], set()).add(int(d["feature"]))
    return {s: sorted(v) for s, v in out.items()}


def parse_features(specs: Iterable[str]) -> dict[str, list[int]]:
    """``["resid.2/123", "mlp.0/7"]`` -> ``{"resid.2": [123], "mlp.0": [7]}``."""
    out: dict[str, set[int]] = {}
    for spec in specs:
        site, idx = parse_card_key(spec)
        out.setdefault(site, set()).add(idx)
    return {s: sorted(v) for s, v in out.items()}


def short_name(name: str) -> str:
    """A corpus or SAE-set name without directories (a file corpus is named by its path, an SAE
    set may be a directory)."""
    return Path(str(name).rstrip("/")).name or str(name)


def corpus_windows(model, corpus, context_size: int, max_tokens: Optional[int], pack: bool):
    """Token windows of ``corpus`` (:func:`featcirc.data.corpus.token_windows`). ``pack=False``: one
    document per window, right-padded; trailing all-padding columns are cut (under causal
    attention they change nothing before them) and windows are taken until ``max_tokens``
    non-padding tokens, so ``max_tokens`` counts text tokens in both layouts."""
    from featcirc.data.corpus import token_windows

    if pack:
        return token_windows(model, corpus, context_size, max_tokens=max_tokens)
    windows = token_windows(model, corpus, context_size, pack=False)
    pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None)
    if pad is None:
        return windows if max_tokens is None else windows[: max(1, max_tokens // context_size)]
    real = windows != pad
    width = int(real.any(0).nonzero().max()) + 1
    windows = windows[:, :width]
    if max_tokens is not None:
        n = int((real.sum(1).cumsum(0) <= max_tokens).sum())
        windows = windows[: max(n, 1)]
    return windows


def build_cards(model, saes: Mapping[str, Any], features: Mapping[str, Iterable[int]], corpus, *,
                model_name: str, saes_name: str, context_size: Optional[int] = None,
                max_tokens: Optional[int] = DEFAULT_MAX_TOKENS, settings: CardSettings = CardSettings(),
                pack: Optional[bool] = None, batch_size: int = 16, use_cache: bool = True,
                progress: bool = True) -> dict:
    """Cards of ``features`` over ``corpus`` (a :class:`featcirc.data.corpus.Corpus`), from the cache
    where it has them (:class:`featcirc.features.cache.CardCache`), computing the rest in one pass.

    ``pack``: windows of packed documents (SAELens's layout, for models trained on packed text) or
    one document per window (:func:`corpus_windows`); default: one per window for the tiny model,
    which was trained on single sentences, packed for every other model.
    Returns the ``cards.json`` document, plus ``"_extras"`` (per card: the activation histogram
    and percentiles for circuit-tracer files), which :func:`cards_document` leaves out.
    """
    from featcirc.features.cache import CardCache, model_fingerprint, sae_set_fingerprint
    from featcirc.models.loading import cache_root

    request = normalize_request(features, saes)
    keys = [card_key(s, i) for s, idx in request.items() for i in idx]
    ctx = int(context_size or min(DEFAULT_CONTEXT, int(model.cfg.n_ctx)))
    pack = (str(model_name).lower() != "tiny") if pack is None else bool(pack)
    if ctx > int(model.cfg.n_ctx):
        raise ValueError(f"context_size={ctx} exceeds the model's context of {model.cfg.n_ctx} tokens")
    cache = None
    cached: dict[str, dict] = {}
    n_tokens: Optional[int] = None
    if use_cache:
        cache = CardCache(cache_root() / "cards", model_name=model_name, saes_name=saes_name,
                          model_fp=model_fingerprint(model), saes_fp=sae_set_fingerprint(saes),
                          corpus_sha256=corpus.sha256, context_size=ctx, max_tokens=max_tokens, pack=pack,
                          settings=settings)
        cached, n_tokens = cache.load()
    missing: dict[str, list[int]] = {}
    for k in keys:
        if k not in cached:
            s, i = parse_card_key(k)
            missing.setdefault(s, []).append(i)
    if missing:
        n_missing = sum(map(len, missing.values()))
        logger.info("feature cards: %d of %d from the cache, computing %d over %s", len(keys) - n_missing,
                    len(keys), n_missing, short_name(corpus.name))
        windows = corpus_windows(model, corpus, ctx, max_tokens, pack)
        new, n_tokens = compute_cards(model, saes, missing, windows, settings=settings, batch_size=batch_size,
                                      progress=progress)
        cached = {**cached, **new}
        if cache is not None:
            cache.save(new, n_tokens)
    cards = {k: {kk: v for kk, v in cached[k].items() if kk != "_extras"} for k in keys}
    return {"format": CARDS_FORMAT, "model": str(model_name), "saes": short_name(saes_name),
            "corpus": {"name": short_name(corpus.name), "sha256": corpus.sha256, "n_tokens": int(n_tokens or 0)},
            "cards": cards, "_extras": {k: cached[k].get("_extras") for k in keys}}


def cards_document(built: Mapping) -> dict:
    """The ``cards.json`` document of :func:`build_cards` output (without ``_extras``)."""
    return {k: v for k, v in built.items() if k != "_extras"}


def validate_cards(doc: Mapping) -> None:
    """Check a ``cards.json`` document against its schema (module docstring); ``ValueError``
    listing the problems."""
    errs: list[str] = []
    if doc.get("format") != CARDS_FORMAT:
        errs.append(f"format is {doc.get('format')!r}, expected {CARDS_FORMAT!r}")
    if set(doc) != {"format", "model", "saes", "corpus", "cards"}:
        errs.append(f"top-level keys {sorted(doc)}")
    corpus = doc.get("corpus")
    if not isinstance(corpus, dict) or set(corpus) != {"name", "sha256", "n_tokens"}:
        errs.append("corpus must be {name, sha256, n_tokens}")

    def example_ok(e: Any) -> bool:
        return (isinstance(e, dict) and set(e) == {"tokens", "activations", "max_index"}
                and isinstance(e["tokens"], list) and all(isinstance(t, str) for t in e["tokens"])
                and isinstance(e["activations"], list) and len(e["activations"]) == len(e["tokens"])
                and isinstance(e["max_index"], int) and 0 <= e["max_index"] < len(e["tokens"]))

    for key, c in (doc.get("cards") or {}).items():
        if not isinstance(c, dict) or set(c) != {"site", "feature", "density", "max_activation", "top_examples",
                                                 "quantiles", "logit_lens"}:
            errs.append(f"card {key}: keys {sorted(c) if isinstance(c, dict) else c!r}")
            continue
        if card_key(c["site"], c["feature"]) != key:
            errs.append(f"card {key}: site/feature say {c['site']}/{c['feature']}")
        if not 0.0 <= c["density"] <= 1.0:
            errs.append(f"card {key}: density {c['density']} outside [0, 1]")
        if not all(example_ok(e) for e in c["top_examples"]):
            errs.append(f"card {key}: a malformed top example")
        for q in c["quantiles"]:
            if set(q) != {"label", "examples"} or not all(example_ok(e) for e in q["examples"]):
                errs.append(f"card {key}: a malformed quantile group")
        lens = c["logit_lens"]
        if set(lens) != {"top", "bottom"} or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in lens["top"] + lens["bottom"]):
            errs.append(f"card {key}: logit_lens must be {{top, bottom}} of [token, value] pairs")
    if errs:
        raise ValueError("invalid cards document:\n  " + "\n  ".join(errs[:20]))


def write_run_cards(run_dir: "str | os.PathLike[str]", **kwargs: Any) -> Path:
    """:func:`run_cards` (same arguments), returning the path of ``cards.json``."""
    return run_cards(run_dir, **kwargs)[0]


def run_cards(run_dir: "str | os.PathLike[str]", *, model=None, saes=None, run: "RunRecord | None" = None,
              circuit: Optional[nx.DiGraph] = None, corpus: Optional[str] = None,
              extra_features: Iterable[str] = (), top_k: Optional[int] = None,
              max_tokens: Optional[int] = DEFAULT_MAX_TOKENS, context_size: Optional[int] = None,
              pack: Optional[bool] = None, batch_size: int = 16, use_cache: bool = True,
              progress: bool = True) -> tuple[Path, dict]:
    """Cards for a run: every feature node of its circuit plus ``extra_features`` (``SITE/INDEX``),
    with the run's model and SAEs. ``run`` / ``circuit``: the run's :class:`~featcirc.run_files.RunRecord`
    and circuit when the caller holds them (``discover``, which has just written them), else read from
    ``RUN/run.json`` (every field checked) and ``RUN/circuit.json`` (when there); ``model`` / ``saes``:
    when loaded already. ``corpus``: ``"tiny"``, ``"default"`` or a text path (default: ``tiny`` for
    the tiny model, else ``default``); ``pack``: as :func:`build_cards`. Writes ``RUN/cards.json``
    and ``RUN/graph_files/features/{model}.{saes}/{n}.json`` (circuit-tracer's feature panel);
    returns the path of ``cards.json`` and its document.
    """
    from featcirc.data.corpus import load_corpus
    from featcirc.export.formats import read_json
    from featcirc.export.graph_files import feature_set_name, features_dir
    from featcirc.features.tracer_files import write_tracer_features
    from featcirc.io import write_json

    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    if run is None:
        if not files.run_json.exists():
            raise FileNotFoundError(f"{files.run_json} not found; run `featcirc discover ... --out {run_dir}` first")
        run = RunRecord.read(run_dir)
        run.run_config(files.run_json)  # every field checked
    if run.level != "feature" or not run.saes:
        raise ValueError(f"{run_dir} is a component-level run (no SAEs): feature cards need a run with --saes")
    features = parse_features(extra_features)
    if circuit is None and files.circuit_json.exists():
        circuit = read_json(files.circuit_json)
    if circuit is not None:
        for s, idx in circuit_features(circuit).items():
            features[s] = sorted(set(features.get(s, [])) | set(idx))
    if not features:
        raise ValueError(f"{files.circuit_json} has no feature nodes; name features with --feature SITE/INDEX")
    settings = CardSettings() if top_k is None else CardSettings(top_k=top_k)
    if model is None:
        from featcirc.models.loading import load_model

        model = load_model(run.model)
    if saes is None:
        from featcirc.saes.loading import load_saes

        saes = load_saes(model, run.saes)
    normalize_request(features, saes)  # unknown sites / indices fail here, before the corpus pass
    corpus_obj = load_corpus(corpus or ("tiny" if str(run.model).lower() == "tiny" else "default"))
    built = build_cards(model, saes, features, corpus_obj, model_name=run.model, saes_name=run.saes,
                        context_size=context_size, max_tokens=max_tokens, settings=settings, pack=pack,
                        batch_size=batch_size,
                        use_cache=use_cache, progress=progress)
    doc = cards_document(built)
    validate_cards(doc)
    path = write_json(files.cards_json, doc, indent=None)
    feature_set = feature_set_name(run.model, run.saes)
    write_tracer_features(doc["cards"], features_dir(files.graph_files, feature_set),
                          feature_set=feature_set, extras=built["_extras"])
    return path, doc


__all__ = ["CARDS_FORMAT", "CARDS_FILE", "DEFAULT_MAX_TOKENS", "circuit_features", "parse_features", "corpus_windows",
           "build_cards",
           "cards_document", "validate_cards", "run_cards", "write_run_cards", "short_name"]
