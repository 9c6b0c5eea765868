"""``featcirc compare``: every method against exact activation patching on the same pairs.

Per site kind and node kind (features and error nodes apart): Pearson and Spearman correlations of
each method's per-pair, per-position cells with exact patching's, with bootstrap intervals that
resample pairs; cells where both methods are exactly 0 are left out, and a group with fewer than two
cells left is reported in ``compare.json["dropped"]`` with the reason. Cost per method. The pairs are
split as in ``discover`` at both levels (so component and feature level score the same discovery
pairs); at feature level the faithfulness curves, CPR / CMD with intervals use the held-out pairs.

The size a circuit needs (feature level, ``sizes.csv``, ``compare.json["sizes"]``): for each method's
threshold pruning and, with ``--mask``, the learned mask from RelP's scores (trained on the discovery
pairs under each ablation, :mod:`featcirc.pruning.mask`), under every ``--ablation``: the smallest
circuit of the ``--sizes`` grid with F >= 0.8, and F at 50 / 100 / 200 nodes, with intervals, and the
seconds the circuit cost (attribution, plus the mask).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Optional, Sequence

from featcirc.attribution import DEFAULT_MAX_NODES
from featcirc.commands.common import phase, write_csv

logger = logging.getLogger("featcirc")

HELP = "methods against exact patching: correlations with intervals, cost, faithfulness"

SIZES_HEADER = ["method", "pruner", "ablation", "smallest_f08", "f50", "f50_lo", "f50_hi", "f100", "f100_lo",
                "f100_hi", "f200", "f200_lo", "f200_hi", "seconds"]
DEFAULT_SIZES = (25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000)
"""The size grid of ``sizes.csv`` (capped at ``--max-nodes``, which is added)."""

CORR_HEADER = ["level", "site_kind", "node_kind", "method", "pearson_r", "pearson_lo", "pearson_hi",
               "spearman_r", "spearman_lo", "spearman_hi", "n", "n_pairs"]


def correlations(ref: dict, cells: dict, method: str, level: str, *, n_resamples: int = 1000, seed: int = 0
                 ) -> tuple[list[list], list[dict], dict]:
    """Rows of :data:`CORR_HEADER` for one method against the reference cell groups
    (``NodeScores.cell_groups()``: ``{group: (values, pair index)}``), the dropped groups with why, and
    the kept cells per group (for scatter plots)."""
    from featcirc.evaluate.bootstrap import bootstrap_correlation

    rows, dropped, kept = [], [], {}
    for group, (xs, pair) in ref.items():
        if group not in cells:
            dropped.append(dict(method=method, group=group, n=0, why=f"{method} has no {group} cells"))
            continue
        ys = cells[group][0]
        keep = (xs != 0) | (ys != 0)
        x, y, p = xs[keep].numpy(), ys[keep].numpy(), pair[keep].numpy()
        n = int(keep.sum())
        if n < 2:
            why = ("no cell where either method is nonzero" if n == 0 else
                   "one cell where either method is nonzero: a correlation needs two")
            dropped.append(dict(method=method, group=group, n=n, why=why))
            continue
        pr = bootstrap_correlation(x, y, p, method="pearson", n_resamples=n_resamples, seed=seed)
        sr = bootstrap_correlation(x, y, p, method="spearman", n_resamples=n_resamples, seed=seed)
        if not math.isfinite(pr[0]):
            dropped.append(dict(method=method, group=group, n=n,
                                why="constant values (zero variance): the correlation is undefined"))
            continue
        kind, node_kind = group.split("/")
        rows.append([level, kind, node_kind, method, *pr, *sr, n, int(len(set(p.tolist())))])
        kept[group] = (x, y)
    return rows, dropped, kept


@dataclass(frozen=True)
class CompareSettings:
    """What :func:`compare` runs: the level, the methods (``exact`` is always added first), the attribution
    settings (``ig_steps``, ``max_nodes``), ``ablations`` (one or several; the curves use the first, the size
    table every one), the bootstrap resamples, ``--align``, ``mask`` (add the learned mask from RelP's scores to
    the size table), ``sizes`` (its grid; default :data:`DEFAULT_SIZES` up to ``max_nodes``) and the label of the
    evaluation pairs (``eval_split``; ``in-sample`` when :func:`compare` gets no ``eval_data``)."""

    level: str
    methods: Sequence[str]
    ig_steps: int = 10
    max_nodes: int = DEFAULT_MAX_NODES
    ablations: "str | Sequence[str]" = "mean"
    n_resamples: int = 1000
    align: str = "auto"
    mask: bool = False
    sizes: Optional[Sequence[int]] = None
    eval_split: str = "held-out"

    @classmethod
    def from_kwargs(cls, *, ablation: "str | Sequence[str] | None" = None, **kwargs) -> "CompareSettings":
        """The settings from :func:`compare`'s former keywords (``ablation`` for ``ablations``)."""
        if ablation is not None:
            kwargs["ablations"] = ablation
        return cls(**kwargs)


