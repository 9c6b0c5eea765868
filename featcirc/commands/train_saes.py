"""``featcirc train-saes``: train one SAE per site with SAELens from one shared model forward, and
write a SAELens-format set with its card (see :mod:`featcirc.saes.training`)."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

HELP = "train SAEs (SAELens TopK) at chosen sites of a model on an offline corpus"

logger = logging.getLogger("featcirc")

# command-line flag -> TrainSettings field (None: not given, the recipe's or the default value holds)
_SETTING_FLAGS = {"width": "width", "k": "k", "tokens": "tokens", "lr": "lr", "context_size": "context_size",
                  "batch_tokens": "batch_tokens", "eval_tokens": "eval_tokens", "ce_eval_tokens": "ce_eval_tokens",
                  "seed": "seed", "sae_dtype": "dtype"}


def add_arguments(p) -> None:
    p.add_argument("--recipe", help="a bundled recipe (e.g. gemma-3-270m) or a recipe .json: model, sites, "
                   "corpus and settings; flags given here override it; --out defaults to the local set "
                   "directory (~/.cache/featcirc/saes/<model>-local)")
    p.add_argument("--model", help="model name (tiny, gemma-3-270m, or a TransformerLens name)")
    p.add_argument("--sites", help="comma-separated sites (embed,resid.0,attn.3,mlp.3,...), all-resid "
                   "(embed and every resid.L) or all")
    p.add_argument("--corpus", help="default (the offline English corpus), tiny, or a .txt/.jsonl file or a "
                   "directory of .txt files (default: default)")
    p.add_argument("--out", help="output directory (must not exist unless --force)")
    p.add_argument("--width", type=int, help="features per SAE (default 4096)")
    p.add_argument("--k", type=int, help="TopK: active features per token (default 32)")
    p.add_argument("--tokens", type=int, help="training tokens per SAE (default 1,000,000)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--context-size", type=int, help="tokens per window (default 128)")
    p.add_argument("--batch-tokens", type=int, help="SAE batch size in tokens (default 1024)")
    p.add_argument("--eval-tokens", type=int, help="held-out tokens for L0 and FVE (default 8192)")
    p.add_argument("--ce-eval-tokens", type=int, help="held-out tokens for the CE metrics, which cost two "
                   "forward passes per site (default 2048)")
    p.add_argument("--windows", choices=("packed", "documents"),
                   help="packed: documents concatenated into full windows (default); documents: one "
                   "document per window, right-padded (default for --model tiny, whose training rows "
                   "were single sentences)")
    p.add_argument("--sae-dtype", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the SAEs being trained (the model runs in float32) (default float32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, help="seed of the split, the initialisation and the shuffling (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")


def _plan(args) -> tuple[str, str, str, Path, dict]:
    """Model, sites, corpus, output directory and settings from the recipe and the flags."""
    from featcirc.saes.trained import LOCAL_SUFFIX, load_recipe, trained_set_path

    recipe = load_recipe(args.recipe) if args.recipe else {}
    model = args.model or recipe.get("model")
    sites = args.sites or recipe.get("sites")
    corpus = args.corpus or recipe.get("corpus") or "default"
    if not model or not sites:
        raise ValueError("say what to train: --model and --sites (or --recipe, e.g. --recipe gemma-3-270m)")
    if args.out:
        out = Path(args.out)
    elif args.recipe:
        out = trained_set_path(model + LOCAL_SUFFIX)
    else:
        raise ValueError("--out is required without --recipe")
    settings = dict(recipe.get("settings", {}))
    for flag, field in _SETTING_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            settings[field] = value
    if args.windows is not None:
        settings["pack"] = args.windows == "packed"
    elif "pack" not in settings and model.lower() == "tiny":
        settings["pack"] = False
    return model, sites, corpus, out, settings


def run(args, progress: bool) -> int:
    from featcirc.commands.checks import check_device_name, check_model_name
    from featcirc.commands.common import phase, start_torch, stdout_to_log
    from featcirc.sites import Site

    model_name, site_spec, corpus_spec, out, settings_kw = _plan(args)
    if site_spec not in ("all", "all-resid"):
        for name in site_spec.split(","):  # syntax errors before loading anything
            if name.strip():
                Site.parse(name.strip())
    check_model_name(model_name)
    check_device_name(args.device)
    device, _ = start_torch(args)  # the first heavy import; the global --threads; a missing GPU fails here

    from featcirc.data.corpus import load_corpus
    from featcirc.models.loading import load_model
    from featcirc.saes.training import TrainSettings, check_output_dir, parse_sites, train_saes

    settings = TrainSettings(**settings_kw)
    settings.check()
    check_output_dir(out, args.force)
    corpus = load_corpus(corpus_spec)
    logger.info("corpus %s: %d documents, %d words, sha256 %s", corpus.name, len(corpus.texts), corpus.n_words,
                corpus.sha256[:12])
    phase("checked")
    with stdout_to_log():
        model = load_model(model_name, device=str(device))
    sites = parse_sites(model, site_spec)
    phase("loaded")
    logger.info("training %d SAEs (%s) on %d tokens each -> %s", len(sites), ", ".join(s.name for s in sites),
                settings.tokens, out)
    if "train-saes" in sys.argv[1:]:  # the command line as typed (python -m featcirc / featcirc)
        rest = sys.argv[sys.argv.index("train-saes") + 1:]
        command = "featcirc train-saes " + " ".join(shlex.quote(a) for a in rest)
    else:  # called through featcirc.cli.main(argv)
        command = "featcirc train-saes " + _flags_text(args)
    info = train_saes(model, sites, corpus, out, settings, model_name=model_name, command=command,
                      force=args.force, progress=progress)
    phase("written")
    worst = min(info["saes"].items(), key=lambda kv: kv[1].get("ce_recovered", kv[1]["fve"]))
    print(f"train-saes: {len(info['saes'])} SAEs -> {out} ({info['train_seconds']:.0f} s training); "
          f"lowest CE recovered {worst[0]}: {worst[1].get('ce_recovered', float('nan')):.3f}, "
          f"FVE {worst[1]['fve']:.3f}; card: {out / 'README.md'}")
    return 0


def _flags_text(args) -> str:
    parts = []
    for name in ("recipe", "model", "sites", "corpus", "out", "width", "k", "tokens", "lr", "context_size",
                 "batch_tokens", "eval_tokens", "ce_eval_tokens", "windows", "sae_dtype", "device", "seed"):
        v = getattr(args, name, None)
        if v is not None and not (name == "device" and v == "auto"):
            parts.append(f"--{name.replace('_', '-')} {shlex.quote(str(v))}")
    if args.force:
        parts.append("--force")
    return " ".join(parts)
