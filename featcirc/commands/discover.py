"""``featcirc discover``: score nodes and edges, prune, and write a complete run directory: scores,
the circuit in every export format, drawing, viewer, optional feature cards, the exported circuit's
faithfulness on held-out pairs under mean and patch ablation (``--ablations``), and ``summary.json``
(docs/design.md §9, §11).

Everything that needs no model is checked first; the run is built in a temporary directory beside
``--out`` and moved into place when complete (a failure or Ctrl-C leaves ``--out`` as it was). Under
``torchrun`` every process scores a shard of the pairs and only rank 0 writes (docs/design.md §13).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from featcirc.commands.common import RunConfig, phase
from featcirc.run_dir import CIRCUIT_HTML, CIRCUIT_JSON, CIRCUIT_PNG, SUMMARY_JSON, RunDir
from featcirc.run_files import RunRecord, Summary
from featcirc.vocabulary import FAITHFULNESS_ABLATIONS

logger = logging.getLogger("featcirc")

HELP = "score nodes and edges, prune, export, draw and view a circuit"


@dataclass
class CardOptions:
    """Feature cards for the circuit's features (``--cards``): corpus, tokens scanned, examples per feature."""

    corpus: Optional[str] = None
    max_tokens: Optional[int] = None
    top_k: Optional[int] = None


@dataclass
class ExportOptions:
    """``neuronpedia.json`` / ``graph_files/`` settings: slug, Neuronpedia model id, feature URL base."""

    slug: Optional[str] = None
    scan: Optional[str] = None
    feature_url: Optional[str] = None


def run_title(cfg: RunConfig, align: Optional[str] = None) -> str:
    """``model · method level circuit · task or data file name`` (no directories), and how positions are
    aligned when not from the start (docs/design.md §14)."""
    from featcirc.data.align import title_note

    return (f"{cfg.model} \u00b7 {cfg.method} {cfg.level} circuit \u00b7 {cfg.task or Path(cfg.data).name}"
            + title_note(align))


def exported_faithfulness(ab, G, C, *, split: str, source: str, n_resamples: int = 1000) -> dict:
    """``F(C)`` and completeness ``F(M \\ C)`` of the exported circuit ``C`` with bootstrap intervals
    over the pairs of ``ab`` (:func:`featcirc.evaluate.curves.evaluate_curves` with no curve)."""
    from featcirc.evaluate.curves import evaluate_curves
    from featcirc.evaluate.metrics import DEFINITIONS

    report = evaluate_curves(ab, G, thresholds=(), fractions=None, exported=C, n_resamples=n_resamples,
                             progress=False)
    exp = report.exported
    return dict(ablation=report.ablation, split=split, pairs=report.n_pairs, data=source,
                n_nodes=exp.n_nodes, faithfulness=exp.faithfulness.to_json(),
                completeness=exp.completeness.to_json(), m_full=report.m_full, m_empty=report.m_empty,
                intervals=f"{report.confidence:.0%} percentile bootstrap over {report.n_resamples} pair resamples",
                definitions=DEFINITIONS,
                curves="run `featcirc evaluate DIR` for curves, CPR/CMD and other ablations "
                       "(faithfulness-<ablation>.csv/.json/.png)")


@dataclass
class _Scored:
    """What the scoring step leaves for the later ones: the tokenized pairs, where faithfulness is
    measured, the alignment, the attribution settings and the scores."""

    data: Any
    eval_data: Any
    eval_split: str
    choice: Any
    alignment: Any
    split: Optional[dict]
    env: dict
    settings: Any = None
    nodes: Any = None
    edges: Any = None


@dataclass
class _Circuit:
    """The scored graph ``G``, the circuit ``C``, the learned mask's record (or None) and the example
    prompt, its tokens and metrics, and the title of the drawings."""

    G: Any
    C: Any
    mask: Optional[dict]
    prompt: Any
    tokens: Any
    example: Any
    title: str