def compare(model, saes, dataset, out: Path, settings: Optional[CompareSettings] = None, *, model_name: str, ctx,
            eval_data=None, progress: bool = True, **kwargs) -> dict:
    """Run every method on ``dataset``, write the comparison into ``out`` (main process only) and
    return ``compare.json``'s content. ``settings``: a :class:`CompareSettings`, or its fields as keywords
    (``level=``, ``methods=``, ``ablation=``, ...). ``eval_data``: the pairs of the faithfulness curves
    (feature level; default ``dataset``, then labelled in-sample)."""
    if settings is None:
        settings = CompareSettings.from_kwargs(**kwargs)
    elif kwargs:
        raise TypeError(f"compare() got settings and keywords {', '.join(sorted(kwargs))}: give one or the other")
    level, ig_steps, max_nodes = settings.level, settings.ig_steps, settings.max_nodes
    n_resamples, mask, sizes, eval_split = settings.n_resamples, settings.mask, settings.sizes, settings.eval_split
    from featcirc.attribution import AttributionSettings, get_method
    from featcirc.io import jsonable, write_json

    from featcirc.commands.checks import InputError
    from featcirc.data.align import make_alignment, resolve_alignment

    methods = list(dict.fromkeys(["exact", *settings.methods]))
    ablation = settings.ablations
    ablations = [ablation] if isinstance(ablation, str) else list(ablation)
    ablation = ablations[0]
    if mask and "relp" not in methods:
        raise InputError("--mask learns the circuit from RelP's scores: add relp to --methods")
    try:
        choice = resolve_alignment(dataset, settings.align)
    except ValueError as e:
        raise InputError(str(e)) from None
    if choice.warning:
        logger.warning("%s", choice.warning)
    alignment = make_alignment(dataset, choice.mode)
    settings = AttributionSettings(level=level, ig_steps=ig_steps, max_nodes=max_nodes, pair_effects=True,
                                   progress=progress, aggregation="sum" if alignment.summed else "none")
    cells, costs, edge_costs, graphs = {}, {}, {}, {}
    for method in methods:
        logger.info("compare: %s", method)
        with_edges = level == "feature" and get_method(method).has_edges
        nodes, edges = ctx.attribute(model, dataset, method, saes, edges=with_edges, settings=settings,
                                     alignment=alignment)
        cells[method] = nodes.cell_groups()
        costs[method] = nodes.cost
        if edges is not None:
            edge_costs[method] = edges.cost
            nodes.pair_effects = None
            graphs[method] = (nodes, edges)
    phase("scored")
    ref = cells["exact"]
    corr_rows, dropped, scatter = [], [], {}
    for method in methods[1:]:
        rows, gone, kept = correlations(ref, cells[method], method, level, n_resamples=n_resamples)
        corr_rows += rows
        dropped += gone
        scatter[method] = kept

    curves, faith_rows, size_rows = {}, [], []
    if graphs:
        from featcirc.circuit import full_graph
        from featcirc.evaluate.curves import evaluate_curves

        if eval_data is None:
            eval_data, eval_split = dataset, "in-sample"
        ab = ctx.ablator(model, eval_data, level=level, saes=saes, ablation=ablation, progress=progress,
                         alignment=alignment)
        full = {}
        for method, (nodes, edges) in graphs.items():
            G = full[method] = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
            curves[method] = evaluate_curves(ab, G, n_resamples=n_resamples, area_n_max=max_nodes, progress=progress)
            faith_rows += [[method, *r] for r in curves[method].csv_rows()]
        grid = sorted({k for k in (sizes or DEFAULT_SIZES) if k <= max_nodes} | ({max_nodes} if not sizes else set()))
        seconds = {m: costs[m].seconds + edge_costs[m].seconds for m in graphs}
        size_rows = size_table(model, saes, dataset, eval_data, full, seconds, ablations=ablations, grid=grid,
                               mask=mask, level=level, ctx=ctx, alignment=alignment, max_nodes=max_nodes,
                               n_resamples=n_resamples, progress=progress, ablator=ab)
        del ab

    cost_header = ["method", "seconds", "forward_passes", "backward_passes"]
    if graphs:
        cost_header += ["edge_seconds", "total_seconds", "faithfulness_auc", "cpr", "cpr_lo", "cpr_hi",
                        "cmd", "cmd_lo", "cmd_hi"]
    cost_rows = []
    for method in methods:
        c, e = costs[method], edge_costs.get(method)
        row = [method, c.seconds, c.forward_passes, c.backward_passes]
        if graphs:
            rep = curves.get(method)
            nan = float("nan")
            row += [nan if e is None else e.seconds, c.seconds + (0.0 if e is None else e.seconds),
                    nan if rep is None else rep.area]
            for iv in ("cpr", "cmd"):
                row += [nan, nan, nan] if rep is None else [getattr(rep, iv).value, getattr(rep, iv).lo,
                                                            getattr(rep, iv).hi]
        cost_rows.append(row)

    result = dict(model=model_name, level=level, alignment=choice.to_json(alignment), data=dataset.source,
                  pairs=dataset.n_pairs,
                  pairs_dropped=dataset.dropped, methods=methods,
                  correlations=[dict(zip(CORR_HEADER, r)) for r in corr_rows],
                  correlation_intervals=f"95% percentile bootstrap over {n_resamples} pair resamples; cells "
                                        "where both methods are exactly 0 are left out",
                  dropped=dropped, cost=[dict(zip(cost_header, r)) for r in cost_rows])
    if graphs:
        result["faithfulness"] = dict(ablation=ablation, split=eval_split, data=eval_data.source,
                                      pairs=eval_data.n_pairs,
                                      methods={m: rep.to_json() for m, rep in curves.items()})
        result["sizes"] = dict(split=eval_split, pairs=eval_data.n_pairs, ablations=ablations, faithful=0.8,
                               rows=[dict(zip(SIZES_HEADER, r)) for r in size_rows],
                               note="smallest_f08: the smallest circuit of the size grid with F >= 0.8 on the "
                                    "held-out pairs (None: none); f50/f100/f200: F at that many nodes with 95% "
                                    "intervals; seconds: attribution (nodes + edges), plus the mask for pruner mask")
    if not ctx.is_main:
        return result

    from featcirc.export.plot import plot_faithfulness, plot_scatter

    write_csv(out / "correlations.csv", CORR_HEADER, corr_rows)
    for method, kept in scatter.items():
        for group, (x, y) in kept.items():
            kind, node_kind = group.split("/")
            plot_scatter(x, y, out / f"scatter_{kind}_{node_kind}_{method}.png",
                         xlabel="exact (activation patching)", ylabel=method,
                         title=f"{model_name} {level} {group}: exact vs {method}")
    if graphs:
        from featcirc.evaluate.curves import FaithfulnessReport

        write_csv(out / "faithfulness.csv", ["method", *FaithfulnessReport.CSV_HEADER], faith_rows)
        write_csv(out / "sizes.csv", SIZES_HEADER, size_rows)
        plot_faithfulness({m: [(p.n_nodes, p.faithfulness) for p in rep.curve_points()] for m, rep in curves.items()},
                          out / "faithfulness.png",
                          title=f"{model_name} {ablation} ablation, {eval_split} pairs ({eval_data.n_pairs})")
    write_csv(out / "cost.csv", cost_header, cost_rows)
    write_json(out / "compare.json", jsonable(result))
    return result


