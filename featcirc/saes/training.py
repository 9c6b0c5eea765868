"""Train one SAE per site with SAELens, all from one shared model forward, and measure them.

``train_saes(model, sites, corpus, out, settings)``:

1. checks the sites against the model and the output directory (before any long work);
2. splits the corpus (seeded) into training and held-out documents and cuts both into token
   windows (:func:`featcirc.data.corpus.token_windows`, BOS first), given to SAELens as a local
   pre-tokenized ``datasets.Dataset`` (no hub);
3. trains with SAELens's ``MultiSAETrainingRunner``: ONE model forward per batch of windows feeds
   the activations of every site to its own SAE (own optimizer, schedule and norm scaling);
   BOS positions (the attention sink, with outlying norms) are excluded from training;
4. measures every SAE on held-out windows (:func:`evaluate_saes`) and writes the card
   (``README.md`` + ``metrics.json``);
5. everything is written into a temporary sibling ``.<name>.partial-<pid>-*`` and renamed onto
   ``out`` at the very end (:func:`featcirc.io.staged_dir`), so a killed run leaves nothing that
   ``--saes`` accepts, and its partial directory is removed by the next run into the same ``out``.
   SAELens's own SIGINT / SIGTERM handlers are kept out (:func:`_keep_signal_handlers`).

Architecture: **TopK** (SAELens ``TopKTrainingSAE``): every token has exactly ``k`` active
features, so the L0 target is met by construction, the saved SAE computes exactly the function
that was trained (BatchTopK saves a JumpReLU with an estimated threshold, whose per-token L0 then
differs from training), and featcirc's bundled tiny SAEs are TopK too. The decoder is
normalised at use (``rescale_acts_by_decoder_norm``) and the AuxK loss revives dead features.

Transcoders (``train_transcoders``, ``featcirc train-saes --transcoders``; docs/design.md §4b): one per
``tc.L`` site, reading block L's MLP input (ln2's output) and writing its output
(``blocks.L.hook_mlp_out``). SAELens 6 has no transcoder training (and no TopK transcoder), so they are
trained by featcirc's own short loop on the same windows, split, schedule, evaluation, card and staging:
SAELens ``Transcoder`` (ReLU) with an L1 penalty on ``f_i |W_dec,i|``, which saves exactly the trained
function (TopK would have to be saved as an approximating JumpReLU).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

from featcirc.io import write_json, write_text
from featcirc.saes.train_settings import DEFAULT_CONTEXT, MODEL_DEFAULTS, SAE_DTYPES, TrainSettings, default_settings
from featcirc.sites import Site, all_sites, sort_sites

if TYPE_CHECKING:  # torch and the corpus module (which imports torch) load only when training starts
    import torch

    from featcirc.data.corpus import Corpus

__all__ = ["DEFAULT_CONTEXT", "MEASURED_ELSEWHERE", "MODEL_DEFAULTS", "SAE_DTYPES", "TrainSettings", "check_output_dir",
           "default_settings", "evaluate_saes", "expectations", "parse_sites", "parse_transcoder_sites", "train_saes",
           "train_transcoders", "write_card"]

logger = logging.getLogger(__name__)


def parse_sites(model: Any, spec: "str | Iterable[str]") -> list[Site]:
    """Sites from ``"all-resid"`` (embed and every ``resid.L``), ``"all"`` (every site) or a
    comma-separated list of site names, checked against ``model``; in forward order."""
    n = int(model.cfg.n_layers)
    if isinstance(spec, str):
        text = spec.strip()
        if text == "all-resid":
            return all_sites(n, kinds=("embed", "resid"))
        if text == "all":
            return all_sites(n)
        names = [s.strip() for s in text.split(",") if s.strip()]
    else:
        names = list(spec)
    if not names:
        raise ValueError("no sites given: write e.g. --sites embed,resid.0,resid.1 or --sites all-resid")
    sites = []
    for name in names:
        site = Site.parse(name)
        if site.layer >= n:
            raise ValueError(f"site {site.name} is beyond the model: it has {n} layers (0..{n - 1})")
        if site.hook_name not in model.hook_dict:
            raise ValueError(f"model has no hook {site.hook_name} for site {site.name}")
        sites.append(site)
    if len(set(sites)) != len(sites):
        raise ValueError(f"a site is listed twice in {names}")
    return sort_sites(sites)


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, pad_id: Optional[int] = None) -> tuple[float, int]:
    """Summed next-token cross-entropy over every position but the last (targets that are
    ``pad_id`` excluded), and the number of predictions summed."""
    import torch

    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -lp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    valid = torch.ones_like(nll, dtype=torch.bool) if pad_id is None else tokens[:, 1:] != pad_id
    return float(nll[valid].sum()), int(valid.sum())


def evaluate_saes(model: Any, saes: Mapping[str, Any], windows: torch.Tensor, *,
                  ce_windows: Optional[int] = None, batch_windows: int = 4, pad_id: Optional[int] = None,
                  progress: bool = False) -> dict[str, dict[str, float]]:
    """Per site (``saes`` keyed by site name; any object with ``encode``/``decode``), on ``windows``
    (``[N, T]``, BOS first; BOS and ``pad_id`` positions are never counted nor replaced):

    - ``l0``: mean number of active features per token; ``dead_fraction``: features never active;
    - ``fve``: fraction of variance explained, ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2``; at a
      transcoder site ``tc.L`` ``x`` is the MLP's output and ``x_hat = dec(enc(mlp_in))``
      (:mod:`featcirc.models.mlp_io`), so FVE is that of the MLP's output;
    - ``ce_clean``, ``ce_sae``, ``ce_zero``: next-token CE of the model, with the site replaced by
      the SAE reconstruction (no error term), and with the site set to zero, on the first
      ``ce_windows`` windows (default all); ``ce_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)``.

    Each CE run restarts the model at the block of the site (``start_at_layer``) from the clean
    residual stream, so it costs only the blocks from that site on. At a transcoder site the MLP's
    output is replaced by the transcoder's output from the MLP's input of the same forward.
    """
    import torch

    with torch.no_grad():
        return _evaluate_saes(model, saes, windows, ce_windows=ce_windows, batch_windows=batch_windows,
                              pad_id=pad_id, progress=progress)


def _evaluate_saes(model: Any, saes: Mapping[str, Any], windows: "torch.Tensor", *, ce_windows: Optional[int],
                   batch_windows: int, pad_id: Optional[int], progress: bool) -> dict[str, dict[str, float]]:
    import torch
    from tqdm.auto import tqdm

    from featcirc.models.mlp_io import capturing_mlp_inputs, recording_mlp_io

    sites = sort_sites(saes)
    sae_of = {s: saes[s.name] if s.name in saes else saes[s.hook_name] for s in sites}
    device = next(model.parameters()).device
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)

    def keep_mask(toks: torch.Tensor) -> torch.Tensor:
        keep = torch.ones_like(toks, dtype=torch.bool)
        keep[:, 0] = False
        if bos is not None:
            keep &= toks != bos
        return keep & (toks != pad_id) if pad_id is not None else keep

    def recon(site: Site, x: torch.Tensor, x_in: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and reconstruction of ``x`` (``[N, d]``, or ``[N, H, d_head]`` at a ``z`` site: the SAE
        reads the heads flattened, and the reconstruction comes back in ``x``'s shape); a transcoder
        encodes ``x_in`` (the MLP's input) instead of ``x``."""
        sae = sae_of[site]
        dtype = getattr(getattr(sae, "W_dec", None), "dtype", x.dtype)
        src = x if x_in is None else x_in
        f = sae.encode(src.reshape(src.shape[0], -1).to(dtype))
        return f, sae.decode(f).to(x.dtype).reshape(x.shape)

    # L0, FVE, dead features: one forward up to the last site's block per batch
    hooks = {s.hook_name for s in sites if not s.is_transcoder}
    tc_layers = sorted({s.layer for s in sites if s.is_transcoder})
    stop = max(s.block for s in sites) + 1
    acc = {s: {"sq_err": 0.0, "n": 0, "sum": 0.0, "sum_sq": 0.0, "l0": 0.0, "alive": None} for s in sites}
    for b in tqdm(range(0, len(windows), batch_windows), desc="SAE metrics", disable=not progress, leave=False):
        toks = windows[b:b + batch_windows].to(device)
        keep = keep_mask(toks)
        with recording_mlp_io(model, tc_layers) as mlp_io:
            _, cache = model.run_with_cache(toks, names_filter=lambda h: h in hooks, stop_at_layer=stop,
                                            prepend_bos=False)
        for s in sites:
            if s.is_transcoder:
                x_in, x = (t[keep].float() for t in mlp_io[s.layer])
                f, x_hat = recon(s, x, x_in)
            else:
                x = cache[s.hook_name][keep].float()
                f, x_hat = recon(s, x)
            a = acc[s]
            a["sq_err"] += float(((x - x_hat.float()) ** 2).sum())
            a["n"] += x.shape[0]
            a["sum"] = a["sum"] + x.sum(0)
            a["sum_sq"] += float((x ** 2).sum())
            active = f != 0
            a["l0"] += float(active.sum())
            a["alive"] = active.any(0) if a["alive"] is None else a["alive"] | active.any(0)
    results: dict[str, dict[str, float]] = {}
    for s in sites:
        a = acc[s]
        if a["n"] == 0:
            raise ValueError("no held-out tokens to evaluate the SAEs on (every position is BOS)")
        total_var = a["sum_sq"] - float((a["sum"] ** 2).sum()) / a["n"]
        results[s.name] = {"eval_tokens": a["n"], "l0": a["l0"] / a["n"], "fve": 1.0 - a["sq_err"] / total_var,
                           "dead_fraction": 1.0 - float(a["alive"].float().mean())}

    # CE: clean, SAE spliced, zero-ablated, per site
    ce_n = len(windows) if ce_windows is None else min(ce_windows, len(windows))
    if ce_n == 0:
        return results
    starts = {f"blocks.{s.block}.hook_resid_pre" for s in sites}
    tot: dict[str, list[float]] = {"clean": [0.0, 0]}
    for b in tqdm(range(0, ce_n, batch_windows), desc="CE with SAEs", disable=not progress, leave=False):
        toks = windows[b:min(b + batch_windows, ce_n)].to(device)
        keep = keep_mask(toks)
        logits, cache = model.run_with_cache(toks, names_filter=lambda h: h in starts, prepend_bos=False)
        t, c = _next_token_ce(logits, toks, pad_id)
        tot["clean"][0] += t
        tot["clean"][1] += c
        del logits
        for s in sites:
            for kind in ("sae", "zero"):
                mlp_in: dict[int, torch.Tensor] = {}

                def patch(act: torch.Tensor, hook: Any, s: Site = s, kind: str = kind,
                          mlp_in: dict = mlp_in) -> torch.Tensor:
                    new = act.clone()
                    if kind == "zero":
                        new[keep] = 0.0
                    else:
                        new[keep] = recon(s, act[keep], mlp_in[s.layer][keep] if s.is_transcoder else None)[1]
                    return new

                with model.hooks(fwd_hooks=[(s.hook_name, patch)]), \
                        capturing_mlp_inputs(model, [s.layer] if s.is_transcoder else [], mlp_in):
                    out = model(cache[f"blocks.{s.block}.hook_resid_pre"], start_at_layer=s.block,
                                return_type="logits")
                t, c = _next_token_ce(out, toks, pad_id)
                row = tot.setdefault(f"{kind}:{s.name}", [0.0, 0])
                row[0] += t
                row[1] += c
    clean = tot["clean"][0] / tot["clean"][1]
    for s in sites:
        sae_ce = tot[f"sae:{s.name}"][0] / tot[f"sae:{s.name}"][1]
        zero_ce = tot[f"zero:{s.name}"][0] / tot[f"zero:{s.name}"][1]
        results[s.name].update(
            ce_eval_tokens=int(tot["clean"][1]), ce_clean=clean, ce_sae=sae_ce, ce_zero=zero_ce,
            ce_recovered=(zero_ce - sae_ce) / (zero_ce - clean) if zero_ce != clean else float("nan"))
    return results