def discover(cfg: RunConfig, out: "str | Path", *, pairs, ctx, model=None, saes=None, dtype: Any = None,
             cards: Optional[CardOptions] = None, export: Optional[ExportOptions] = None,
             ablations: "Sequence[str] | str" = FAITHFULNESS_ABLATIONS, progress: bool = True) -> dict:
    """Score nodes and edges, build and prune the circuit, and write the run into the existing
    directory ``out`` (staged by the caller). ``pairs``: :func:`featcirc.data.load.run_pairs`'s split;
    ``ctx``: the process context (:func:`featcirc.distributed.context`); only its main process
    writes cards, exports and the viewer. ``model`` / ``saes``: already loaded (else loaded here on
    ``ctx.device`` in ``dtype``). ``ablations``: those the exported circuit's faithfulness is measured
    under, on the same held-out pairs (``summary.json``'s ``faithfulness``: ablation -> record).
    Returns the summary."""
    import torch

    from featcirc.commands.common import load_model_and_saes

    out = Path(out)
    files = RunDir(out)
    cfg, ablations = _resolve(cfg, ablations)
    export = export or ExportOptions()
    torch.manual_seed(cfg.seed)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if model is None:
        model, saes = load_model_and_saes(cfg.model, cfg.saes, cfg.level, device=ctx.device, dtype=dtype)
        phase("loaded")
    seconds["load"] = time.perf_counter() - t0

    scored = _load_data(cfg, files, pairs, model, seconds)
    run_record = _write_run_json(cfg, files, scored, model, saes, ctx)
    _score(cfg, files, scored, pairs, model, saes, ctx, seconds, progress)
    circuit = _build_circuit(cfg, files, scored, model, saes, seconds, progress)
    faith = _measure(cfg, files, scored, circuit, model, saes, ctx, ablations, seconds, progress)
    summ = _summary(cfg, scored, circuit, faith, model, ctx, seconds)
    if not ctx.is_main:  # the other processes scored and evaluated their shards; rank 0 writes the rest
        return summ
    _write_outputs(cfg, out, files, scored, circuit, faith, summ, run_record, model, saes, cards, export, seconds,
                   progress)
    return summ


def _resolve(cfg: RunConfig, ablations: "Sequence[str] | str") -> tuple[RunConfig, tuple]:
    """The ablations measured (checked before any work; a learned mask's own and both others added) and
    ``cfg`` with ``--saes`` resolved (a relative path: found again from any directory)."""
    from dataclasses import replace

    from featcirc.commands.checks import parse_ablations
    from featcirc.saes.identity import resolve_sae_spec

    ablations = parse_ablations(ablations, "ablations")  # before any work (the command line checked --ablations)
    if cfg.prune == "mask":  # a learned mask is always shown under the ablation it was trained with, and both others
        ablations = tuple(dict.fromkeys([*ablations, cfg.mask_ablation, "patch", "mean"]))
    return replace(cfg, saes=resolve_sae_spec(cfg.saes)), ablations


def _load_data(cfg: RunConfig, files: RunDir, pairs, model, seconds: dict) -> _Scored:
    """The discovery pairs and the held-out ones tokenized (``eval_pairs.jsonl`` written), and the
    alignment of positions (docs/design.md §14)."""
    from featcirc.data import tokenize_pairs
    from featcirc.data.load import log_summary
    from featcirc.data.split import write_split

    t0 = time.perf_counter()
    data = tokenize_pairs(model, pairs.discovery, batch_size=cfg.batch_size, max_pairs=cfg.n,
                          source=f"{pairs.source}, discovery pairs")
    log_summary(data)
    used = [p for b in data.batches for p in b.pairs]
    split = None
    if pairs.evaluation is not None:
        split = write_split(files.path, pairs.evaluation, discovery=used, **pairs.split)
        eval_data = tokenize_pairs(model, pairs.evaluation, batch_size=cfg.batch_size, max_pairs=cfg.eval_pairs,
                                   limit_option="--eval-pairs", source=f"{pairs.split.get('source') or pairs.source}, held-out pairs "
                                          f"({split['eval_pairs']})")
        log_summary(eval_data)
        eval_split = "held-out"
    else:
        eval_data, eval_split = data, "in-sample"
        logger.warning("in-sample: no held-out pairs (--eval-fraction 0), so the exported circuit's faithfulness "
                       "is measured on the discovery pairs")
    seconds["data"] = time.perf_counter() - t0
    choice, alignment = choose_alignment(data, cfg)
    return _Scored(data=data, eval_data=eval_data, eval_split=eval_split, choice=choice, alignment=alignment,
                   split=split, env={})


