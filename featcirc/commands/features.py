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


def run(args, progress: bool) -> int:
    from featcirc.features.run import DEFAULT_MAX_TOKENS, write_run_cards

    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    path = write_run_cards(args.dir, corpus=args.corpus, extra_features=args.feature, top_k=args.top_k,
                           max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS, batch_size=args.batch_size,
                           use_cache=not args.no_cache, progress=progress)
    import json

    doc = json.loads(path.read_text(encoding="utf-8"))
    print(f"{len(doc['cards'])} feature cards over {doc['corpus']['n_tokens']} tokens of corpus "
          f"{doc['corpus']['name']!r} -> {path} (and graph_files/features/ for circuit-tracer)")
    return 0