# ---------------------------------------------------------------------------------------------
# the card
# ---------------------------------------------------------------------------------------------
CE_RECOVERED_MIN_GAP = 0.05
"""Below this gap (nats) between zero-ablated and clean CE, CE recovered is a ratio of two small
numbers and the card marks it as not telling."""

MEASURED_ELSEWHERE: dict[str, str] = {
    "tiny": ("For sets trained with the defaults of `--model tiny`, the faithfulness of the SVA circuit over "
             "them, against the bundled `--saes tiny`, is measured by `bash experiments/tiny_saes_faithfulness.sh` "
             "(mean and patch ablation, held-out pairs; README, \"SAEs trained here\")."),
}
"""Where the measured expectations of a model's default sets live, by lower-case model name (the card
points there rather than copying numbers that hold only for those settings)."""

GENERIC_EXPECTATION = (
    "FVE and CE recovered say how well each SAE reconstructs its own site, not whether a small circuit "
    "over its features is faithful: short training gives SAEs that reconstruct well but spread a "
    "behaviour over many features, so a circuit of a fixed size explains less of it. Check a circuit's "
    "faithfulness (`summary.json` of `featcirc discover`, or `featcirc evaluate DIR --sizes ...`) and, "
    "where it is low, train longer (`--tokens`) or keep larger circuits (`featcirc discover --top-k`).")