def _write_run_json(cfg: RunConfig, files: RunDir, scored: _Scored, model, saes, ctx) -> RunRecord:
    """``run.json``: what was run, the split, the alignment, the environment, the SAEs' fit and the
    identity of the model and SAEs (docs/design.md §11). Returns what was written, which the later
    steps pass on (nothing reads it back)."""
    from featcirc.environment import environment
    from featcirc.io import jsonable
    from featcirc.saes.identity import run_identity  # what evaluate / features check (docs/design.md §11)
    from featcirc.saes.fit import fit_record  # what load_model_and_saes measured (docs/design.md §10b)

    scored.env = environment(ctx.device, model.cfg.dtype)
    record = RunRecord(config=jsonable(asdict(cfg)),
                       **jsonable(dict(split=scored.split, alignment=scored.choice.to_json(scored.alignment),
                                       environment=scored.env, sae_fit=fit_record(saes),
                                       identity=run_identity(cfg.model, cfg.saes, saes))))
    record.write(files.path)
    return record


def _score(cfg: RunConfig, files: RunDir, scored: _Scored, pairs, model, saes, ctx, seconds: dict,
           progress: bool) -> None:
    """Node and edge scores (within ``--max-memory`` when given), saved as ``nodes.pt`` / ``edges.pt``."""
    from featcirc.attribution import AttributionSettings

    budget = {}
    if cfg.max_memory is not None:
        scored.data, budget = _fit_memory(cfg, model, saes, scored.data, pairs.discovery,
                                          world=getattr(ctx, "world_size", 1), n_slots=scored.alignment.n_slots)
    scored.settings = AttributionSettings(level=cfg.level, aggregation="sum" if scored.alignment.summed else "none",
                                          ig_steps=cfg.ig_steps, max_nodes=cfg.max_nodes, progress=progress, **budget)
    nodes, edges = ctx.attribute(model, scored.data, cfg.method, saes, settings=scored.settings,
                                 alignment=scored.alignment)
    seconds["nodes"], seconds["edges"] = nodes.cost.seconds, edges.cost.seconds
    nodes.info["model"] = cfg.model
    nodes.save(files.nodes_pt)
    edges.save(files.edges_pt)
    scored.nodes, scored.edges = nodes, edges
    phase("scored")


def _build_circuit(cfg: RunConfig, files: RunDir, scored: _Scored, model, saes, seconds: dict,
                   progress: bool) -> _Circuit:
    """The scored graph and the circuit (:func:`choose_circuit`), the example prompt, and
    ``circuit.json`` / ``circuit.graphml`` / ``circuit.dot``."""
    from featcirc.circuit import full_graph
    from featcirc.commands.common import example_metrics, example_prompt
    from featcirc.export.formats import write_dot, write_graphml, write_json as write_graph_json

    t0 = time.perf_counter()
    data, alignment = scored.data, scored.alignment
    G = full_graph(scored.nodes, scored.edges, n_layers=model.cfg.n_layers)
    C, mask = choose_circuit(cfg, G, model=model, saes=saes, data=data, sites=scored.nodes.sites,
                             alignment=alignment, progress=progress)
    if mask is not None:
        seconds["mask"] = mask["seconds"]
    prompt, tokens = example_prompt(model, data, alignment)
    example = example_metrics(model, data)
    title = run_title(cfg, scored.choice.mode)
    write_graph_json(C, files.circuit_json)
    write_graphml(C, files.circuit_graphml)
    write_dot(C, files.circuit_dot, title=title)
    seconds["circuit"] = time.perf_counter() - t0
    return _Circuit(G=G, C=C, mask=mask, prompt=prompt, tokens=tokens, example=example, title=title)


def _measure(cfg: RunConfig, files: RunDir, scored: _Scored, circuit: _Circuit, model, saes, ctx, ablations,
             seconds: dict, progress: bool) -> dict:
    """The exported circuit's faithfulness under each ablation on the same held-out pairs (ablation ->
    record), and ``circuit.png`` (main process), which shows them."""
    from featcirc.export.plot import draw_circuit

    t0 = time.perf_counter()
    eval_data = scored.eval_data
    faith = {}  # ablation -> record, on the same held-out pairs; one Ablator at a time (patch keeps its runs)
    for ablation in ablations:
        ab = ctx.ablator(model, eval_data, level=cfg.level, saes=saes, sites=scored.nodes.sites,
                         ablation=ablation, progress=progress, alignment=scored.alignment)
        faith[ablation] = exported_faithfulness(ab, circuit.G, circuit.C, split=scored.eval_split,
                                                source=eval_data.source)
        del ab
    seconds["faithfulness"] = time.perf_counter() - t0  # all ablations together
    if ctx.is_main:
        t0 = time.perf_counter()
        draw_circuit(circuit.C, files.circuit_png, title=circuit.title, tokens=circuit.tokens, example=circuit.example,
                     faithfulness=faith)
        seconds["circuit"] += time.perf_counter() - t0
    return faith