def size_table(model, saes, dataset, eval_data, graphs: dict, seconds: dict, *, ablations: Sequence[str],
               grid: Sequence[int], mask: bool, level: str, ctx, alignment, max_nodes: int, n_resamples: int,
               progress: bool, ablator=None) -> list[list]:
    """Rows of :data:`SIZES_HEADER`: every method's threshold pruning (and with ``mask`` the learned mask
    from RelP's graph, trained on ``dataset`` under each ablation) measured on ``eval_data`` at the
    ``grid`` sizes under every ablation. ``ablator``: one already built on ``eval_data`` (the curves'), reused
    for its ablation with the metric values it has cached."""
    import time

    from featcirc.circuit import circuit_from_nodes
    from featcirc.evaluate.curves import FAITHFUL, evaluate_curves
    from featcirc.evaluate.faithfulness import Ablator
    from featcirc.pruning.mask import MaskSettings, learn_masks

    rows = []

    def row(method: str, pruner: str, ablation: str, report, secs: float) -> list:
        at = {r.value: report.circuits[r.circuit] for r in report.requests if r.selector == "size"}
        best = report.smallest_faithful(FAITHFUL)
        out = [method, pruner, ablation, None if best is None else best.n_nodes]
        for k in (50, 100, 200):
            c = at.get(float(k))
            out += [None, None, None] if c is None else [c.faithfulness.value, c.faithfulness.lo, c.faithfulness.hi]
        return out + [secs]

    for ablation in ablations:
        ab = (ablator if ablator is not None and ablator.ablation == ablation else
              ctx.ablator(model, eval_data, level=level, saes=saes, ablation=ablation, progress=progress,
                          alignment=alignment))
        for method, G in graphs.items():
            rep = evaluate_curves(ab, G, sizes=grid, fractions=None, n_resamples=n_resamples, progress=progress)
            rows.append(row(method, "threshold", ablation, rep, seconds[method]))
        if mask:
            G = graphs["relp"]
            train = Ablator(model, dataset, level=level, saes=saes, sites=ab.splice.site_names, ablation=ablation,
                            progress=False, alignment=alignment)
            t0 = time.perf_counter()
            res = learn_masks(train, G, grid, MaskSettings(candidates=max_nodes), progress=progress)
            secs = time.perf_counter() - t0
            del train
            rep = evaluate_curves(ab, G, sizes=grid, fractions=None, n_resamples=n_resamples, progress=progress,
                                  select=lambda k: circuit_from_nodes(G, res.circuits[min(k, len(res.candidates))].nodes))
            rows.append(row("relp", f"mask ({ablation})", ablation, rep, seconds["relp"] + secs))
        del ab
    return rows


