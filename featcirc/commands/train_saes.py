"""``featcirc train-saes``: train one SAE per site with SAELens from one shared model forward, and
write a SAELens-format set with its card (see :mod:`featcirc.saes.training`). With ``--transcoders``,
one ReLU transcoder per layer instead (``tc.L``: the MLP's input -> its output; every layer unless
``--sites tc.0,tc.2`` names some; :func:`featcirc.saes.training.train_transcoders`).

Everything the user typed is checked first, by :func:`check` (no torch, well under a second): the
recipe, the sites (against the model's layers where :func:`model_shape` knows them: the tiny
model's bundled ``config.json``, Gemma-3-270M's), the settings (the context against the model's
``n_ctx``), the device name, the output directory and the corpus name or path. Only then does the
command ask what the machine has: the model's extras, the GPU (torch is imported here), the default
corpus's pieces, the model's weights.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from featcirc.saes.train_settings import DEFAULT_CONTEXT, MODEL_DEFAULTS, TrainSettings
from featcirc.vocabulary import DTYPE_NAMES, WINDOWS

HELP = "train SAEs (SAELens TopK) at chosen sites of a model, or transcoders, on an offline corpus"

logger = logging.getLogger("featcirc")

# command-line flag -> TrainSettings field (None: not given, the recipe's or the default value holds)
_SETTING_FLAGS = {"width": "width", "k": "k", "tokens": "tokens", "lr": "lr", "context_size": "context_size",
                  "batch_tokens": "batch_tokens", "eval_tokens": "eval_tokens", "ce_eval_tokens": "ce_eval_tokens",
                  "seed": "seed", "sae_dtype": "dtype", "l1_coefficient": "l1_coefficient"}

MODEL_CORPUS = {"tiny": "tiny"}
"""Default ``--corpus`` per model (lower-case name); ``default`` for every other model."""

GEMMA_SHAPE = {"n_layers": 18, "n_ctx": 8192, "d_model": 640}
"""Gemma-3-270M's depth and context (TransformerLens's built-in config; a test checks them), so that
its sites are checked before anything loads."""

_CORPUS_NAMES = ("default", "tiny")
_TINY = MODEL_DEFAULTS["tiny"]
_GENERIC = TrainSettings()


def _default(field: str, generic: Any = None, fmt: str = "{}") -> str:
    """``(default: X for --model tiny, else Y)`` for a setting (the help's one statement of the default)."""
    tiny = _TINY.get(field, getattr(_GENERIC, field))
    other = getattr(_GENERIC, field) if generic is None else generic
    if tiny == other:
        return f"(default: {fmt.format(other)})"
    return f"(default: {fmt.format(tiny)} for --model tiny, else {fmt.format(other)})"


def add_arguments(p) -> None:
    # The defaults are stated in the help text (they depend on --model); the options' argparse
    # defaults are None so that the recipe's values hold where no flag is given.
    p.add_argument("--recipe", help="a bundled recipe (e.g. gemma-3-270m) or a recipe .json: model, sites, "
                   "corpus and settings; flags given here override it; --out defaults to the local set "
                   "directory (~/.cache/featcirc/saes/<model>-local)")
    p.add_argument("--model", help="model name (tiny, gemma-3-270m, or a TransformerLens name)")
    p.add_argument("--sites", help="comma-separated sites (embed,resid.0,attn.3,mlp.3,...), all-resid "
                   "(embed and every resid.L) or all; with --transcoders: tc.L names (tc.0,tc.2) or all, the default")
    p.add_argument("--transcoders", action="store_true", help="train transcoders (ReLU, L1-penalised) instead of "
                   "SAEs: tc.L reads block L's MLP input and writes its output; one per layer of --sites "
                   "(default: every layer)")
    p.add_argument("--corpus", help="default (the offline English corpus), tiny (the tiny model's language), "
                   "or a .txt/.jsonl file or a directory of .txt files (default: tiny for --model tiny, "
                   "else default)")
    p.add_argument("--out", help="output directory (must not exist unless --force)")
    p.add_argument("--width", type=int, help=f"features per SAE {_default('width')}")
    p.add_argument("--k", type=int, help=f"TopK: active features per token {_default('k')} (SAEs only)")
    p.add_argument("--l1-coefficient", type=float, help="transcoders only: weight of the L1 penalty on the "
                   "features times their decoder norms, activations at mean norm sqrt(d_model); higher: "
                   f"sparser (default: {_GENERIC.l1_coefficient:g})")
    p.add_argument("--tokens", type=int, help="training tokens per SAE "
                   + _default("tokens", fmt="{:,}")[:-1] + "; the tiny defaults train --sites all-resid in "
                   "about a minute on one CPU thread)")
    p.add_argument("--lr", type=float, help=f"learning rate {_default('lr', fmt='{:g}')}")
    p.add_argument("--context-size", type=int, help=f"tokens per window, at most the model's n_ctx (default: "
                   f"{_TINY['context_size']} for --model tiny, whose n_ctx is 48 and whose longest corpus "
                   f"sentence is 21 tokens; else {DEFAULT_CONTEXT}, or the model's n_ctx when shorter)")
    p.add_argument("--batch-tokens", type=int, help=f"SAE batch size in tokens {_default('batch_tokens')}")
    p.add_argument("--eval-tokens", type=int, help=f"held-out tokens for L0 and FVE {_default('eval_tokens')}")
    p.add_argument("--ce-eval-tokens", type=int, help="held-out tokens for the CE metrics, which cost two "
                   f"forward passes per site {_default('ce_eval_tokens')}")
    p.add_argument("--windows", choices=WINDOWS,
                   help="packed: documents concatenated into full windows; documents: one document per "
                   "window, right-padded (default: documents for --model tiny, whose training rows were "
                   "single sentences, else packed)")
    p.add_argument("--sae-dtype", choices=DTYPE_NAMES,
                   help="dtype of the SAEs being trained; the model runs in float32 (default: float32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, help=f"seed of the split, the initialisation and the shuffling "
                   f"{_default('seed')}")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")


@dataclass(frozen=True)
class Plan:
    """What one ``train-saes`` run will do, from the recipe and the flags, checked without torch."""

    model: str
    sites: str                      # the site spec: all, all-resid or comma-separated names
    corpus: str
    out: Path
    settings: dict                  # every TrainSettings field
    context_given: bool             # the context was set (flag, recipe or model default), not derived
    n_ctx: Optional[int]            # the model's context where known without loading it
    transcoders: bool = False       # tc.L transcoders instead of SAEs (sites: all or tc.L names)


def model_shape(model: str) -> Optional[dict]:
    """``n_layers``, ``n_ctx`` (and more) of a model known without loading it: the tiny model (its
    bundled ``config.json``) and Gemma-3-270M; None for other models."""
    from featcirc.commands.checks import tiny_model_config

    key = str(model).strip().lower()
    if key == "tiny":
        return tiny_model_config()
    if key in ("gemma-3-270m", "google/gemma-3-270m"):
        return dict(GEMMA_SHAPE)
    return None


def _plan(args) -> Plan:
    """Model, sites, corpus, output directory and settings from the model's defaults, the recipe and
    the flags (in that order of precedence, the flags last)."""
    from featcirc.saes.train_settings import default_settings
    from featcirc.saes.trained import LOCAL_SUFFIX, load_recipe, trained_set_path

    recipe = load_recipe(args.recipe) if args.recipe else {}
    transcoders = bool(getattr(args, "transcoders", False))
    model = args.model or recipe.get("model")
    sites = args.sites or (None if transcoders else recipe.get("sites"))
    if transcoders and not sites:
        sites = "all"
    if not model or not sites:
        raise ValueError("say what to train: --model and --sites (or --recipe, e.g. --recipe gemma-3-270m)")
    if transcoders and getattr(args, "k", None) is not None:
        raise ValueError("--k is the TopK of SAEs; transcoders are ReLU with an L1 penalty: set --l1-coefficient")
    if not transcoders and getattr(args, "l1_coefficient", None) is not None:
        raise ValueError("--l1-coefficient is for --transcoders (SAEs are TopK: set --k)")
    key = str(model).strip().lower()
    corpus = args.corpus or recipe.get("corpus") or MODEL_CORPUS.get(key, "default")
    if args.out:
        out = Path(args.out)
    elif args.recipe:  # a bundled recipe trains the set named after it: gemma-3-270m-scope -> gemma-3-270m-scope-local
        from featcirc.saes.trained import recipe_names

        name = str(args.recipe) if str(args.recipe) in recipe_names() else str(model)
        out = trained_set_path(name + LOCAL_SUFFIX)
    else:
        raise ValueError("--out is required without --recipe")
    shape = model_shape(model)
    n_ctx = int(shape["n_ctx"]) if shape and shape.get("n_ctx") else None
    settings = default_settings(model, n_ctx)
    recipe_settings = dict(recipe.get("settings", {}))
    settings.update(recipe_settings)
    context_given = "context_size" in MODEL_DEFAULTS.get(key, {}) or "context_size" in recipe_settings
    for flag, field in _SETTING_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            settings[field] = value
            context_given |= field == "context_size"
    if getattr(args, "windows", None) is not None:
        settings["pack"] = args.windows == "packed"
    return Plan(model=model, sites=sites, corpus=corpus, out=out, settings=settings, context_given=context_given,
                n_ctx=n_ctx, transcoders=transcoders)


def check_sites(spec: str, n_layers: Optional[int], transcoders: bool = False) -> None:
    """Site names parse, none is listed twice and (where the model's depth is known) none is beyond the
    model. SAE sites, or with ``transcoders`` ``tc.L`` sites (block L's MLP input -> output); ``all``
    (and for SAEs ``all-resid``) always fit."""
    from featcirc.sites import Site

    text = str(spec).strip()
    if text == "all" or (text == "all-resid" and not transcoders):
        return
    if text == "all-resid":
        raise ValueError("--sites all-resid names SAE sites; with --transcoders give tc.L names (tc.0,tc.1) or all")
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("no sites given: " + ("with --transcoders write e.g. --sites tc.0,tc.1 or --sites all"
                                              if transcoders else
                                              "write e.g. --sites embed,resid.0,resid.1 or --sites all-resid"))
    seen = set()
    for name in names:
        site = Site.parse(name)
        if site.is_transcoder and not transcoders:
            raise ValueError(f"{site.name} is a transcoder site: train transcoders with --transcoders (and SAEs "
                             "in a separate run)")
        if transcoders and not site.is_transcoder:
            raise ValueError(f"--transcoders trains tc.L sites (block L's MLP input -> output), not {site.name}: "
                             "train SAEs and transcoders in separate runs")
        if n_layers is not None and site.layer >= n_layers:
            raise ValueError(f"site {site.name} is beyond the model: it has {n_layers} layers (0..{n_layers - 1})")
        if site in seen:
            raise ValueError(f"site {site.name} is listed twice in --sites {spec}")
        seen.add(site)


def check_corpus_spec(spec: str) -> None:
    """The corpus is a known name or a path that :func:`featcirc.data.corpus.load_corpus` can read:
    an existing directory, ``.txt`` or ``.jsonl`` file (a ``.txt`` file must hold some text). Whether
    the default corpus's pieces are on this machine is checked later, when it loads."""
    if spec in _CORPUS_NAMES:
        return
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"no corpus {spec!r}: use 'default', 'tiny', a .txt or .jsonl file, or a directory of "
                         ".txt files")
    if path.is_dir():
        return
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"corpus file {path} must be .txt (plain text) or .jsonl (a 'text' field per line)")
    if path.suffix == ".txt" and path.stat().st_size < 1 << 20:
        try:
            empty = not path.read_bytes().strip()
        except OSError as e:
            raise ValueError(f"corpus file {path} cannot be read ({e})") from None
        if empty:
            raise ValueError(f"corpus {spec!r} has no text: give a file or directory with non-empty text "
                             "(.txt files, or a .jsonl with a 'text' field per line)")