def _summary(cfg: RunConfig, scored: _Scored, circuit: _Circuit, faith: dict, model, ctx, seconds: dict) -> dict:
    """``summary.json``'s content (docs/design.md §11); ``seconds`` is held, not copied, so the cards'
    time added later is in it."""
    from featcirc.circuit import summary
    from featcirc.commands.common import example_token_slots
    from featcirc.models.loading import model_info

    data, eval_data, settings, env = scored.data, scored.eval_data, scored.settings, scored.env
    nodes, edges, G, mask = scored.nodes, scored.edges, circuit.G, circuit.mask
    s = summary(circuit.C)
    return dict(
        model=cfg.model, model_info=model_info(model), saes=cfg.saes, method=cfg.method, level=cfg.level,
        aggregation=settings.aggregation, alignment=scored.choice.to_json(scored.alignment), data=data.source,
        pairs_used=data.n_pairs, pairs_dropped=data.dropped,
        eval_pairs=eval_data.n_pairs, eval_split=scored.eval_split,
        batching=dict(batch_size=max(b.clean.shape[0] for b in data.batches), max_rows=settings.max_rows,
                      record_bytes=settings.record_bytes, max_memory=cfg.max_memory),
        n_nodes=s["n_nodes"], n_features=s["n_features"], n_errors=s["n_errors"],
        n_components=s["n_components"], n_edges=s["n_edges"],
        n_nodes_scored=G.number_of_nodes() - 1, n_edges_scored=G.number_of_edges(),
        prune=dict(method=cfg.prune, node_threshold=cfg.node_threshold, top_k=cfg.top_k,
                   edge_threshold=cfg.edge_threshold,
                   **({} if mask is None else dict(mask_ablation=cfg.mask_ablation, mask=mask))),
        faithfulness=faith,
        seconds=seconds,
        forward_passes=nodes.cost.forward_passes + edges.cost.forward_passes,
        backward_passes=nodes.cost.backward_passes + edges.cost.backward_passes,
        metric_clean=nodes.metric_clean, metric_patch=nodes.metric_patch,
        metric_note=f"metric_clean / metric_patch: the mean of m = logit(clean answer) - logit(patch answer) over "
                    f"the {data.n_pairs} discovery pairs; the example prompt's own values are under 'example'",
        prompt=circuit.prompt, prompt_tokens=circuit.tokens,
        example_tokens=example_token_slots(model, data, scored.alignment),
        example=circuit.example, device=env["device"], dtype=env["dtype"],
        processes=getattr(ctx, "world_size", 1), environment=env,
    )


def _write_outputs(cfg: RunConfig, out: Path, files: RunDir, scored: _Scored, circuit: _Circuit, faith: dict,
                   summ: dict, run_record: RunRecord, model, saes, cards: Optional[CardOptions], export: ExportOptions,
                   seconds: dict, progress: bool) -> None:
    """What the main process writes last: feature cards (``--cards``), ``summary.json``,
    ``neuronpedia.json`` / ``graph_files/`` and the viewer, from what is in memory (``run_record``,
    the circuit, the summary): no file of the run is read back."""
    from featcirc.export.graph_files import export_run_graphs
    from featcirc.io import jsonable
    from featcirc.view import write_viewer

    cards_doc = None
    if cards is not None:
        t0 = time.perf_counter()
        cards_doc = _write_cards(out, model, saes, cards, cfg, run_record, circuit.C, progress)
        seconds["cards"] = time.perf_counter() - t0
    summary = Summary(fields=jsonable(summ))
    summary.write(files.summary_json)
    export_run_graphs(out, slug=export.slug, scan=export.scan, node_threshold=1.0,
                      feature_json_base_url=export.feature_url, run=run_record, summary=summary, circuit=circuit.C)
    write_viewer(circuit.G, files.circuit_html, circuit=circuit.C, tokens=circuit.tokens, cards=cards_doc,
                 title=circuit.title, example=circuit.example, faithfulness=faith)


