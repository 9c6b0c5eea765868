"""``featcirc demo``: a complete run on the bundled tiny model in about half a minute: discover a
feature circuit on the bundled held-out pairs of a task (half for discovery, half held out), evaluate
it on the held-out half (curves, CPR / CMD, the exported circuit's faithfulness and completeness with
intervals), and write feature cards and the offline viewer, into one directory built beside ``--out``
and moved into place when complete. ``--transcoders``: over the bundled tiny transcoders (``tc.0 .. tc.3``,
the set ``tiny-transcoders``, ``saes/tiny-transcoders``) instead of the tiny SAEs."""

from __future__ import annotations

import logging
from pathlib import Path

from featcirc.commands.common import RunConfig, phase
from featcirc.commands.discover import CardOptions, ExportOptions, discover
from featcirc.saes.spec import TINY, TINY_TRANSCODERS

logger = logging.getLogger("featcirc")

HELP = "discover + evaluate + feature cards + viewer on the bundled tiny model (about half a minute)"

DEMO_CARD_TOKENS = 8_192
"""Corpus tokens the demo's feature cards scan (``features``' default is 65,536): a quarter of the
demo's time at this size on a busy 2-core CPU; ``featcirc features DIR`` scans more."""


def heldout_file(task: str) -> Path:
    """The tiny model's bundled held-out pairs of ``task`` (``featcirc/resources/tiny/heldout_<task>.jsonl``,
    as :func:`featcirc.models.tiny.heldout_path`, found without importing torch)."""
    return Path(__file__).resolve().parents[1] / "resources" / "tiny" / f"heldout_{task.replace('-', '_')}.jsonl"


def demo_config(args) -> RunConfig:
    saes = TINY_TRANSCODERS if getattr(args, "transcoders", False) else TINY
    return RunConfig(model="tiny", saes=saes, method=args.method, level="feature", aggregation="none",
                     data=str(heldout_file(args.task)), n=args.pairs, seed=args.seed, top_k=100,
                     max_nodes=args.max_nodes, eval_fraction=0.5, eval_pairs=args.pairs, device=args.device,
                     dtype=args.dtype)


def add_arguments(p) -> None:
    from featcirc.attribution.methods import method_names
    from featcirc.commands.common import TASK_CHOICES, add_device_arguments, add_output_arguments

    p.add_argument("--task", choices=TASK_CHOICES, default="sva-nounpp", help="which bundled held-out pairs")
    p.add_argument("--method", choices=method_names(with_edges=True), default="relp", help="attribution method")
    p.add_argument("--pairs", "--n", dest="pairs", type=int, default=32, metavar="N",
                   help="discovery pairs, and held-out pairs evaluated (--n is an alias)")
    p.add_argument("--max-nodes", type=int, default=500, help="edges are scored among the top N nodes")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--cards-tokens", type=int, default=DEMO_CARD_TOKENS, help="corpus tokens the feature cards scan")
    p.add_argument("--transcoders", action="store_true", help="the circuit over the bundled tiny transcoders (tc.0 .. "
                   "tc.3, which replace the MLPs) instead of the tiny SAEs")
    add_device_arguments(p)
    add_output_arguments(p, required=False, default="featcirc-demo")


def run(args, progress: bool) -> int:
    from featcirc.commands.common import process_context, start_torch
    from featcirc.commands.evaluate import EvaluationRequest, evaluate_run
    from featcirc.data.load import run_pairs
    from featcirc.io import check_out_dir, staged_dir

    from featcirc.commands.checks import check_int

    cfg = demo_config(args)
    cfg.check()
    check_int(args.cards_tokens, "--cards-tokens", allow_none=False, what="corpus tokens the feature cards scan")
    check_out_dir(args.out, args.force)
    pairs = run_pairs(data=cfg.data, n=cfg.n, seed=cfg.seed, eval_fraction=cfg.eval_fraction)
    phase("checked")
    _, dtype = start_torch(args)
    from featcirc.commands.common import load_model_and_saes

    with process_context(args.device) as ctx:
        if ctx.world_size > 1:
            raise ValueError("featcirc demo runs in one process; use `discover` under torchrun")
        model, saes = load_model_and_saes(cfg.model, cfg.saes, cfg.level, device=ctx.device, dtype=dtype)
        phase("loaded")
        with staged_dir(args.out, force=args.force) as out:
            summ = discover(cfg, out, pairs=pairs, ctx=ctx, model=model, saes=saes,
                            cards=CardOptions(max_tokens=args.cards_tokens), export=ExportOptions(), progress=progress)
            report, _ = evaluate_run(out, EvaluationRequest(n=cfg.eval_pairs, run_name=args.out, progress=progress),
                                     model=model, saes=saes, ctx=ctx)
            phase("written")
    print(demo_lines(summ, report, args.out))
    return 0


def demo_lines(summ: dict, report, out: "str | Path") -> str:
    """What the demo prints: the circuit, its faithfulness on held-out pairs, the smallest faithful circuit."""
    from featcirc.commands.discover import result_line
    from featcirc.evaluate.bootstrap import interval_text
    from featcirc.evaluate.curves import FAITHFUL
    from featcirc.run_dir import RunDir

    best = report.smallest_faithful()
    lines = [result_line(summ, out),
             f"held-out evaluation ({report.n_pairs} pairs, {report.ablation} ablation): CPR {interval_text(report.cpr)}, "
             f"CMD {interval_text(report.cmd)}; smallest circuit with F >= {FAITHFUL}: "
             + (f"{best.n_nodes} nodes (F = {interval_text(best.faithfulness)})" if best else "none"),
             f"open {RunDir(out).circuit_html} in a browser to explore the circuit and its feature cards"]
    return "\n".join(lines)
