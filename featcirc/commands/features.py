"""``featcirc features``: feature cards for a run's circuit (top examples, quantile samples, logit
lens, density), as ``cards.json`` and circuit-tracer feature files."""

from __future__ import annotations

HELP = "feature cards (top examples, quantiles, logit lens, density) for a run's circuit features"


def add_arguments(p) -> None:
    p.add_argument("dir", help="a run directory of `featcirc discover` (run.json, circuit.json)")
    p.add_argument("--corpus", default=None,
                   help="'tiny', 'default', a .txt / .jsonl file or a directory of .txt files "
                        "(default: tiny for the tiny model, else default)")
    p.add_argument("--top-k", type=int, default=None, help="top-activating examples per feature (default 10)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="corpus tokens to scan (default 65536)")
    p.add_argument("--feature", action="append", default=[], metavar="SITE/INDEX",
                   help="also build the card of this SAE feature (repeatable), e.g. resid.2/123")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--no-cache", action="store_true", help="recompute every card (ignore and skip the cache)")
    p.add_argument("--saes", default=None, metavar="SET",
                   help="the run's SAE set from another place (a copy of the same SAEs: checked against the "
                        "identity in run.json; default: the set the run recorded)")
    from featcirc.commands.common import add_device_arguments, add_fit_argument

    add_device_arguments(p, dtype_default=None)
    add_fit_argument(p)


def run(args, progress: bool) -> int:
    from pathlib import Path

    from featcirc.commands.checks import check_device_name, check_dtype_name, check_int
    from featcirc.commands.common import phase, start_torch
    from featcirc.commands.evaluate import read_run_config
    from featcirc.run_dir import RunDir
    from featcirc.sites import parse_card_key

    check_int(args.top_k, "--top-k", what="top-activating examples per feature")
    check_int(args.max_tokens, "--max-tokens", what="corpus tokens to scan")
    check_int(args.batch_size, "--batch-size", allow_none=False)
    check_device_name(args.device)
    check_dtype_name(args.dtype)
    for spec in args.feature:  # a malformed SITE/INDEX fails before anything heavy is imported
        parse_card_key(spec)
    run_dir = Path(args.dir)
    run_json = RunDir(run_dir).run_json
    if not run_json.exists():
        raise FileNotFoundError(f"{run_json} not found; run `featcirc discover ... --out {run_dir}` first")
    cfg, record = read_run_config(run_dir)
    if cfg.level != "feature" or not cfg.saes:
        raise ValueError(f"{run_dir} is a component-level run (no SAEs): feature cards need a run with --saes")
    from featcirc.saes.identity import check_run_identity, checked_run_config

    cfg = checked_run_config(cfg, record, run_dir, saes=args.saes, command="features")
    phase("checked")
    device, _ = start_torch(args)
    from featcirc.commands.common import load_model_and_saes
    from featcirc.features.run import DEFAULT_MAX_TOKENS, run_cards
    from featcirc.models.device import resolve_dtype

    dtype = resolve_dtype(args.dtype or record.dtype or "float32")  # default: the run's dtype
    model, saes = load_model_and_saes(cfg.model, cfg.saes, cfg.level, device=device, dtype=dtype)
    check_run_identity(record, model_name=cfg.model, saes_spec=cfg.saes, saes=saes, run_dir=run_dir, command="features")
    phase("loaded")
    path, doc = run_cards(run_dir, model=model, saes=saes, run=record, corpus=args.corpus,
                          extra_features=args.feature, top_k=args.top_k,
                          max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS, batch_size=args.batch_size,
                          use_cache=not args.no_cache, progress=progress)
    print(f"{len(doc['cards'])} feature cards over {doc['corpus']['n_tokens']} tokens of corpus "
          f"{doc['corpus']['name']!r} -> {path} (and graph_files/features/ for circuit-tracer)")
    return 0