def choose_circuit(cfg: RunConfig, G, *, model, saes, data, sites, alignment, progress: bool = True):
    """The circuit of the scored graph ``G`` by ``cfg.prune`` (docs/design.md §8): threshold pruning, or
    the learned mask of ``cfg.top_k`` nodes trained on the discovery pairs ``data`` under
    ``cfg.mask_ablation``. Returns ``(circuit, mask record or None)``; the record (cost, losses, whether
    the learned circuit beat thresholding on the discovery pairs) goes to ``summary.json``'s ``prune``."""
    from featcirc.circuit import PruneSettings, circuit_from_nodes, prune

    if cfg.prune == "threshold":
        return prune(G, PruneSettings(cfg.node_threshold, cfg.top_k, cfg.edge_threshold)), None
    from featcirc.evaluate.faithfulness import Ablator
    from featcirc.pruning.mask import MaskSettings, learn_masks

    # every process trains the same mask on all discovery pairs (deterministic), so no rank waits on another
    ab = Ablator(model, data, level=cfg.level, saes=saes, sites=sites, ablation=cfg.mask_ablation,
                 progress=False, alignment=alignment)
    result = learn_masks(ab, G, [cfg.top_k], MaskSettings(candidates=cfg.max_nodes), progress=progress)
    chosen = result.circuits[min(cfg.top_k, len(result.candidates))]
    C = circuit_from_nodes(G, chosen.nodes, edge_threshold=cfg.edge_threshold)
    C.graph.update(prune="mask", top_k=cfg.top_k, mask_ablation=cfg.mask_ablation, mask_learned=chosen.learned)
    logger.info("mask (%s ablation, %d candidates): %d nodes, |1 - F| on the discovery pairs %.3f (thresholding: %.3f)%s; "
                "%.1f s", cfg.mask_ablation, len(result.candidates), len(chosen.nodes), chosen.loss, chosen.warm_loss,
                "" if chosen.learned else ", so thresholding's circuit is kept", result.seconds)
    return C, result.to_json()


def choose_alignment(data, cfg):
    """``--align`` resolved for the discovery pairs (docs/design.md §14), its warning logged in one line."""
    from featcirc.commands.checks import InputError
    from featcirc.data.align import make_alignment, resolve_alignment

    try:
        choice = resolve_alignment(data, cfg.align, cfg.aggregation)
    except ValueError as e:
        raise InputError(str(e)) from None
    if choice.warning:
        logger.warning("%s", choice.warning)
    return choice, make_alignment(data, choice.mode)