def check(args) -> Plan:
    """Every check of what the user typed, before torch is imported: recipe, sites, settings, device
    name, output directory, corpus; then the model name (whose extras must be installed). Raises
    ``ValueError`` / ``FileExistsError`` / ``FileNotFoundError`` with a one-line message."""
    from featcirc.commands.checks import check_device_name, check_model_name, check_train_size
    from featcirc.saes.training import check_output_dir

    plan = _plan(args)
    shape = model_shape(plan.model)
    n_layers = int(shape["n_layers"]) if shape and shape.get("n_layers") else None
    check_sites(plan.sites, n_layers, transcoders=plan.transcoders)
    TrainSettings(**plan.settings).check(n_ctx=plan.n_ctx)
    size_spec = plan.sites
    if plan.transcoders and str(plan.sites).strip() == "all":  # one transcoder (2 x d_model x width) per layer
        size_spec = ",".join(f"tc.{layer}" for layer in range(n_layers or 1))
    check_train_size(plan.settings, size_spec, shape)  # --width bounded; memory estimate where d_model is known
    check_device_name(args.device)
    check_output_dir(plan.out, args.force)
    check_corpus_spec(plan.corpus)
    check_model_name(plan.model)
    return plan


def run(args, progress: bool) -> int:
    from featcirc.commands.common import phase, start_torch, stdout_to_log

    plan = check(args)  # what the user typed, before torch
    device, _ = start_torch(args)  # the first heavy import; the global --threads; a missing GPU fails here

    from featcirc.data.corpus import load_corpus
    from featcirc.models.loading import load_model
    from featcirc.saes.training import parse_sites, parse_transcoder_sites, train_saes, train_transcoders

    corpus = load_corpus(plan.corpus)
    logger.info("corpus %s: %d documents, %d words, sha256 %s", corpus.name, len(corpus.texts), corpus.n_words,
                corpus.sha256[:12])
    phase("checked")
    with stdout_to_log():
        model = load_model(plan.model, device=str(device))
    sites = parse_transcoder_sites(model, plan.sites) if plan.transcoders else parse_sites(model, plan.sites)
    settings_kw = dict(plan.settings)
    if not plan.context_given:  # the generic default, cut to this model's context
        settings_kw["context_size"] = min(int(settings_kw["context_size"]), int(model.cfg.n_ctx))
    settings = TrainSettings(**settings_kw)
    settings.check(n_ctx=int(model.cfg.n_ctx))
    phase("loaded")
    what = "transcoders" if plan.transcoders else "SAEs"
    logger.info("training %d %s (%s) on %d tokens each -> %s", len(sites), what, ", ".join(s.name for s in sites),
                settings.tokens, plan.out)
    if "train-saes" in sys.argv[1:]:  # the command line as typed (python -m featcirc / featcirc)
        rest = sys.argv[sys.argv.index("train-saes") + 1:]
        command = "featcirc train-saes " + " ".join(shlex.quote(a) for a in rest)
    else:  # called through featcirc.cli.main(argv)
        command = "featcirc train-saes " + _flags_text(args)
    # phases "trained" (SAELens done) and "written" (the set complete, before its move onto --out)
    trainer = train_transcoders if plan.transcoders else train_saes
    info = trainer(model, sites, corpus, plan.out, settings, model_name=plan.model, command=command,
                   force=args.force, progress=progress, phase=phase)
    worst = min(info["saes"].items(), key=lambda kv: kv[1].get("ce_recovered", kv[1]["fve"]))
    print(f"train-saes: {len(info['saes'])} {what} -> {plan.out} ({info['train_seconds']:.0f} s training); "
          f"lowest CE recovered {worst[0]}: {worst[1].get('ce_recovered', float('nan')):.3f}, "
          f"FVE {worst[1]['fve']:.3f}; card: {plan.out / 'README.md'}")
    return 0


def _flags_text(args) -> str:
    parts = []
    if getattr(args, "transcoders", False):
        parts.append("--transcoders")
    for name in ("recipe", "model", "sites", "corpus", "out", "width", "k", "l1_coefficient", "tokens", "lr",
                 "context_size", "batch_tokens", "eval_tokens", "ce_eval_tokens", "windows", "sae_dtype", "device",
                 "seed"):
        v = getattr(args, name, None)
        if v is not None and not (name == "device" and v == "auto"):
            parts.append(f"--{name.replace('_', '-')} {shlex.quote(str(v))}")
    if args.force:
        parts.append("--force")
    return " ".join(parts)