# ----------------------------------------------------------------------------- command line
def add_arguments(p) -> None:
    from featcirc.commands.checks import size_list
    from featcirc.attribution.methods import method_names
    from featcirc.vocabulary import ABLATIONS, ALIGN_CHOICES, FAITHFULNESS_ABLATIONS, LEVELS, default_first
    from featcirc.commands.common import (add_data_arguments, add_device_arguments, add_model_arguments,
                                          add_output_arguments)

    add_model_arguments(p, saes_help="SAE set for --level feature (tiny, a named set, a directory)")
    add_data_arguments(p, default_pairs=32)
    p.add_argument("--level", choices=default_first(LEVELS, "component"), default="component", help="node level")
    p.add_argument("--methods", default="exact,atp,relp,ig",
                   help=f"comma-separated, from: {', '.join(method_names())}; exact is always added")
    p.add_argument("--ig-steps", type=int, default=10, help="interpolation steps of ig")
    p.add_argument("--max-nodes", type=int, default=DEFAULT_MAX_NODES, help="edges are scored among the top N nodes (feature level)")
    p.add_argument("--eval-fraction", type=float, default=0.5,
                   help="share of the pairs held out for the faithfulness curves (feature level); the same "
                        "split at both levels, so component and feature level score the same pairs; 0: none")
    p.add_argument("--eval-pairs", type=int, default=None, metavar="N",
                   help="feature level: held-out pairs the faithfulness curves use (default: all of them)")
    p.add_argument("--align", choices=ALIGN_CHOICES, default=ALIGN_CHOICES[0],
                   help="how positions of pairs of different lengths or templates line up (as in discover)")
    p.add_argument("--ablation", default=",".join(FAITHFULNESS_ABLATIONS), metavar="LIST",
                   help=f"values of the nodes outside a circuit, comma-separated from {', '.join(ABLATIONS)}: "
                        "the faithfulness curves use the first, the size table (sizes.csv) every one")
    p.add_argument("--mask", action="store_true",
                   help="feature level: add the learned mask from RelP's scores (trained on the discovery pairs "
                        "under each --ablation) to the size table")
    p.add_argument("--sizes", type=size_list, default=None, metavar="LIST",
                   help="circuit sizes of the size table (default 25,50,100,...,3000 up to --max-nodes)")
    p.add_argument("--bootstrap", type=int, default=1000, help="pair resamples for the intervals")
    add_device_arguments(p)
    add_output_arguments(p)