def _fit_memory(cfg: RunConfig, model, saes, data, discovery, *, world: int, n_slots: int = 0):
    """Batch size, rows per backward and kept records that fit ``--max-memory`` per process
    (:func:`featcirc.memory.fit_to_budget`); the pairs re-batched when the batch size shrinks."""
    from featcirc.data import tokenize_pairs
    from featcirc.memory import fit_to_budget

    fit = fit_to_budget(cfg.max_memory, model.cfg, saes, batch_size=cfg.batch_size,
                        n_positions=max(data.max_len, n_slots),  # scores live on the alignment's slots (§14)
                        max_nodes=cfg.max_nodes, method=cfg.method, level=cfg.level, ig_steps=cfg.ig_steps,
                        aggregation=cfg.aggregation, n_pairs=-(-data.n_pairs // world))
    logger.info("--max-memory %s: batch size %d, %d rows per backward, records kept up to %d MiB; estimated peak %s",
                cfg.max_memory, fit.batch_size, fit.max_rows, fit.record_bytes >> 20, fit.estimate)
    if fit.batch_size < cfg.batch_size:
        data = tokenize_pairs(model, discovery, batch_size=fit.batch_size, max_pairs=cfg.n, source=data.source)
    return data, dict(max_rows=fit.max_rows, record_bytes=fit.record_bytes)


def _write_cards(out: Path, model, saes, opts: CardOptions, cfg: RunConfig, run_record: RunRecord, C,
                 progress: bool) -> Optional[dict]:
    """The circuit ``C``'s feature cards, written into ``out``; returns the ``cards.json`` document."""
    from featcirc.features.run import DEFAULT_MAX_TOKENS, run_cards

    if cfg.level != "feature":
        logger.warning("--cards: a component-level run has no SAE features; no cards written")
        return None
    _, doc = run_cards(out, model=model, saes=saes, run=run_record, circuit=C, corpus=opts.corpus,
                       max_tokens=opts.max_tokens or DEFAULT_MAX_TOKENS, top_k=opts.top_k, progress=progress)
    return doc


# ----------------------------------------------------------------------------- command line
def add_arguments(p) -> None:
    from featcirc.attribution.methods import method_names
    from featcirc.attribution import DEFAULT_MAX_NODES
    from featcirc.vocabulary import ABLATIONS, AGGREGATIONS, ALIGN_CHOICES, LEVELS, MASK_ABLATIONS, PRUNERS
    from featcirc.commands.common import (add_data_arguments, add_device_arguments, add_model_arguments,
                                          add_output_arguments)

    add_model_arguments(p)
    add_data_arguments(p, default_pairs=64, pairs_help="prompt pairs to discover the circuit on (with --task, "
                       "about N / (1 - eval fraction) are generated; --n is an alias, not usable under torchrun)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--eval-fraction", type=float, default=0.5,
                       help="share of the pairs held out (seeded, by case) to measure faithfulness on; 0: none")
    split.add_argument("--eval-data", help="a JSONL file of evaluation pairs instead of a held-out share (default: none)")
    p.add_argument("--eval-pairs", type=int, default=None, metavar="N",
                   help="measure the exported circuit on the first N usable held-out pairs (default: all; "
                        "eval_pairs.jsonl keeps all for `featcirc evaluate`)")
    p.add_argument("--method", choices=method_names(with_edges=True), default="relp", help="attribution method")
    p.add_argument("--level", choices=LEVELS, default=None,
                   help="(default: feature with --saes, component without)")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=AGGREGATIONS[0], help="sum scores over positions")
    p.add_argument("--align", choices=ALIGN_CHOICES, default=ALIGN_CHOICES[0],
                   help="how positions of pairs of different lengths or templates line up: by named role, from "
                        "the end (answer position), from the start, or summed; auto: role when every pair names "
                        "its positions, else start for one length, else end (with a warning)")
    p.add_argument("--ig-steps", type=int, default=10, help="interpolation steps of --method ig")
    p.add_argument("--max-nodes", type=int, default=DEFAULT_MAX_NODES, help="edges are scored among the top N nodes")
    p.add_argument("--node-threshold", type=float, default=None, help="keep nodes with |score| >= this (default: none; then --top-k 100)")
    p.add_argument("--top-k", type=int, default=None, help="keep the top k nodes (default 100 without a threshold)")
    p.add_argument("--edge-threshold", type=float, default=0.0, help="keep edges with |weight| >= this")
    p.add_argument("--prune", choices=PRUNERS, default=PRUNERS[0],
                   help="how the circuit is chosen: threshold (the top-k nodes by |score|) or mask (a mask over "
                        "the --max-nodes candidates learned on the discovery pairs, kept only when it fits them "
                        "better than threshold; docs/design.md §8)")
    p.add_argument("--mask-ablation", choices=MASK_ABLATIONS, default=MASK_ABLATIONS[0],
                   help="the ablation --prune mask is trained under: patch is the strict test (default: patch)")
    p.add_argument("--ablations", default=",".join(FAITHFULNESS_ABLATIONS), metavar="LIST",
                   help="ablations the exported circuit's faithfulness is measured under, comma-separated, from "
                        f"{', '.join(ABLATIONS)}: mean is the gentlest test, patch (each pair's own "
                        "counterfactual) the one MIB and most papers use")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget of the attribution per process, e.g. 8GB: picks the batch size and "
                        "rows that fit, and keeps the node pass's records for the edge pass only within it "
                        "(default: --batch-size as given, records kept up to 256 MiB)")
    add_device_arguments(p)
    p.add_argument("--cards", action="store_true", help="also write feature cards (cards.json) for the circuit")
    p.add_argument("--cards-corpus", default=None,
                   help="corpus of the cards: tiny, default or a text path (default: tiny for the tiny model)")
    p.add_argument("--cards-tokens", type=int, default=None, help="corpus tokens the cards scan (default 65536)")
    p.add_argument("--slug", default=None, help="graph slug of neuronpedia.json and graph_files/ "
                   "(default: model, data, method and a hash of the circuit)")
    p.add_argument("--scan", default=None, help="Neuronpedia model id (default: the model name)")
    p.add_argument("--feature-url", default=None, help="base URL of feature JSON files for Neuronpedia (default: none, the feature panel "
                   "reads graph_files/features/)")
    add_output_arguments(p)