def expectations(model_name: str, transcoders: bool = False) -> str:
    """The card's "what to expect" text for a set of ``model_name`` (of transcoders: the generic text,
    about transcoders; the measurements :data:`MEASURED_ELSEWHERE` points to are of SAE sets)."""
    if transcoders:
        return (GENERIC_EXPECTATION.replace("each SAE reconstructs its own site", "each transcoder reconstructs "
                                            "its MLP's output")
                .replace("short training gives SAEs", "short training gives transcoders"))
    key = str(model_name).strip().lower()
    return GENERIC_EXPECTATION + (" " + MEASURED_ELSEWHERE[key] if key in MEASURED_ELSEWHERE else "")


def _ce_recovered_cell(m: Mapping[str, Any]) -> str:
    v = m.get("ce_recovered", float("nan"))
    gap = m.get("ce_zero", float("nan")) - m.get("ce_clean", float("nan"))
    return f"{v:.3f}" + (" (†)" if gap < CE_RECOVERED_MIN_GAP else "")


def write_card(directory: Path, info: Mapping[str, Any]) -> None:
    """``metrics.json`` (everything in ``info``) and ``README.md`` (a table per SAE and what to
    expect of the set) in ``directory``."""
    write_json(directory / "metrics.json", info)
    s = info["settings"]
    rows = []
    flat = False
    for site, m in info["saes"].items():
        flat |= m.get("ce_zero", float("nan")) - m.get("ce_clean", float("nan")) < CE_RECOVERED_MIN_GAP
        rows.append(f"| {site} | {m['tokens_seen']:,} | {m['l0']:.1f} | {m['fve']:.3f} | "
                    f"{_ce_recovered_cell(m)} | {m.get('ce_sae', float('nan')):.3f} | "
                    f"{m.get('ce_zero', float('nan')):.3f} | {m['dead_fraction']:.3f} |")
    first = next(iter(info["saes"].values()))
    tc = info.get("architecture") == "transcoder"
    what = "transcoder" if tc else "SAE"
    if tc:
        head = [f"# Transcoders for {info['model']}", "",
                f"{len(info['saes'])} ReLU transcoders (SAELens `Transcoder`, width {s['width']}, L1 coefficient "
                f"{s['l1_coefficient']:g} on f_i |W_dec,i| over activations scaled to mean norm sqrt(d)), one per "
                "layer: `tc.L` reads the MLP's input (ln2's output, `blocks.L.hook_mlp_in`) and writes its output "
                "(`blocks.L.hook_mlp_out`); trained by `featcirc train-saes --transcoders` (featcirc's own loop: "
                "SAELens 6 trains no transcoders) with one shared model forward, up to the last layer, per "
                f"{s['store_batch_prompts']} windows.", ""]
        regulariser = (f"L1 warmed up over the first {TRANSCODER_L1_WARMUP_FRACTION:.0%} of the steps, "
                       "Adam, gradient norm clipped at 1")
    else:
        head = [f"# SAEs for {info['model']}", "",
                f"{len(info['saes'])} TopK SAEs (SAELens `TopKTrainingSAE`, width {s['width']}, k = {s['k']}), one "
                "per site, trained by `featcirc train-saes` with one shared model forward per batch.", ""]
        regulariser = f"AuxK {s['aux_loss_coefficient']:.4g}"
    lines = [
        *head,
        "```bash", info["command"], "```", "",
        f"- corpus: `{info['corpus']['name']}` (sha256 `{info['corpus']['sha256']}`), "
        f"{info['corpus']['train_documents']:,} training / {info['corpus']['heldout_documents']:,} held-out "
        f"documents; {info['corpus']['train_windows']:,} training windows of {s['context_size']} tokens "
        f"({'packed' if s.get('pack', True) else 'one document per window'})",
        f"- training: {s['tokens']:,} tokens per {what} ({s['steps']:,} steps of {s['batch_tokens']} tokens), "
        f"lr {s['lr']} (warm-up {s['warmup_fraction']:.0%}, linear decay over the last "
        f"{s['decay_fraction']:.0%}), {regulariser}, seed {s['seed']}, BOS positions excluded",
        f"- wall time: {info['train_seconds']:.0f} s training, {info['eval_seconds']:.0f} s evaluation "
        f"({info['device']}, {info['threads']} torch thread(s))",
        f"- held-out evaluation: L0, FVE and dead fraction on {first['eval_tokens']:,} tokens; CE on "
        f"{first.get('ce_eval_tokens', 0):,} next-token predictions (clean CE "
        f"{first.get('ce_clean', float('nan')):.3f}); BOS positions neither counted nor replaced", "",
        *(["FVE = 1 - sum |y - y_hat|^2 / sum |y - mean y|^2 with y the MLP's output and y_hat = dec(enc(MLP "
            "input)). CE recovered = (CE_zero - CE_tc) / (CE_zero - CE_clean): CE with the transcoder's output "
            "in place of that one MLP's output (no error term) against the clean model and the MLP's output "
            "set to zero."] if tc else
          ["FVE = 1 - sum |x - x_hat|^2 / sum |x - mean x|^2. CE recovered = (CE_zero - CE_sae) / (CE_zero - "
           "CE_clean): CE with the SAE reconstruction spliced in at that one site (no error term) against "
           "the clean model and the site set to zero."]), "",
        f"| site | tokens seen | L0 | FVE | CE recovered | CE with {what} | CE zero-ablated | dead fraction |",
        "|---|---|---|---|---|---|---|---|",
        *rows, "",
        *([f"(†) Zero-ablating this site raises CE by less than {CE_RECOVERED_MIN_GAP} nats, so CE recovered "
           "is a ratio of two small numbers there (it can exceed 1) and tells little; read FVE.", ""]
          if flat else []),
        "## What to expect", "",
        info.get("expectations") or expectations(info["model"]), "",
        "Load them with `featcirc.load_saes(model, <this directory>)`, or pass the directory as `--saes`.", "",
    ]
    write_text(directory / "README.md", "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def check_output_dir(out: "str | os.PathLike[str]", force: bool) -> Path:
    """``out`` must not exist (not even empty) unless ``force`` (it is then replaced at the end of
    training), is no file, and can be created (its nearest existing parent writable, read-only file
    systems included): :func:`featcirc.io.check_out_dir`."""
    from featcirc.io import check_out_dir

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it, or choose another --out")
    return check_out_dir(out, force)


@dataclass(frozen=True)
class _Windows:
    """The token windows of one training run (:func:`_prepare_windows`)."""

    tok: Any
    train_corpus: "Corpus"
    held_corpus: "Corpus"
    pad_id: Optional[int]
    held: "torch.Tensor"   # held-out windows, for the metrics
    ce_windows: int        # how many of them the CE metrics use
    train: "torch.Tensor"  # training windows
    epochs: float          # passes over the training windows that the token budget means


def _prepare_windows(model: Any, corpus: "Corpus", settings: TrainSettings) -> _Windows:
    """Split ``corpus`` (seeded) into training and held-out documents and cut both into windows
    (BOS first): the same for SAEs and transcoders."""
    from featcirc.data.corpus import token_windows

    tok = getattr(model, "tokenizer", None)
    if tok is None or getattr(tok, "bos_token_id", None) is None:
        raise ValueError("the model needs a tokenizer with a BOS token (load it with featcirc.load_model)")
    train_c, held_c = corpus.split(settings.heldout_fraction, seed=settings.seed)
    pad_id = None if settings.pack else getattr(tok, "pad_token_id", None)
    held = token_windows(model, held_c, settings.context_size, max_tokens=settings.eval_tokens, pack=settings.pack)
    ce_windows = max(1, math.ceil(settings.ce_eval_tokens / settings.context_size))
    # windows enough for one pass: training + norm-estimation batches + what the mixing buffer keeps,
    # scaled from training tokens (BOS excluded) to window tokens
    norm_tokens = settings.norm_estimate_batches * settings.batch_tokens
    want = settings.tokens + norm_tokens + settings.buffer_windows * settings.context_size
    want = int(want * settings.context_size / (settings.context_size - 1)) + settings.context_size
    train = token_windows(model, train_c, settings.context_size, max_tokens=want if settings.pack else None,
                          pack=settings.pack)
    real_mask = train != tok.bos_token_id
    if pad_id is not None:
        real_mask &= train != pad_id
    real = int(real_mask.sum())
    epochs = (settings.tokens + norm_tokens) / max(real, 1)
    if epochs > 1:
        logger.warning("the training corpus has %d windows (%d tokens without BOS); %d tokens means %.1f "
                       "passes over it", len(train), real,
                       settings.tokens, epochs)
    return _Windows(tok, train_c, held_c, pad_id, held, ce_windows, train, epochs)


def train_saes(model: Any, sites: Sequence["Site | str"], corpus: Corpus, out: "str | os.PathLike[str]",
               settings: Optional[TrainSettings] = None, *, model_name: str, command: str = "",
               force: bool = False, progress: bool = True,
               phase: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Train one TopK SAE per site on ``corpus`` and write the set and its card to ``out``
    (see the module doc). ``settings`` default to :func:`default_settings` of ``model_name``.
    ``phase``: called with ``"trained"`` (SAELens done) and ``"written"`` (the set complete, just
    before it is moved onto ``out``). Returns the card's content (``metrics.json``)."""
    import torch

    if settings is None:
        settings = TrainSettings(**default_settings(model_name, int(model.cfg.n_ctx)))
    settings.check(n_ctx=int(model.cfg.n_ctx))
    sites = parse_sites(model, [Site.parse(s).name for s in sites])
    if any(s.is_transcoder for s in sites):
        raise ValueError("tc.L sites are transcoders: train them with train_transcoders (train-saes --transcoders), "
                         "not together with SAEs")
    out = check_output_dir(out, force)
    data = _prepare_windows(model, corpus, settings)
    tok, train_c, held_c, pad_id, held, ce_windows, train, epochs = (
        data.tok, data.train_corpus, data.held_corpus, data.pad_id, data.held, data.ce_windows, data.train,
        data.epochs)

    import datasets
    from sae_lens import TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig

    device = str(next(model.parameters()).device)
    from featcirc.sites import site_width

    sae_cfgs = {s.name: TopKTrainingSAEConfig(
        d_in=site_width(s, model.cfg)[0], d_sae=settings.width, k=settings.k, dtype=settings.dtype, device=device,
        normalize_activations="expected_average_only_in", aux_loss_coefficient=settings.aux_loss_coefficient)
        for s in sites}
    steps = settings.steps
    from featcirc.io import staged_dir

    phase = phase or (lambda name: None)
    # built in .<name>.partial-<pid>-* beside out, moved into place when complete; a killed run's
    # partial directory is removed by the next run into the same out (featcirc.io.staged_dir)
    with staged_dir(out, force=force) as partial:
        dataset = datasets.Dataset.from_dict({"input_ids": train.tolist()})
        cfg = MultiSAETrainingRunnerConfig(
            saes=sae_cfgs, hook_names={s.name: s.hook_name for s in sites},
            model_name=model_name, dataset_path=f"featcirc-corpus:{corpus.name}@{corpus.sha256[:12]}",
            streaming=False, context_size=settings.context_size, n_batches_in_buffer=settings.buffer_windows,
            training_tokens=settings.tokens, store_batch_size_prompts=settings.store_batch_prompts,
            train_batch_size_tokens=settings.batch_tokens, device=device, seed=settings.seed,
            dtype=settings.dtype, prepend_bos=True, lr=settings.lr, lr_scheduler_name="constant",
            lr_warm_up_steps=max(1, int(settings.warmup_fraction * steps)),
            lr_decay_steps=int(settings.decay_fraction * steps), lr_end=settings.lr / 10,
            dead_feature_window=max(1, min(1000, steps // 10)), feature_sampling_window=max(1, min(2000, steps // 2)),
            logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=str(partial),
            exclude_special_tokens=[int(tok.bos_token_id)] + ([int(pad_id)] if pad_id is not None else []),
            n_batches_for_norm_estimate=settings.norm_estimate_batches,
            model_from_pretrained_kwargs={}, sequence_separator_token="bos")
        torch.manual_seed(settings.seed)
        t0 = time.time()
        sink = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with sink, _quiet_sae_lens(), _keep_signal_handlers():
            runner = MultiSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
            runner.run()
        train_seconds = time.time() - t0
        phase("trained")
        for s in sites:  # SAELens's extras: the card replaces them
            (partial / s.name / "sparsity.safetensors").unlink(missing_ok=True)
        for extra in partial.glob("*.json"):
            extra.unlink()

        from featcirc.saes.loading import load_saes

        t1 = time.time()
        trained = load_saes(model, partial)
        metrics = evaluate_saes(model, trained, held, ce_windows=ce_windows,
                                batch_windows=settings.eval_batch_windows, pad_id=pad_id, progress=progress)
        eval_seconds = time.time() - t1
        info = {
            "model": model_name, "command": command, "device": device, "threads": torch.get_num_threads(),
            "architecture": "topk", "sae_lens_version": _sae_lens_version(),
            "settings": {**asdict(settings), "steps": steps},
            "corpus": {"name": corpus.name, "sha256": corpus.sha256, "documents": len(corpus.texts),
                       "train_documents": len(train_c.texts), "heldout_documents": len(held_c.texts),
                       "train_windows": len(train), "heldout_windows": len(held), "train_epochs": epochs},
            "train_seconds": train_seconds, "eval_seconds": eval_seconds, "expectations": expectations(model_name),
            "saes": {name: {"hook_name": Site.parse(name).hook_name, "tokens_seen": steps * settings.batch_tokens,
                            **m} for name, m in metrics.items()},
        }
        write_card(partial, info)
        phase("written")
    return info


_HANDLED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class _SignalsKept:
    """Stands in for the ``signal`` module inside SAELens's runner: it reads handlers as usual but
    installs none (SAELens would replace Ctrl-C and SIGTERM by a handler raising its own
    ``InterruptedException``, and never put the previous ones back)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(signal, name)

    @staticmethod
    def signal(signum, handler):  # noqa: ARG004
        return signal.getsignal(signum)


@contextlib.contextmanager
def _keep_signal_handlers():
    """Keep the caller's Ctrl-C / SIGTERM / SIGHUP handlers while SAELens trains (``featcirc.cli``:
    one line and 130 / 143 / 129, the staged set removed), put them back afterwards whatever SAELens
    did, and turn SAELens's ``InterruptedException`` into ``KeyboardInterrupt`` should it come anyway."""
    import sae_lens.multi_sae_training_runner as runner_module
    from sae_lens.training._interruption import InterruptedException

    saved = {}
    try:
        saved = {sig: signal.getsignal(sig) for sig in _HANDLED_SIGNALS}
    except ValueError:  # pragma: no cover - not the main thread
        pass
    real = getattr(runner_module, "signal", None)
    runner_module.signal = _SignalsKept()
    try:
        yield
    except InterruptedException as e:
        raise KeyboardInterrupt() from e
    finally:
        runner_module.signal = real
        for sig, handler in saved.items():
            try:
                if signal.getsignal(sig) != handler:
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except ValueError:  # pragma: no cover - not the main thread
                pass


def _sae_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


@contextlib.contextmanager
def _quiet_sae_lens():
    """SAELens warns that override_dataset/override_model make the run irreproducible from its own
    config: featcirc's card records the corpus hash and settings instead."""
    lg = logging.getLogger("sae_lens")
    old = lg.level
    lg.setLevel(logging.ERROR)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pretokenized dataset.*")
        warnings.filterwarnings("ignore", message="All samples in the training dataset")
        # SAELens compares dataset rows (windows) with training tokens; the card reports the passes
        warnings.filterwarnings("ignore", message=".*fewer samples.*")
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        try:
            yield
        finally:
            lg.setLevel(old)


# ---------------------------------------------------------------------------------------------
# transcoders
# ---------------------------------------------------------------------------------------------
TRANSCODER_L1_WARMUP_FRACTION = 0.05
"""The L1 coefficient rises linearly from 0 over this fraction of the steps (Anthropic, April 2024)."""


def parse_transcoder_sites(model: Any, spec: "str | Iterable[str] | None") -> list[Site]:
    """The ``tc.L`` sites of a transcoder run: ``None`` or ``"all"`` (every layer) or a comma-separated
    list of ``tc.L`` names, checked against ``model`` (the layer exists and has an MLP); in layer order."""
    n = int(model.cfg.n_layers)
    if spec is None or (isinstance(spec, str) and spec.strip() == "all"):
        sites = [Site("tc", layer) for layer in range(n)]
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
        sites = [Site.parse(name) for name in names]
        others = [s.name for s in sites if not s.is_transcoder]
        if others:
            raise ValueError(f"transcoders go at tc.L sites (one per layer), not {', '.join(others)}: train SAEs "
                             "and transcoders in separate runs")
        sites = parse_sites(model, names)
    for s in sites:
        if s.layer >= n:
            raise ValueError(f"site {s.name} is beyond the model: it has {n} layers (0..{n - 1})")
        if getattr(model.blocks[s.layer], "mlp", None) is None or s.hook_name not in model.hook_dict:
            raise ValueError(f"block {s.layer} of the model has no MLP with hook {s.hook_name} for {s.name}")
    return sites


class _TranscoderTrainer:
    """One ReLU transcoder ``y ~ W_dec relu(W_enc x + b_enc) + b_dec`` trained on normalised activations
    (``x`` and ``y`` scaled so that their mean norm is ``sqrt(d)``, Anthropic's April 2024 update), with
    loss ``|y - y_hat|^2 + lambda * sum_i f_i |W_dec,i|`` (lambda warmed up), Adam, gradient clipping,
    the learning-rate schedule of the SAEs. :meth:`transcoder` folds the scalings into the weights, so
    the SAELens ``Transcoder`` it returns computes exactly the trained function on raw activations."""

    def __init__(self, d_in: int, d_out: int, settings: TrainSettings, scale_in: float, scale_out: float,
                 mean_out: "torch.Tensor", generator: "torch.Generator", device: Any) -> None:
        import torch

        self.settings, self.scale_in, self.scale_out = settings, scale_in, scale_out
        dtype = getattr(torch, settings.dtype)
        width = settings.width
        w_dec = torch.randn(width, d_out, generator=generator).to(device)
        w_dec = 0.1 * w_dec / w_dec.norm(dim=1, keepdim=True)
        w_enc = torch.randn(d_in, width, generator=generator).to(device)
        w_enc = 0.1 * w_enc / w_enc.norm(dim=0, keepdim=True)
        self.W_enc = torch.nn.Parameter(w_enc.to(dtype))
        self.b_enc = torch.nn.Parameter(torch.zeros(width, dtype=dtype, device=device))
        self.W_dec = torch.nn.Parameter(w_dec.to(dtype))
        self.b_dec = torch.nn.Parameter((mean_out * scale_out).to(device=device, dtype=dtype))
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(self.params, lr=settings.lr, betas=(0.9, 0.999))
        steps = settings.steps
        warm = max(1, int(settings.warmup_fraction * steps))
        decay = int(settings.decay_fraction * steps)

        def lr_factor(step: int) -> float:
            f = min(1.0, (step + 1) / warm)
            if decay and step >= steps - decay:
                f *= 1.0 - 0.9 * (step - (steps - decay)) / decay
            return f

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor)
        self.l1_warm = max(1, int(TRANSCODER_L1_WARMUP_FRACTION * steps))
        self.step_i = 0
        self.alive = torch.zeros(width, dtype=torch.bool, device=device)

    def step(self, x_in: "torch.Tensor", y: "torch.Tensor") -> dict[str, float]:
        import torch

        dtype = self.W_enc.dtype
        x = (x_in * self.scale_in).to(dtype)
        target = (y * self.scale_out).to(dtype)
        f = torch.relu(x @ self.W_enc + self.b_enc)
        y_hat = f @ self.W_dec + self.b_dec
        mse = (y_hat - target).float().pow(2).sum(-1).mean()
        l1 = (f * self.W_dec.norm(dim=1)).float().sum(-1).mean()
        lam = self.settings.l1_coefficient * min(1.0, (self.step_i + 1) / self.l1_warm)
        loss = mse + lam * l1
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.step_i += 1
        with torch.no_grad():
            active = f > 0
            self.alive |= active.any(0)
            var = (target - target.mean(0)).float().pow(2).sum(-1).mean()
        mse_v = float(mse.detach())
        return {"loss": float(loss.detach()), "mse": mse_v, "fve": 1.0 - mse_v / max(float(var), 1e-12),
                "l0": float(active.float().sum(-1).mean())}

    def transcoder(self, layer: int, meta: Mapping[str, Any]) -> Any:
        """The SAELens ``Transcoder`` (scalings folded in), its site ``tc.layer`` in its metadata."""
        import torch
        from sae_lens import TranscoderConfig
        from sae_lens.saes.transcoder import Transcoder

        d_in, width = self.W_enc.shape
        d_out = self.W_dec.shape[1]
        cfg = TranscoderConfig(d_in=int(d_in), d_sae=int(width), d_out=int(d_out), dtype=self.settings.dtype,
                               device=str(self.W_enc.device), apply_b_dec_to_input=False,
                               normalize_activations="none")
        for key, value in {**meta, "hook_name": f"blocks.{layer}.hook_mlp_in",
                           "hook_name_out": f"blocks.{layer}.hook_mlp_out"}.items():
            setattr(cfg.metadata, key, value)
        tc = Transcoder(cfg)
        with torch.no_grad():  # x_s = a x, y_s = b y: y = (W_dec / b) relu((a W_enc) x + b_enc) + b_dec / b
            tc.W_enc.copy_(self.W_enc * self.scale_in)
            tc.b_enc.copy_(self.b_enc)
            tc.W_dec.copy_(self.W_dec / self.scale_out)
            tc.b_dec.copy_(self.b_dec / self.scale_out)
        return tc.eval()


def _mlp_io_batches(model: Any, windows: "torch.Tensor", layers: Sequence[int], settings: TrainSettings,
                    keep_of: Callable[["torch.Tensor"], "torch.Tensor"], generator: "torch.Generator",
                    progress: Optional[Any] = None) -> Iterable[dict[int, tuple["torch.Tensor", "torch.Tensor"]]]:
    """Endless batches of ``settings.batch_tokens`` shuffled tokens ``{L: (mlp_in, mlp_out)}``: windows in
    a seeded order (a new permutation each pass), ``store_batch_prompts`` windows per forward (up to the
    last layer needed), BOS and padding left out, mixed in a buffer of ``buffer_windows`` windows."""
    import torch

    from featcirc.models.mlp_io import recording_mlp_io

    device = next(model.parameters()).device
    stop = max(layers) + 1
    fill = max(settings.buffer_windows * (settings.context_size - 1), settings.batch_tokens)
    buf: dict[int, list[list[torch.Tensor]]] = {L: [[], []] for L in layers}
    have = 0
    order = torch.randperm(len(windows), generator=generator)
    cursor = 0
    while True:
        while have < fill:
            if cursor >= len(order):
                order, cursor = torch.randperm(len(windows), generator=generator), 0
            toks = windows[order[cursor:cursor + settings.store_batch_prompts]].to(device)
            cursor += settings.store_batch_prompts
            keep = keep_of(toks)
            with torch.no_grad(), recording_mlp_io(model, layers) as io_:
                model(toks, stop_at_layer=stop, prepend_bos=False)
            for L in layers:
                buf[L][0].append(io_[L][0][keep])
                buf[L][1].append(io_[L][1][keep])
            have += int(keep.sum())
        perm = torch.randperm(have, generator=generator).to(device)
        flat = {L: (torch.cat(buf[L][0])[perm], torch.cat(buf[L][1])[perm]) for L in layers}
        n_batches = have // settings.batch_tokens
        for i in range(n_batches):
            sl = slice(i * settings.batch_tokens, (i + 1) * settings.batch_tokens)
            yield {L: (a[sl], b[sl]) for L, (a, b) in flat.items()}
        rest = n_batches * settings.batch_tokens
        buf = {L: [[a[rest:]], [b[rest:]]] for L, (a, b) in flat.items()}
        have -= rest


def _loss_ends(losses: Sequence[tuple[float, float]], n: int = 10) -> dict[str, float]:
    """The training loss and its squared error part (normalised units), averaged over the first and the
    last ``n`` steps."""
    n = max(1, min(n, len(losses)))
    return {"train_loss_start": sum(v[0] for v in losses[:n]) / n, "train_loss_end": sum(v[0] for v in losses[-n:]) / n,
            "train_mse_start": sum(v[1] for v in losses[:n]) / n, "train_mse_end": sum(v[1] for v in losses[-n:]) / n}


def train_transcoders(model: Any, sites: "Sequence[Site | str] | str | None", corpus: Corpus,
                      out: "str | os.PathLike[str]", settings: Optional[TrainSettings] = None, *, model_name: str,
                      command: str = "", force: bool = False, progress: bool = True,
                      phase: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Train one ReLU transcoder per ``tc.L`` site (``None`` / ``"all"``: every layer) on ``corpus``: it
    reads the MLP's input (ln2's output) and writes the MLP's output, ``blocks.L.hook_mlp_out``
    (:mod:`featcirc.models.mlp_io`), from one shared model forward per ``store_batch_prompts`` windows,
    up to the last layer needed. SAELens 6 trains no transcoders, so this is featcirc's own loop (same
    windows, split, schedule, evaluation, card and staging as :func:`train_saes`):

    Architecture: SAELens ``Transcoder`` (ReLU) with an L1 penalty weighted by the decoder norms
    (``settings.l1_coefficient``): SAELens has no TopK transcoder, and a ReLU transcoder saves exactly the
    function that was trained. Writes SAELens directories ``tc.L/`` (``cfg.json`` with
    ``metadata.hook_name = blocks.L.hook_mlp_in``, ``hook_name_out = blocks.L.hook_mlp_out``) and the card.
    Returns the card's content (``metrics.json``)."""
    import torch
    from tqdm.auto import tqdm

    if settings is None:
        settings = TrainSettings(**default_settings(model_name, int(model.cfg.n_ctx)))
    settings.check(n_ctx=int(model.cfg.n_ctx))
    if isinstance(sites, (list, tuple)):
        sites = [Site.parse(s).name for s in sites]
    sites = parse_transcoder_sites(model, sites)
    out = check_output_dir(out, force)
    data = _prepare_windows(model, corpus, settings)
    layers = [s.layer for s in sites]
    device = next(model.parameters()).device
    bos, pad_id = int(data.tok.bos_token_id), data.pad_id

    def keep_of(toks: torch.Tensor) -> torch.Tensor:
        keep = toks != bos
        keep[:, 0] = False
        return keep & (toks != pad_id) if pad_id is not None else keep

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    batches = iter(_mlp_io_batches(model, data.train, layers, settings, keep_of, gen))
    phase = phase or (lambda name: None)
    from featcirc.io import staged_dir

    with staged_dir(out, force=force) as partial:
        t0 = time.time()
        # the scalings (mean norm -> sqrt(d)) and the output mean, from the first batches
        norms = {L: [0.0, 0.0, 0] for L in layers}
        means = {L: 0.0 for L in layers}
        for _ in tqdm(range(settings.norm_estimate_batches), desc="norm estimate", disable=not progress,
                      leave=False):
            batch = next(batches)
            for L, (x_in, y) in batch.items():
                norms[L][0] += float(x_in.float().norm(dim=-1).sum())
                norms[L][1] += float(y.float().norm(dim=-1).sum())
                norms[L][2] += x_in.shape[0]
                means[L] = means[L] + y.float().sum(0)
        trainers = {}
        for L in layers:
            n_in, n_out, n = norms[L]
            d_in, d_out = int(model.cfg.d_model), int(model.cfg.d_model)
            trainers[L] = _TranscoderTrainer(d_in, d_out, settings, math.sqrt(d_in) / max(n_in / n, 1e-12),
                                             math.sqrt(d_out) / max(n_out / n, 1e-12), means[L] / n, gen, device)
        steps = settings.steps
        last: dict[int, dict[str, float]] = {}
        losses: dict[int, list[tuple[float, float]]] = {L: [] for L in layers}
        bar = tqdm(range(steps), desc=f"training {len(layers)} transcoder(s)", disable=not progress)
        for step in bar:
            batch = next(batches)
            for L in layers:
                last[L] = trainers[L].step(*batch[L])
                losses[L].append((last[L]["loss"], last[L]["mse"]))
            if step % 20 == 0 or step == steps - 1:
                bar.set_postfix_str(" ".join(f"tc.{L} fve {m['fve']:.2f} l0 {m['l0']:.0f}" for L, m in last.items()))
        bar.close()
        train_seconds = time.time() - t0
        phase("trained")
        meta = {"model_name": model_name, "context_size": settings.context_size, "prepend_bos": True,
                "dataset_path": f"featcirc-corpus:{corpus.name}@{corpus.sha256[:12]}",
                "training_architecture": "transcoder", "l1_coefficient": settings.l1_coefficient}
        trained = {}
        for s in sites:
            tc = trainers[s.layer].transcoder(s.layer, meta)
            tc.save_model(partial / s.name)
            trained[s.name] = tc
        t1 = time.time()
        metrics = evaluate_saes(model, trained, data.held, ce_windows=data.ce_windows,
                                batch_windows=settings.eval_batch_windows, pad_id=pad_id, progress=progress)
        eval_seconds = time.time() - t1
        info = {
            "model": model_name, "command": command, "device": str(device), "threads": torch.get_num_threads(),
            "architecture": "transcoder", "sae_lens_version": _sae_lens_version(),
            "settings": {**asdict(settings), "steps": steps},
            "corpus": {"name": corpus.name, "sha256": corpus.sha256, "documents": len(corpus.texts),
                       "train_documents": len(data.train_corpus.texts),
                       "heldout_documents": len(data.held_corpus.texts), "train_windows": len(data.train),
                       "heldout_windows": len(data.held), "train_epochs": data.epochs},
            "train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "expectations": expectations(model_name, transcoders=True),
            "saes": {name: {"hook_name": f"blocks.{Site.parse(name).layer}.hook_mlp_in",
                            "hook_name_out": Site.parse(name).hook_name,
                            "tokens_seen": steps * settings.batch_tokens,
                            **_loss_ends(losses[Site.parse(name).layer]), **m} for name, m in metrics.items()},
        }
        write_card(partial, info)
        phase("written")
    return info