def run(args, progress: bool) -> int:
    from featcirc.attribution.methods import parse_methods
    from featcirc.commands.checks import (BOOTSTRAP_WHY, IG_STEPS_WHY, MAX_BOOTSTRAP, MAX_IG_STEPS, InputError,
                                          check_device_name, check_dtype_name, check_float, check_int,
                                          check_model_name, check_sae_spec, check_saes_level)
    from featcirc.commands.common import load_model_and_saes, process_context, start_torch
    from featcirc.data import tokenize_pairs
    from featcirc.data.load import log_summary, run_pairs
    from featcirc.io import check_out_dir, staged_dir

    methods = parse_methods(args.methods)  # an unknown name fails before any work
    from featcirc.commands.checks import parse_ablations

    ablations = parse_ablations(args.ablation, "--ablation")
    sizes = sorted(set(args.sizes)) if args.sizes else None
    if sizes is not None and sizes[0] < 1:
        raise InputError(f"--sizes must be positive node counts, got {','.join(map(str, args.sizes))}")
    if args.mask and "relp" not in methods:
        raise InputError("--mask learns the circuit from RelP's scores: add relp to --methods")
    if args.mask and args.level != "feature":
        raise InputError("--mask prunes feature circuits: use --level feature")
    if args.level == "feature" and not args.saes:
        raise InputError("--level feature needs SAEs: pass --saes (e.g. --saes tiny)")
    check_saes_level(args.saes, args.level)
    check_int(args.pairs, "--pairs", what="prompt pairs")
    check_int(args.seed, "--seed", minimum=0, allow_none=False)
    check_int(args.batch_size, "--batch-size", allow_none=False)
    check_int(args.ig_steps, "--ig-steps", allow_none=False, maximum=MAX_IG_STEPS, why=IG_STEPS_WHY)
    check_int(args.max_nodes, "--max-nodes", allow_none=False)
    check_int(args.bootstrap, "--bootstrap", allow_none=False, maximum=MAX_BOOTSTRAP, why=BOOTSTRAP_WHY)
    check_int(args.eval_pairs, "--eval-pairs", what="held-out pairs")
    check_float(args.eval_fraction, "--eval-fraction", below=1.0, allow_none=False)
    check_device_name(args.device)
    check_dtype_name(args.dtype)
    check_sae_spec(args.saes if args.level == "feature" else None, check_model_name(args.model))
    check_out_dir(args.out, args.force)
    pairs = run_pairs(data=args.data, task=args.task, n=args.pairs, seed=args.seed, eval_fraction=args.eval_fraction)
    phase("checked")
    _, dtype = start_torch(args)
    with process_context(args.device) as ctx:
        model, saes = load_model_and_saes(args.model, args.saes, args.level, device=ctx.device, dtype=dtype)
        phase("loaded")
        dataset = tokenize_pairs(model, pairs.discovery, batch_size=args.batch_size, max_pairs=args.pairs,
                                 source=pairs.source + (", discovery pairs" if pairs.evaluation else ""))
        log_summary(dataset)
        eval_data = None
        if pairs.evaluation is not None and args.level == "feature":
            eval_data = tokenize_pairs(model, pairs.evaluation, batch_size=args.batch_size, max_pairs=args.eval_pairs,
                                       limit_option="--eval-pairs", source=f"{pairs.source}, held-out pairs")
            log_summary(eval_data)
        stage = staged_dir(args.out, force=args.force) if ctx.is_main else tempfile.TemporaryDirectory()
        with stage as out:
            settings = CompareSettings(level=args.level, methods=tuple(methods), ig_steps=args.ig_steps,
                                       max_nodes=args.max_nodes, ablations=tuple(ablations),
                                       n_resamples=args.bootstrap, align=args.align, mask=args.mask,
                                       sizes=None if sizes is None else tuple(sizes))
            res = compare(model, saes, dataset, Path(out), settings, model_name=args.model, ctx=ctx,
                          eval_data=eval_data, progress=progress and ctx.is_main)
            phase("written")
    if not ctx.is_main:
        return 0
    for r in res["correlations"]:
        print(f"{r['site_kind']:6s} {r['node_kind']:9s} {r['method']:5s} "
              f"pearson {_ci(r['pearson_r'], r['pearson_lo'], r['pearson_hi'])}  "
              f"spearman {_ci(r['spearman_r'], r['spearman_lo'], r['spearman_hi'])}  (n={r['n']})")
    for d in res["dropped"]:
        print(f"dropped {d['group']} for {d['method']}: {d['why']}")
    for r in res["cost"]:
        extra = ""
        if "cpr" in r and r["cpr"] == r["cpr"]:
            extra = f", CPR {_ci(r['cpr'], r['cpr_lo'], r['cpr_hi'])}, CMD {_ci(r['cmd'], r['cmd_lo'], r['cmd_hi'])}"
        print(f"{r['method']:5s} {r['seconds']:.2f} s, {r['forward_passes']} forward / "
              f"{r['backward_passes']} backward passes{extra}")
    for r in (res.get("sizes") or {}).get("rows", []):
        f = lambda k: _ci(r[f"f{k}"], r[f"f{k}_lo"], r[f"f{k}_hi"]) if r[f"f{k}"] is not None else "n/a"  # noqa: E731
        print(f"{r['method']:5s} {r['pruner']:>14s}, {r['ablation']} ablation: smallest F >= 0.8 "
              f"{r['smallest_f08'] if r['smallest_f08'] is not None else 'none'} nodes; F@50 {f(50)}, F@100 {f(100)}, "
              f"F@200 {f(200)}; {r['seconds']:.1f} s")
    print(f"-> {args.out}/")
    return 0


def _ci(value: float, lo: Optional[float], hi: Optional[float]) -> str:
    if value is None or value != value:
        return "n/a"
    if lo is None or hi is None or lo != lo or hi != hi:
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