def config_from_args(args) -> RunConfig:
    from featcirc.saes.identity import resolve_sae_spec

    level = args.level or ("feature" if args.saes else "component")
    top_k = args.top_k if (args.top_k is not None or args.node_threshold is not None) else 100
    return RunConfig(
        model=args.model, saes=resolve_sae_spec(args.saes), method=args.method, level=level, aggregation=args.aggregation,
        data=args.data, task=args.task, n=args.pairs, seed=args.seed, batch_size=args.batch_size,
        ig_steps=args.ig_steps, max_nodes=args.max_nodes, node_threshold=args.node_threshold, top_k=top_k,
        edge_threshold=args.edge_threshold, eval_fraction=None if args.eval_data else args.eval_fraction,
        eval_data=args.eval_data, eval_pairs=args.eval_pairs, max_memory=args.max_memory, device=args.device,
        dtype=args.dtype, align=args.align, prune=args.prune, mask_ablation=args.mask_ablation)


def run(args, progress: bool) -> int:
    from featcirc.commands.checks import check_export_names, check_int, parse_ablations
    from featcirc.commands.common import process_context, start_torch
    from featcirc.data.load import run_pairs
    from featcirc.io import check_out_dir, staged_dir

    cfg = config_from_args(args)
    ablations = parse_ablations(args.ablations, "--ablations")
    cfg.check()
    check_int(args.cards_tokens, "--cards-tokens", what="corpus tokens the feature cards scan")
    check_export_names(args.slug, args.scan)
    check_out_dir(args.out, args.force)
    pairs = run_pairs(data=cfg.data, task=cfg.task, n=cfg.n, seed=cfg.seed, eval_fraction=cfg.eval_fraction,
                      eval_data=cfg.eval_data)
    phase("checked")
    _, dtype = start_torch(args)
    cards = CardOptions(args.cards_corpus, args.cards_tokens) if args.cards else None
    export = ExportOptions(args.slug, args.scan, args.feature_url)
    with process_context(args.device) as ctx:
        stage = staged_dir(args.out, force=args.force) if ctx.is_main else tempfile.TemporaryDirectory()
        with stage as out:
            summ = discover(cfg, out, pairs=pairs, ctx=ctx, dtype=dtype, cards=cards, export=export,
                            ablations=ablations, progress=progress and ctx.is_main)
            phase("written")
    if ctx.is_main:
        print(result_line(summ, args.out))
    return 0


def result_line(summ: dict, out: "str | Path") -> str:
    """The line ``discover`` prints: the circuit, the pairs and the exported circuit's faithfulness
    under each ablation measured, every value with its ablation named, and its completeness under the
    first (the others are in ``summary.json``)."""
    from featcirc.run_files import faithfulness_by_ablation

    def fixed(x: float, digits: int) -> str:
        return f"{round(x, digits) + 0.0:.{digits}f}"  # + 0.0: -0.0001 is 0.00, not -0.00

    def value(iv) -> str:
        iv = iv if isinstance(iv, dict) else {}
        ci = (f" [{fixed(iv['lo'], 2)}, {fixed(iv['hi'], 2)}]" if iv.get("lo") is not None and iv.get("hi") is not None
              else "")
        return "n/a" if iv.get("value") is None else f"{fixed(iv['value'], 3)}{ci}"

    head = f"circuit: {summ['n_nodes']} nodes, {summ['n_edges']} edges from {summ['pairs_used']} pairs"
    tail = f" -> {out}/ ({CIRCUIT_HTML}, {CIRCUIT_PNG}, {CIRCUIT_JSON}, {SUMMARY_JSON}, ...)"
    by = faithfulness_by_ablation(summ.get("faithfulness")) or {}
    if not by:
        return head + "; faithfulness not measured" + tail
    records = [(r.get("ablation") or name, r) for name, r in by.items()]
    first = records[0][1]
    under = lambda name: f" under {name} ablation"  # noqa: E731
    faith = ", ".join(value(r.get("faithfulness")) + under(name) for name, r in records)
    return (f"{head}; on {first.get('pairs')} {first.get('split')} pairs: faithfulness {faith} (higher is better), "
            f"completeness {value(first.get('completeness'))}{under(records[0][0])} (lower is better){tail}")
