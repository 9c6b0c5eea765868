"""``featcirc evaluate``: faithfulness of a discovered run's circuits, on its held-out pairs, with
bootstrap intervals, MIB's CPR / CMD and the exported circuit's own faithfulness and completeness.

Pairs: ``--data`` / ``--task`` when given; else the run's held-out pairs (``DIR/eval_pairs.jsonl``,
written by ``discover``); else, with a warning and ``"in-sample"`` in every output, the pairs the
circuit was discovered on. Results are named by ablation (``faithfulness-<ablation>.csv / .json /
.png``), so evaluating another ablation never overwrites earlier results; ``--ablation mean,patch``
evaluates several in one run (one model load), each written as if run alone, and ends with the
smallest circuit with F >= 0.8 under each.
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from featcirc.commands.common import RunConfig, write_csv
from featcirc.io import write_json
from featcirc.run_dir import CIRCUIT_JSON, EVAL_PAIRS_JSONL, EVALUATION_EXTENSIONS, RunDir, evaluation_name
from featcirc.run_files import RunRecord, Summary
from featcirc.vocabulary import ABLATIONS

logger = logging.getLogger("featcirc")

EVAL_ABLATIONS = ABLATIONS
SPLIT_HELD_OUT, SPLIT_IN_SAMPLE, SPLIT_GIVEN = "held-out", "in-sample", "given"


def read_run_config(run_dir: Path) -> tuple[RunConfig, RunRecord]:
    """``run.json`` as a :class:`RunConfig` (unknown keys ignored, every field checked:
    :meth:`RunRecord.run_config`) and as its :class:`~featcirc.run_files.RunRecord`. ``summary.json``
    (which an evaluation updates: :class:`~featcirc.run_files.Summary`) and ``circuit.json``, when
    there, are read and checked too, so a damaged file fails here, before the model loads, not after
    the evaluation."""
    from featcirc.run_files import read_json_file

    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    record = RunRecord.read(run_dir)
    cfg = record.run_config(files.run_json)
    if files.summary_json.exists():
        Summary.read(run_dir)
    if files.circuit_json.exists():
        read_json_file(files.circuit_json, "circuit")
    return cfg, record


def evaluation_source(run_dir: Path, cfg: RunConfig, *, data: Optional[str] = None, task: Optional[str] = None,
                      n: Optional[int] = None, seed: Optional[int] = None) -> tuple[dict, str]:
    """Where the evaluation pairs come from: ``(load_data source dict, split label)``; the label is
    ``"given"`` (``data``/``task``), ``"held-out"`` (the run's ``eval_pairs.jsonl``: all of its
    pairs unless ``n``) or ``"in-sample"`` (the discovery pairs)."""
    src = dict(cfg.source)
    held_out = RunDir(run_dir).eval_pairs_jsonl
    if data is not None or task is not None:
        src.update(data=data, task=task)
        label = SPLIT_GIVEN
    elif held_out.exists():
        src.update(data=str(held_out), task=None, n=None)
        label = SPLIT_HELD_OUT
    else:
        label = SPLIT_IN_SAMPLE
    if n is not None:
        src["n"] = n
    if seed is not None:
        src["seed"] = seed
    if src.get("task") is not None and src.get("n") is None:
        src["n"] = 64
    return src, label


def output_paths(run_dir: Path, out: "str | Path | None", ablation: str,
                 sizes: Optional[Sequence[int]] = None) -> dict[str, Path]:
    """``faithfulness-<name>.{csv,json,png}`` (:func:`evaluation_name`) in ``out`` (a directory;
    default the run directory), or ``<out stem>.{csv,json,png}`` when ``out`` names a file (has a suffix)."""
    if out is not None and Path(out).suffix and not Path(out).is_dir():
        base = Path(out).with_suffix("")
        return {ext: base.with_name(f"{base.name}.{ext}") for ext in EVALUATION_EXTENSIONS}
    return RunDir(run_dir if out is None else out).evaluation(ablation, sizes)


def _check_request(ablation: str, sizes: Optional[Sequence[int]], fractions: Optional[Sequence[float]],
                   n_resamples: int) -> None:
    if ablation not in EVAL_ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {', '.join(EVAL_ABLATIONS)}")
    if sizes is not None and (not sizes or any(int(k) != k or k < 0 for k in sizes)):
        raise ValueError(f"--sizes must be non-negative whole numbers of nodes, e.g. 10,20,50; got {sizes}")
    if fractions is not None:
        if len(fractions) < 2 or any(not (0 < f <= 1) for f in fractions) or list(fractions) != sorted(set(fractions)):
            raise ValueError(f"--fractions must be at least two increasing fractions in (0, 1], got {fractions}")
    if n_resamples < 1:
        raise ValueError(f"--bootstrap must be >= 1 resamples, got {n_resamples}")


@dataclass(frozen=True)
class EvaluationRequest:
    """What one evaluation of a run asks for: the pairs (``data`` / ``task`` / ``n`` / ``seed``; default the
    run's held-out pairs), the ``ablation``, the circuits (``thresholds`` or ``sizes``; ``fractions`` of the
    graph for CPR / CMD), the bootstrap (``n_resamples``, ``bootstrap_seed``), where results go (``out``;
    default the run directory), ``saes_spec`` (the run's SAE set from another place, checked against the
    identity in ``run.json``), the ``device`` and ``dtype`` a model is loaded on when none is given,
    ``run_name`` (how messages name the run directory: a staged run's final path) and ``progress``."""

    data: Optional[str] = None
    task: Optional[str] = None
    n: Optional[int] = None
    seed: Optional[int] = None
    ablation: str = "mean"
    thresholds: Optional[Sequence[float]] = None
    sizes: Optional[Sequence[int]] = None
    fractions: Optional[Sequence[float]] = None
    out: "str | Path | None" = None
    n_resamples: int = 1000
    bootstrap_seed: int = 0
    saes_spec: Optional[str] = None
    device: str = "cpu"
    dtype: Any = None
    run_name: "str | Path | None" = None
    progress: bool = True


def _request(request: Optional[EvaluationRequest], kwargs: dict, caller: str) -> EvaluationRequest:
    """``request``, or one built from the former keyword arguments of ``caller``."""
    if request is None:
        return EvaluationRequest(**kwargs)
    if kwargs:
        raise TypeError(f"{caller}() got a request and keywords {', '.join(sorted(kwargs))}: give one or the other")
    return request


def plan_evaluation(run_dir: "str | Path", request: Optional[EvaluationRequest] = None, *,
                    saes: Optional[str] = None, **kwargs) -> dict:
    """Everything :func:`evaluate_run` checks before a model loads: the ``request``
    (an :class:`EvaluationRequest`, or its fields as keywords; ``saes``: its ``saes_spec``), ``run.json``,
    the identity of the run's model and SAEs (another copy of the run's SAE set:
    :func:`featcirc.saes.identity.checked_run_config`), the score files, the evaluation pairs (read
    and parsed) and the output paths. The plan holds the request under ``request``."""
    from featcirc.data import read_pairs
    from featcirc.data.load import check_pair_count
    from featcirc.evaluate.metrics import MIB_FRACTIONS

    if saes is not None:
        kwargs["saes_spec"] = saes
    req = _request(request, kwargs, "plan_evaluation")
    ablation, sizes, out = req.ablation, req.sizes, req.out
    run_dir = Path(run_dir)
    fractions = tuple(MIB_FRACTIONS if req.fractions is None else req.fractions)
    _check_request(ablation, sizes, fractions, req.n_resamples)
    check_pair_count(req.n)
    cfg, run = read_run_config(run_dir)
    from featcirc.saes.identity import checked_run_config

    cfg = checked_run_config(cfg, run, run_dir, saes=req.saes_spec)
    files = RunDir(run_dir)
    for path in (files.nodes_pt, files.edges_pt):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; rerun `featcirc discover` for this run")
    src, split = evaluation_source(run_dir, cfg, data=req.data, task=req.task, n=req.n, seed=req.seed)
    if src.get("data") is not None:
        read_pairs(src["data"])  # a bad file fails here, before the model loads
    paths = output_paths(run_dir, out, ablation, sizes)
    if paths["json"].exists() and paths["json"].is_dir():
        raise ValueError(f"{paths['json']} is a directory; give --out another name")
    from featcirc.io import check_writable_dir

    check_writable_dir(paths["json"].parent, option="--out" if out is not None else "the run directory",
                       out=out if out is not None else run_dir)  # before any work, read-only file systems included
    return dict(run_dir=run_dir, cfg=cfg, run=run, src=src, split=split, paths=paths, fractions=fractions,
                request=req)


def evaluate_run(run_dir: "str | Path", request: Optional[EvaluationRequest] = None, *, model=None, saes=None,
                 ctx=None, **kwargs):
    """Evaluate a run directory and write ``faithfulness-<ablation>.csv / .json / .png`` together
    (``faithfulness-<ablation>-sizes.*`` with ``sizes``; all or none: :func:`featcirc.io.atomic_paths`);
    with results in the run directory, its ``summary.json`` gets them under ``evaluations[<name>]``
    (:func:`evaluation_name`: ``mean``, ``mean-sizes``, ...).

    ``request``: an :class:`EvaluationRequest`, or its fields as keywords (``ablation=``, ``sizes=``, ...).
    ``model`` / ``saes``: already loaded (else loaded from ``run.json`` on the request's ``device`` in its
    ``dtype``); ``ctx``: the process context (several processes share the pairs; only the main one writes).
    Returns ``(report, paths)``: the :class:`~featcirc.evaluate.curves.FaithfulnessReport` (its
    ``info`` holds the data provenance) and the written paths by extension.
    """
    plan = plan_evaluation(run_dir, _request(request, kwargs, "evaluate_run"))
    return _evaluate(plan, model=model, saes=saes, ctx=ctx)


def _evaluate(plan: dict, *, model, saes, ctx):
    """The evaluation :func:`plan_evaluation` planned (``plan["request"]``), with ``model`` / ``saes``
    already loaded or None."""
    from featcirc.attribution.scores import EdgeScores, NodeScores
    from featcirc.circuit import full_graph
    from featcirc.commands.common import load_data, phase
    from featcirc.data import read_pairs, tokenize_pairs
    from featcirc.data.load import log_summary
    from featcirc.evaluate.curves import FAITHFUL, evaluate_curves
    from featcirc.evaluate.faithfulness import Ablator
    from featcirc.evaluate.figure import plot_report
    from featcirc.export.formats import read_json as read_circuit
    from featcirc.io import atomic_paths, jsonable

    run_dir, cfg, run, src, split, paths = (plan[k] for k in ("run_dir", "cfg", "run", "src", "split", "paths"))
    req: EvaluationRequest = plan["request"]
    ablation, sizes, progress, run_name = req.ablation, req.sizes, req.progress, req.run_name
    if model is None:
        model, saes = _load_run_model(plan, device=req.device, dtype=req.dtype)
    if split == SPLIT_HELD_OUT:  # named by the run, not by a staging directory's temporary name
        dataset = tokenize_pairs(model, read_pairs(src["data"]), batch_size=src.get("batch_size", 16),
                                 max_pairs=src.get("n"),
                                 source=f"{RunDir(run_name or run_dir).eval_pairs_jsonl} (held-out pairs of the run)")
        log_summary(dataset)
    else:
        dataset = load_data(model, src)
    if getattr(cfg, "prune", "threshold") == "mask":
        logger.info("the run's circuit (circuit.json, the 'exported' row) was chosen by the learned mask; the curves "
                    "prune the run's scores by threshold (`featcirc compare --mask` gives the mask's curve)")
    if split == SPLIT_IN_SAMPLE:
        logger.warning("in-sample: %s has no %s, so faithfulness is measured on the pairs the "
                       "circuit was discovered on (%s); discover with a held-out split for honest numbers",
                       run_dir, EVAL_PAIRS_JSONL, dataset.source)
    files = RunDir(run_dir)
    nodes = NodeScores.load(files.nodes_pt)
    edges = EdgeScores.load(files.edges_pt)
    G = full_graph(nodes, edges, n_layers=model.cfg.n_layers)
    exported = read_circuit(files.circuit_json) if files.circuit_json.exists() else None
    from featcirc.data.align import alignment_of  # node positions are the run's slots (docs/design.md §14)

    kwargs = dict(level=cfg.level, saes=saes, sites=nodes.sites, ablation=ablation, progress=progress,
                  alignment=alignment_of(nodes.info))
    ab = ctx.ablator(model, dataset, **kwargs) if ctx is not None else Ablator(model, dataset, **kwargs)
    report = evaluate_curves(ab, G, thresholds=req.thresholds, sizes=sizes, fractions=plan["fractions"],
                             exported=exported, edge_threshold=cfg.edge_threshold, n_resamples=req.n_resamples,
                             seed=req.bootstrap_seed,
                             area_n_max=cfg.max_nodes, progress=progress)
    report.info.update(
        model=cfg.model, method=cfg.method, level=cfg.level, data=dataset.source, split=split,
        in_sample=split == SPLIT_IN_SAMPLE, pairs_dropped=dataset.dropped,
        run_split=run.split, exported_circuit=None if exported is None else CIRCUIT_JSON)
    if ctx is not None and not ctx.is_main:
        return report, paths
    best = report.smallest_faithful()
    title = (f"{cfg.model} {cfg.method}, {split} pairs ({dataset.source})"
             + (f"; smallest with F >= {FAITHFUL}: {best.n_nodes} nodes" if best else
                f"; no circuit reaches F = {FAITHFUL}"))
    summary_path = files.summary_json
    in_run = paths["json"].parent.resolve() == run_dir.resolve() and summary_path.is_file()
    targets = [paths["csv"], paths["json"], paths["png"]] + ([summary_path] if in_run else [])
    with atomic_paths(*targets) as tmp:
        write_csv(tmp[0], report.CSV_HEADER, report.csv_rows())
        write_json(tmp[1], report.to_json())
        plot_report(report, tmp[2], title=title)
        if in_run:
            summary = Summary.read(run_dir).with_evaluation(evaluation_name(ablation, sizes),
                                                            jsonable(evaluation_entry(report, paths["json"].name)))
            summary.write(tmp[3])
    phase("written")
    return report, paths


def _load_run_model(plan: dict, *, device, dtype):
    """The run's model and SAEs (:func:`plan_evaluation`'s ``plan``) on ``device`` in ``dtype`` (default
    the run's), checked against the identity ``run.json`` records."""
    from featcirc.commands.common import load_model_and_saes, phase
    from featcirc.saes.identity import check_run_identity  # named sets: their files are known now

    cfg, run = plan["cfg"], plan["run"]
    if dtype is None:
        from featcirc.models.device import resolve_dtype

        dtype = resolve_dtype(run.dtype or "float32")
    model, saes = load_model_and_saes(cfg.model, cfg.saes, cfg.level, device=device, dtype=dtype)
    check_run_identity(run, model_name=cfg.model, saes_spec=cfg.saes, saes=saes, run_dir=plan["run_dir"])
    phase("loaded")
    return model, saes


def evaluation_entry(report, file_name: str) -> dict:
    """What ``summary.json`` records of an evaluation: where it is, on which pairs, the exported
    circuit's faithfulness and completeness, CPR / CMD and the smallest faithful circuit."""
    best = report.smallest_faithful()
    exp = report.exported
    from featcirc.evaluate.metrics import DEFINITIONS

    return dict(file=file_name, ablation=report.ablation, selector=report.main_selector,
                split=report.info.get("split"), pairs=report.n_pairs, data=report.info.get("data"),
                definitions=DEFINITIONS,
                exported=None if exp is None else dict(n_nodes=exp.n_nodes, faithfulness=exp.faithfulness.to_json(),
                                                       completeness=exp.completeness.to_json()),
                cpr=report.cpr.to_json(), cmd=report.cmd.to_json(),
                smallest_faithful=None if best is None else dict(n_nodes=best.n_nodes,
                                                                 faithfulness=best.faithfulness.to_json()))


def evaluate(run_dir: "str | Path", **kwargs) -> list:
    """:func:`evaluate_run`, returning the main curve's points (:class:`~featcirc.evaluate.faithfulness.CurvePoint`)."""
    report, _ = evaluate_run(run_dir, **kwargs)
    return report.curve_points()


def smallest_faithful_line(report) -> str:
    """``smallest circuit with F >= 0.8 under patch ablation: 120 nodes (F = ...)``, or that none of
    the circuits evaluated reaches it (:meth:`~featcirc.evaluate.curves.FaithfulnessReport.smallest_faithful`)."""
    from featcirc.evaluate.bootstrap import interval_text
    from featcirc.evaluate.curves import FAITHFUL

    best = report.smallest_faithful()
    if best is None:
        return f"no circuit evaluated reaches F >= {FAITHFUL} under {report.ablation} ablation"
    return (f"smallest circuit with F >= {FAITHFUL} under {report.ablation} ablation: {best.n_nodes} nodes "
            f"(F = {interval_text(best.faithfulness)})")


def format_report(report, paths: dict[str, Path]) -> str:
    """The lines ``featcirc evaluate`` prints for one ablation."""
    from featcirc.evaluate.bootstrap import interval_text

    info = report.info
    lines = [f"{info.get('split', '?')}: {report.n_pairs} pairs from {info.get('data', '?')}, "
             f"{report.ablation} ablation, {report.confidence:.0%} intervals from {report.n_resamples} "
             f"pair resamples; faithfulness: higher is better, completeness: lower is better"]
    groups: dict[int, list] = {}
    for r, c in report.points(report.main_selector):
        groups.setdefault(r.circuit, []).append(r)
    for idx, reqs in groups.items():
        c = report.circuits[idx]
        vals = [r.value for r in reqs]
        what = (f"threshold {min(vals):9.2e}" + (f"..{max(vals):.2e} ({len(vals)})" if len(vals) > 1 else "")
                if reqs[0].selector == "threshold" else f"top {int(reqs[0].k):5d}")
        lines.append(f"{what:28s} nodes {c.n_nodes:5d}  faithfulness {interval_text(c.faithfulness):24s} "
                     f"completeness {interval_text(c.completeness)}")
    lines.append(f"MIB over fractions of the {report.n_graph}-node graph: CPR {interval_text(report.cpr)} "
                 f"(higher is better), CMD {interval_text(report.cmd)} (lower is better)")
    exp = report.exported
    if exp is not None:
        lines.append(f"exported circuit (circuit.json): {exp.n_nodes} nodes, faithfulness "
                     f"{interval_text(exp.faithfulness)}, completeness {interval_text(exp.completeness)}")
    lines.append(smallest_faithful_line(report))
    if report.completeness_note:
        lines.append(f"note: {report.completeness_note}")
    lines.append(f"-> {paths['csv']}, {paths['json'].name}, {paths['png'].name}")
    return "\n".join(lines)


HELP = "faithfulness of a discovered circuit on held-out pairs (intervals, CPR/CMD)"


def _fraction_list(text: str) -> list[float]:
    import argparse

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, e.g. 0.01,0.1,1; got {text!r}") from None
    if len(vals) < 2 or any(not (0 < v <= 1) for v in vals) or vals != sorted(set(vals)):
        raise argparse.ArgumentTypeError(f"expected at least two increasing fractions in (0, 1]; got {text!r}")
    return vals


def add_arguments(p) -> None:
    from featcirc.commands.checks import size_list

    from featcirc.commands.common import add_data_arguments, add_device_arguments, add_fit_argument

    p.add_argument("dir", help="a run directory made by `featcirc discover`")
    add_data_arguments(p, required=False, default_pairs=None,
                       pairs_help="evaluation pairs to use (default: all of the run's held-out pairs; 64 with "
                                  "--task; --n is an alias, not usable under torchrun)")
    p.add_argument("--ablation", default="mean", metavar="LIST",
                   help="value of the nodes outside the circuit: mean / zero / resample over the patch "
                        "prompts, or patch (each pair's own patch prompt); several, comma-separated "
                        "(mean,patch), are evaluated in one run, each into its own files")
    p.add_argument("--sizes", type=size_list, default=None,
                   help="circuit sizes (top-k nodes), e.g. 10,20,50,100, instead of node thresholds (default: none, "
                        "a log-spaced grid of node thresholds)")
    p.add_argument("--fractions", type=_fraction_list, default=None,
                   help="fractions of the graph for CPR/CMD (default MIB's 0.001,...,0.5,1)")
    p.add_argument("--bootstrap", type=int, default=1000, help="pair resamples for the intervals")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the pair resamples")
    add_device_arguments(p, dtype_default=None)
    add_fit_argument(p)
    p.add_argument("--saes", default=None, metavar="SET",
                   help="the run's SAE set from another place (a copy of the same SAEs: checked against the "
                        "identity in run.json; default: the set the run recorded)")
    p.add_argument("--out", default=None,
                   help="directory for faithfulness-<ablation>.* (default DIR), or a file name whose stem "
                        "names the .csv/.json/.png")


def run(args, progress: bool) -> int:
    from featcirc.commands.checks import (BOOTSTRAP_WHY, MAX_BOOTSTRAP, InputError, check_device_name,
                                          check_dtype_name, check_int, parse_ablations)
    from featcirc.commands.common import phase, process_context, start_torch

    ablations = parse_ablations(args.ablation, "--ablation")
    check_int(args.batch_size, "--batch-size", allow_none=False)
    check_int(args.seed, "--seed", minimum=0, allow_none=False)
    check_int(args.bootstrap_seed, "--bootstrap-seed", minimum=0, allow_none=False)
    check_int(args.bootstrap, "--bootstrap", allow_none=False, maximum=MAX_BOOTSTRAP, why=BOOTSTRAP_WHY)
    check_device_name(args.device)
    check_dtype_name(args.dtype)
    if len(ablations) > 1 and args.out is not None and Path(args.out).suffix and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} names one set of files, but --ablation {args.ablation} asks for "
                         f"{len(ablations)} evaluations; give a directory (each writes faithfulness-<ablation>.*)")
    base = EvaluationRequest(data=args.data, task=args.task, n=args.pairs,
                             seed=args.seed if (args.data or args.task) else None,
                             sizes=args.sizes, fractions=args.fractions, out=args.out, n_resamples=args.bootstrap,
                             bootstrap_seed=args.bootstrap_seed, saes_spec=getattr(args, "saes", None))
    plans = []  # every ablation's checks before the model loads
    for ablation in ablations:
        plan = plan_evaluation(args.dir, replace(base, ablation=ablation))
        plan["src"]["batch_size"] = args.batch_size
        plans.append(plan)
    phase("checked")
    start_torch(args)
    from featcirc.models.device import resolve_dtype

    dtype = resolve_dtype(args.dtype or plans[0]["run"].dtype or "float32")  # default: the run's dtype
    reports = []
    with process_context(args.device) as ctx:
        model, saes = _load_run_model(plans[0], device=ctx.device, dtype=dtype)
        for plan in plans:
            plan["request"] = replace(plan["request"], device=ctx.device, dtype=dtype, progress=progress and ctx.is_main)
            report, paths = _evaluate(plan, model=model, saes=saes, ctx=ctx)
            reports.append(report)
            if ctx.is_main:
                print(format_report(report, paths), flush=True)
    if ctx.is_main and len(reports) > 1:
        print("\n".join(smallest_faithful_line(r) for r in reports))
    return 0
