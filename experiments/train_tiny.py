"""Train the embedded default model of featcirc (docs/design.md §10) and its SAEs, and write the bundle.

    PYTHONPATH=. python experiments/train_tiny.py                       # the shipped bundle
    PYTHONPATH=. python experiments/train_tiny.py --out /tmp/tiny --steps 200 --sae-steps 50  # smoke run

Steps (all seeded, CPU):
1. split the vocabulary: hold out ~20% of the names, ~20% of the SVA nouns and one IOI template per
   kind from the IOI/SVA training items (held-out words still occur in filler sentences);
2. generate the corpus: IOI narratives and SVA sentences (featcirc.data.tasks generators, prompt + its
   correct answer + a short continuation) plus varied filler sentences;
3. build a word-level tokenizer and train a 4-layer GPT-2-style HookedTransformer on the corpus;
4. write held-out pairs (featcirc JSONL) and measure IOI / SVA logit differences on them;
5. train one TopK SAE per site (embed, attn.L, mlp.L, resid.L) with SAELens's SAETrainer on the
   model's activations over the corpus, and measure L0, variance explained and the logit difference
   kept when the SAE replaces the site (no error term);
6. write the model card README.md with every number, and print them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from featcirc.data import tasks
from featcirc.data import PromptPair, tokenize_pairs, write_pairs
from featcirc.io import write_json, write_text
from featcirc.metric import logit_diff
from featcirc.sites import all_sites
from featcirc.data.tiny_corpus import _tup, build_corpus
from featcirc.models.tiny import HELDOUT_FILES, TINY_DIR, build_tokenizer, n_parameters, tiny_config


HELDOUT_TEMPLATE_INDEX = 2  # "After {X} and {Y} arrived at the {PLACE}, {B} handed a {OBJECT} to"

# --------------------------------------------------------------------------------------------
# 1. vocabulary split
# --------------------------------------------------------------------------------------------
def split_vocab(seed: int, frac: float = 0.2) -> dict[str, Any]:
    """Hold out ``frac`` of the names and of the SVA nouns (seeded) and template
    ``HELDOUT_TEMPLATE_INDEX`` of each IOI kind."""
    rng = random.Random(seed)
    names = list(tasks.NAMES)
    held_names = sorted(rng.sample(names, round(frac * len(names))))
    nouns = list(tasks.NOUNS)
    held_nouns = sorted(rng.sample(nouns, round(frac * len(nouns))))
    train_names = [n for n in names if n not in held_names]
    train_nouns = [n for n in nouns if n not in held_nouns]
    held_t = {k: [v[HELDOUT_TEMPLATE_INDEX]] for k, v in tasks.IOI_TEMPLATES.items()}
    train_t = {k: [t for i, t in enumerate(v) if i != HELDOUT_TEMPLATE_INDEX]
               for k, v in tasks.IOI_TEMPLATES.items()}
    sva_kw = {"nouns": [list(n) for n in held_nouns]}
    return {
        "heldout_names": held_names, "train_names": train_names,
        "heldout_nouns": [list(n) for n in held_nouns], "train_nouns": [list(n) for n in train_nouns],
        "heldout_templates": held_t, "train_templates": train_t,
        "heldout_kwargs": {
            # the held-out template of each kind, filled with training names (pairs never seen)
            "ioi": {"names": train_names, "templates": held_t},
            "sva-simple": sva_kw, "sva-nounpp": sva_kw, "sva-rc": sva_kw, "sva-within-rc": sva_kw,
        },
        # a harder probe, reported without a target: held-out names in every template
        "ioi_heldout_names_kwargs": {"names": held_names,
                                     "templates": {k: list(v) for k, v in tasks.IOI_TEMPLATES.items()}},
    }


def corpus_words(sentences: Sequence[str]) -> list[str]:
    """Every word of the corpus plus every word of the task lists (so any generated pair tokenizes)."""
    import re

    words: set[str] = set()
    for s in sentences:
        words.update(re.findall(r"[A-Za-z]+", s))
    words.update(tasks.NAMES, tasks.PLACES, tasks.OBJECTS, tasks.PREPOSITIONS)
    for group in (tasks.NOUNS, tasks.PP_NOUNS, tasks.RC_VERBS, tasks.VERB_PAIRS):
        for pair in group:
            words.update(pair)
    for kind in tasks.IOI_TEMPLATES.values():
        for t in kind:
            words.update(w for w in re.findall(r"[A-Za-z]+", t) if w not in ("A", "B", "PLACE", "OBJECT"))
    words.update(["The", "that", "the", "a"])
    return sorted(words)


def encode_corpus(tok: Any, sentences: Sequence[str], n_ctx: int) -> list[list[int]]:
    """``[BOS] + sentence + [EOS]`` ids (BOS from the tokenizer's post-processor)."""
    enc = tok(list(sentences))["input_ids"]
    out = []
    unk = tok.unk_token_id
    for ids, s in zip(enc, sentences):
        if unk in ids:
            raise RuntimeError(f"unknown word in corpus sentence {s!r}")
        ids = ids + [tok.eos_token_id]
        if len(ids) > n_ctx:
            raise RuntimeError(f"sentence longer than n_ctx={n_ctx}: {s!r}")
        out.append(ids)
    return out


def pad_batch(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row: ``(tokens [B, T], mask [B, T] of real tokens)``."""
    t = max(len(r) for r in rows)
    toks = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, r in enumerate(rows):
        toks[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    return toks, mask


# --------------------------------------------------------------------------------------------
# 3. model
# --------------------------------------------------------------------------------------------
def train_model(model: Any, data: list[list[int]], pad: int, *, steps: int, batch: int, lr: float,
                seed: int, log: Callable[[str], None]) -> list[float]:
    """Next-token cross-entropy on real tokens (padding masked), AdamW, linear warm-up then cosine
    decay; batches drawn from a seeded permutation of the corpus, epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    perm = torch.randperm(len(data), generator=g).tolist()
    cursor, losses = 0, []
    model.train()
    t0 = time.time()
    for step in range(steps):
        if cursor + batch > len(perm):
            perm, cursor = torch.randperm(len(data), generator=g).tolist(), 0
        rows = [data[i] for i in perm[cursor:cursor + batch]]
        cursor += batch
        toks, mask = pad_batch(rows, pad)
        logits = model(toks, return_type="logits")
        tgt_mask = mask[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][tgt_mask], toks[:, 1:][tgt_mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == steps - 1:
            recent = sum(losses[-200:]) / len(losses[-200:])
            log(f"step {step:5d}/{steps}  loss {recent:.4f}  ({time.time() - t0:.0f}s)")
    model.eval()
    return losses


# --------------------------------------------------------------------------------------------
# 4. behaviour
# --------------------------------------------------------------------------------------------
def heldout_pairs(split: dict[str, Any], n: int, seed: int) -> dict[str, list[PromptPair]]:
    """Fresh held-out pairs of every task from the held-out vocabulary."""
    out = {}
    for task, kw in split["heldout_kwargs"].items():
        kw = {k: (_tup(v) if k == "nouns" else v) for k, v in kw.items()}
        out[task] = tasks.make_task(task, n, seed, **kw)
    return out


@torch.no_grad()
def behaviour(model: Any, pairs: Sequence[PromptPair], fwd_hooks: Sequence[Any] = ()) -> dict[str, Any]:
    """Logit differences on ``pairs`` (clean prompts): per case and overall, the fraction > 0 and the
    mean. ``fwd_hooks`` are installed for the forward (used to splice SAEs)."""
    ds = tokenize_pairs(model, pairs, batch_size=64)
    by_case: dict[str, list[float]] = {}
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for b in ds.batches:
            m = logit_diff(model, b.clean, b.clean_answer, b.patch_answer)
            for p, v in zip(b.pairs, m.tolist()):
                by_case.setdefault(p.case or "all", []).append(v)
    allv = [v for vs in by_case.values() for v in vs]

    def stats(vs: list[float]) -> dict[str, float]:
        return {"n": len(vs), "frac_pos": sum(v > 0 for v in vs) / len(vs), "mean": sum(vs) / len(vs)}
    return {"all": stats(allv), "cases": {k: stats(v) for k, v in sorted(by_case.items())},
            "dropped": ds.dropped, "values": allv}


# --------------------------------------------------------------------------------------------
# 5. SAEs
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def collect_activations(model: Any, data: list[list[int]], pad: int, hooks: Sequence[str],
                        batch: int = 256) -> dict[str, torch.Tensor]:
    """Activations ``[N, d_model]`` at every hook over the real (non-pad) tokens of ``data``."""
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    hs = set(hooks)
    for s in range(0, len(data), batch):
        toks, mask = pad_batch(data[s:s + batch], pad)
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in hs, return_type=None)
        for h in hooks:
            acts[h].append(cache[h][mask].clone())
    return {h: torch.cat(v) for h, v in acts.items()}


class ActivationProvider:
    """Endless iterator of shuffled activation batches (seeded), the SAETrainer's data provider."""

    def __init__(self, acts: torch.Tensor, batch: int, seed: int) -> None:
        self.acts, self.batch = acts, batch
        self.g = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(acts), generator=self.g)
        self.cursor = 0

    def __iter__(self) -> "ActivationProvider":
        return self

    def __next__(self) -> torch.Tensor:
        if self.cursor + self.batch > len(self.perm):
            self.perm, self.cursor = torch.randperm(len(self.acts), generator=self.g), 0
        idx = self.perm[self.cursor:self.cursor + self.batch]
        self.cursor += self.batch
        return self.acts[idx]


def train_sae(acts: torch.Tensor, hook_name: str, *, d_sae: int, k: int, steps: int, batch: int,
              lr: float, seed: int) -> Any:
    """A TopK SAE trained with SAELens's ``SAETrainer`` (no wandb, no checkpoints)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    cfg = TopKTrainingSAEConfig(
        d_in=int(acts.shape[1]), d_sae=d_sae, k=k, dtype="float32", device="cpu",
        metadata=SAEMetadata(hook_name=hook_name, model_name="featcirc-tiny", hook_head_index=None,
                             context_size=48, prepend_bos=True, dataset_path="featcirc-tiny-corpus"))
    sae = TopKTrainingSAE(cfg)
    # initialise the decoder bias at the data mean (the usual geometric-median-style start)
    sae.b_dec.data[:] = acts.mean(0)
    tcfg = SAETrainerConfig(
        total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr,
        lr_scheduler_name="constant", lr_warm_up_steps=max(1, steps // 20), lr_decay_steps=max(1, steps // 5),
        lr_end=lr / 10, device="cpu", dead_feature_window=200, feature_sampling_window=500,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=20)
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=ActivationProvider(acts, batch, seed))
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # tqdm progress bar
        trainer.fit()
    return sae


@torch.no_grad()
def sae_quality(sae: Any, acts: torch.Tensor) -> dict[str, float]:
    """L0 (mean active features per token) and the fraction of variance explained,
    ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2``, over ``acts`` (BOS positions excluded)."""
    f = sae.encode(acts)
    x_hat = sae.decode(f)
    fve = 1 - ((acts - x_hat) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    alive = (f > 0).any(0).float().mean()
    return {"l0": float((f > 0).float().sum(-1).mean()), "fve": float(fve), "alive": float(alive)}


# --------------------------------------------------------------------------------------------
# 6. card
# --------------------------------------------------------------------------------------------
def write_card(out: Path, info: dict[str, Any]) -> None:
    """The model card README.md with the measured numbers."""
    s = info
    cfg = s["config"]
    lines = [
        "# featcirc tiny model (embedded default)",
        "",
        "A small GPT-2-style language model over a synthetic word-level language, with one SAE per",
        "site, shipped inside featcirc so that the quickstart and the test suite run offline on a CPU.",
        "It knows indirect-object identification (IOI) and subject-verb agreement (SVA) and is meant",
        "for testing and demonstrating circuit discovery, not as a model of English.",
        "",
        "Reproduce (writes this directory and this card; the numbers below are from that run):",
        "",
        "    " + s["command"],
        "",
        "## Model",
        "",
        f"TransformerLens `HookedTransformer`: {cfg['n_layers']} layers, d_model {cfg['d_model']}, "
        f"{cfg['n_heads']} heads of d_head {cfg['d_head']}, d_mlp {cfg['d_mlp']} (GELU), LayerNorm, "
        f"learned positions, n_ctx {cfg['n_ctx']}, d_vocab {cfg['d_vocab']}, untied embeddings, "
        f"{s['n_params']:,} parameters; `default_prepend_bos=True`.",
        "Load it with `featcirc.load_model(\"tiny\")` (files: `model/config.json`, "
        "`model/model.safetensors`, `tokenizer/`).",
        "",
        "Tokenizer: word level (`tokenizers` WordLevel + ByteLevel pre-tokenizer, add_prefix_space=False,",
        "GPT-2 regex, ByteLevel decoder) in a `PreTrainedTokenizerFast` with `<|bos|>`, `<|eos|>`,",
        "`<|pad|>`, `<|unk|>`; its post-processor prepends `<|bos|>`. Every word of the language exists",
        "with and without a leading space, so `\" is\"` and `\" Mary\"` are single tokens.",
        "",
        "## Training",
        "",
        f"Corpus (seed {s['seed']}): {s['corpus']['sentences']:,} sentences, {s['corpus']['tokens']:,} tokens "
        f"(with BOS/EOS): {s['corpus']['ioi']:,} IOI sentences (clean and patch prompt of "
        f"{s['corpus']['ioi'] // 2:,} `featcirc.data.tasks.ioi_pairs`, each followed by its answer and a full stop), "
        f"{s['corpus']['sva']:,} SVA sentences ({s['corpus']['sva'] // 8:,} pairs of each structure "
        "simple / nounpp / rc / within_rc from `featcirc.data.tasks.sva_pairs`, both prompts, each with its "
        f"agreeing verb and a continuation word), and {s['corpus']['filler']:,} filler sentences from 28 "
        "templates about names, places, objects and nouns.",
        f"Next-token cross-entropy on every real token, AdamW (lr {s['train']['lr']}, warm-up + cosine), "
        f"batch {s['train']['batch']} sentences, {s['train']['steps']:,} steps, final loss "
        f"{s['train']['final_loss']:.3f}, {s['train']['seconds'] / 60:.1f} min with torch on {s['train']['threads']} CPU thread(s).",
        "",
        "### Held out (never in an IOI or SVA training item)",
        "",
        f"- names ({len(s['split']['heldout_names'])} of {len(s['split']['heldout_names']) + len(s['split']['train_names'])}): "
        + ", ".join(s["split"]["heldout_names"]) + ". They occur only in filler sentences (e.g. "
        "\"Mary went to the park.\", \"Mary met John at the park. Mary was happy.\").",
        f"- SVA nouns ({len(s['split']['heldout_nouns'])} of {len(s['split']['heldout_nouns']) + len(s['split']['train_nouns'])}): "
        + ", ".join(f"{a}/{b}" for a, b in s["split"]["heldout_nouns"]) + ". In filler they show their "
        "number only through a transitive verb in simple sentences (\"The authors like the cars.\"), "
        "or as the object of a main clause whose subject relative clause agrees with them (\"Mary met "
        "the authors that like John.\"), never with the answer verbs is/are, has/have, was/were, "
        "does/do, goes/go, and never as the agreeing noun of a simple / nounpp / rc / within_rc "
        "sentence.",
        "- IOI templates: one per kind, " + "; ".join(f"{k}: \"{v[0]}\"" for k, v in s["split"]["heldout_templates"].items()) + ".",
        "",
        "Held-out pairs (`heldout_*.jsonl`, featcirc JSONL, made after training with a seed the",
        "corpus did not use): IOI = the held-out template of each kind filled with training names (every",
        "pair's sentence frame is unseen); SVA = only held-out nouns (the agreeing noun, and for rc /",
        "within_rc both nouns; PP nouns, prepositions and verbs are shared with training).",
        "`vocab_split.json` has the split and the `featcirc.data.tasks.make_task` keyword arguments that",
        "generate fresh held-out pairs (`featcirc.models.tiny.heldout_vocab()[\"heldout_kwargs\"][task]`).",
        "",
        "",
        "## Behaviour on held-out pairs",
        "",
        "Logit difference m = logit(clean answer) - logit(patch answer) at the last position of the",
        "clean prompt (`featcirc.metric.logit_diff`).",
        "",
        "| task | case | pairs | m > 0 | mean m |",
        "|---|---|---|---|---|",
    ]
    for task, r in s["behaviour"].items():
        lines.append(f"| {task} | all | {r['all']['n']} | {r['all']['frac_pos']:.1%} | {r['all']['mean']:.2f} |")
        for case, c in r["cases"].items():
            lines.append(f"| {task} | {case} | {c['n']} | {c['frac_pos']:.1%} | {c['mean']:.2f} |")
    ht = s.get("ioi_heldout_names")
    if ht:
        cases = ", ".join(f"{c} {v['frac_pos']:.1%} (mean {v['mean']:.2f})" for c, v in ht["cases"].items())
        lines += ["", f"A harder probe, with no target: IOI with *held-out names* (seen only in filler) in all "
                  f"six templates per kind: {ht['all']['n']} pairs, m > 0 on {ht['all']['frac_pos']:.1%} "
                  f"({cases})."]
        fr = {c: v["frac_pos"] for c, v in ht["cases"].items()}
        if min(fr.values()) < 0.9:
            lines += ["The IOI mechanism does not fully transfer to names never seen in an IOI sentence"
                      + (" (it leans on position: it answers the first-mentioned name more often)"
                         if fr.get("ABBA", 0) - fr.get("BABA", 0) > 0.3 else "")
                      + "; use training names for IOI work with this model (as `heldout_ioi.jsonl` does)."]
    ref = s.get("ioi_train_reference")
    if ref:
        lines += ["", f"For reference, IOI with training names in training templates (fresh pairs): {ref['n']} "
                  f"pairs, m > 0 on {ref['frac_pos']:.1%}, mean {ref['mean']:.2f}."]
    sae = s["sae"]
    lines += [
        "",
        "## SAEs",
        "",
        f"One TopK SAE per site (the repository's `saes/tiny/<site>/`, installed as `featcirc/saes/bundled/tiny/`; SAELens disk format, `SAE.load_from_disk` / "
        f"`featcirc.saes.load_saes(model, \"tiny\")`): d_in {cfg['d_model']}, d_sae {sae['d_sae']}, "
        f"k {sae['k']}, trained with SAELens's `SAETrainer` ({sae['steps']:,} steps of "
        f"{sae['batch']:,} activations, lr {sae['lr']}) on {sae['n_tokens']:,} token activations of "
        f"{sae['n_sentences']:,} corpus sentences (BOS included), {sae['seconds'] / 60:.1f} min in all.",
        "",
        "Measured on the activations of held-out pairs' clean prompts (BOS positions excluded): L0 =",
        "mean number of active features per token; FVE = fraction of variance explained,",
        "1 - sum|x - x_hat|^2 / sum|x - mean x|^2; alive = fraction of features active at least once",
        "there. Spliced: the site activation replaced by the SAE's reconstruction (no error term) at",
        "every position, then mean spliced logit difference / mean clean logit difference on the",
        "held-out IOI pairs and on all held-out SVA pairs together.",
        "",
        "| site | hook | L0 | FVE | alive | IOI spliced / clean | SVA spliced / clean |",
        "|---|---|---|---|---|---|---|",
    ]
    for site, r in sae["sites"].items():
        lines.append(f"| {site} | {r['hook']} | {r['l0']:.1f} | {r['fve']:.3f} | {r['alive']:.2f} | "
                     f"{r['ioi_recovered']:.2f} | {r['sva_recovered']:.2f} |")
    lines += ["", f"Bundle size: {s['bundle_mb']:.1f} MB.", ""]
    write_text(out / "README.md", "\n".join(lines))


# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("featcirc.data").setLevel(logging.ERROR)  # the generated pairs drop by design
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=TINY_DIR, help="bundle directory (default: the package's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5000, help="model training steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-ioi", type=int, default=12000, help="IOI training pairs (2 sentences each)")
    ap.add_argument("--n-sva", type=int, default=5000, help="SVA training pairs per structure")
    ap.add_argument("--n-filler", type=int, default=50000)
    ap.add_argument("--n-heldout", type=int, default=200, help="held-out pairs per task")
    ap.add_argument("--sae-steps", type=int, default=1000)
    ap.add_argument("--sae-batch", type=int, default=1024)
    ap.add_argument("--sae-lr", type=float, default=2e-3)
    ap.add_argument("--d-sae", type=int, default=768)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--sae-sentences", type=int, default=8000, help="corpus sentences for SAE activations")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    given = list(argv if argv is not None else sys.argv[1:])
    for i, a in enumerate(given):  # the output directory does not change the numbers
        if a == "--out":
            given[i:i + 2] = ["", ""]
        elif a.startswith("--out="):
            given[i] = ""
    command = "PYTHONPATH=. python experiments/train_tiny.py" + "".join(f" {a}" for a in given if a)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    split = split_vocab(args.seed)
    sentences = build_corpus(split, args.seed, args.n_ioi, args.n_sva, args.n_filler)
    words = corpus_words(sentences)
    tok = build_tokenizer(words)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp_build"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tok.save_pretrained(str(tmp / "tokenizer"))
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp / "tokenizer"))

    cfg_kwargs = tiny_config(len(tok))
    data = encode_corpus(tok, sentences, cfg_kwargs["n_ctx"])
    n_ioi, n_sva = 2 * args.n_ioi, 8 * args.n_sva
    corpus_info = {"sentences": len(sentences), "tokens": sum(len(r) for r in data), "ioi": n_ioi,
                   "sva": n_sva, "filler": args.n_filler, "vocab": len(tok)}
    log(f"corpus: {corpus_info}")

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    torch.manual_seed(args.seed)
    model = HookedTransformer(HookedTransformerConfig(**cfg_kwargs), tokenizer=tok)
    log(f"model: {n_parameters(model):,} parameters")
    t0 = time.time()
    losses = train_model(model, data, tok.pad_token_id, steps=args.steps, batch=args.batch, lr=args.lr,
                         seed=args.seed, log=log)
    train_seconds = time.time() - t0
    from safetensors.torch import save_file
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text(json.dumps(cfg_kwargs, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model" / "model.safetensors"))

    # held-out pairs and behaviour
    held = heldout_pairs(split, args.n_heldout, args.seed + 1000)
    results = {task: behaviour(model, pairs) for task, pairs in held.items()}
    for task, r in results.items():
        log(f"{task}: m>0 {r['all']['frac_pos']:.1%} mean {r['all']['mean']:.2f}  "
            + "  ".join(f"{c}: {v['frac_pos']:.0%}" for c, v in r["cases"].items()))
    ref = behaviour(model, tasks.ioi_pairs(args.n_heldout, args.seed + 2000, names=split["train_names"],
                                           templates=split["train_templates"]))
    log(f"reference, IOI with training names and templates: m>0 {ref['all']['frac_pos']:.1%} "
        f"mean {ref['all']['mean']:.2f}")
    hn = behaviour(model, tasks.ioi_pairs(args.n_heldout, args.seed + 3000, **split["ioi_heldout_names_kwargs"]))
    log(f"probe, IOI with held-out names in all templates: m>0 {hn['all']['frac_pos']:.1%} "
        + "  ".join(f"{c}: {v['frac_pos']:.0%}" for c, v in hn["cases"].items()))
    ht = {k: v for k, v in hn.items() if k != "values"}

    # SAEs
    t1 = time.time()
    sites = all_sites(cfg_kwargs["n_layers"])
    hooks = [s.hook_name for s in sites]
    sae_data = data[:args.sae_sentences]
    acts = collect_activations(model, sae_data, tok.pad_token_id, hooks)
    n_tokens = len(next(iter(acts.values())))
    log(f"SAE activations: {n_tokens:,} tokens x {len(hooks)} sites")
    # evaluation activations: clean prompts of held-out pairs, BOS excluded
    eval_rows = [tok(p.clean_prefix)["input_ids"] for ps in held.values() for p in ps]
    eval_acts = collect_activations(model, eval_rows, tok.pad_token_id, hooks)
    not_bos = torch.cat([torch.arange(len(r)) > 0 for r in eval_rows])
    ioi_pairs_ = held["ioi"]
    sva_all = [p for t, ps in held.items() if t != "ioi" for p in ps]
    clean_ioi = results["ioi"]["all"]["mean"]
    clean_sva = sum(sum(results[t]["values"]) for t in held if t != "ioi") / len(sva_all)
    saes, sae_rows = {}, {}
    for i, site in enumerate(sites):
        sae = train_sae(acts[site.hook_name], site.hook_name, d_sae=args.d_sae, k=args.k,
                        steps=args.sae_steps, batch=args.sae_batch, lr=args.sae_lr, seed=args.seed + 100 + i)
        saes[site.name] = sae
        q = sae_quality(sae, eval_acts[site.hook_name][not_bos])

        def splice(x: torch.Tensor, hook: Any, sae: Any = sae) -> torch.Tensor:
            return sae.decode(sae.encode(x))
        hk = [(site.hook_name, splice)]
        ioi_sp = behaviour(model, ioi_pairs_, hk)["all"]["mean"]
        sva_sp = behaviour(model, sva_all, hk)["all"]["mean"]
        row = {"hook": site.hook_name, **q, "ioi_recovered": ioi_sp / clean_ioi,
               "sva_recovered": sva_sp / clean_sva}
        sae_rows[site.name] = row
        log(f"SAE {site.name}: L0 {q['l0']:.1f} FVE {q['fve']:.3f} alive {q['alive']:.2f} "
            f"IOI {row['ioi_recovered']:.2f} SVA {row['sva_recovered']:.2f}")
    sae_seconds = time.time() - t1

    # write the rest of the bundle: SAEs, held-out pairs, split, card
    for name, sae in saes.items():
        sae.save_inference_model(str(tmp / "saes" / name))
    for task, pairs in held.items():
        write_pairs(tmp / HELDOUT_FILES[task], pairs)
    write_json(tmp / "vocab_split.json", split)
    for child in ("model", "tokenizer", "saes", "vocab_split.json", *HELDOUT_FILES.values()):
        dst = out / child
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        (tmp / child).rename(dst)
    shutil.rmtree(tmp)
    bundle_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20

    info = {
        "command": command, "seed": args.seed, "config": cfg_kwargs, "n_params": n_parameters(model),
        "corpus": corpus_info,
        "train": {"lr": args.lr, "batch": args.batch, "steps": args.steps,
                  "final_loss": sum(losses[-100:]) / len(losses[-100:]), "seconds": train_seconds,
                  "threads": args.threads},
        "split": split,
        "behaviour": {t: {k: v for k, v in r.items() if k != "values"} for t, r in results.items()},
        "ioi_heldout_names": ht, "ioi_train_reference": ref["all"],
        "sae": {"d_sae": args.d_sae, "k": args.k, "steps": args.sae_steps, "batch": args.sae_batch,
                "lr": args.sae_lr, "n_tokens": n_tokens, "n_sentences": len(sae_data),
                "seconds": sae_seconds, "sites": sae_rows},
        "bundle_mb": bundle_mb,
    }
    write_card(out, info)
    bundle_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    info["bundle_mb"] = bundle_mb
    write_card(out, info)
    log(f"bundle written to {out} ({bundle_mb:.1f} MB)")
    print(json.dumps({k: info[k] for k in ("corpus", "train", "behaviour", "ioi_heldout_names", "ioi_train_reference", "bundle_mb")},
                     indent=1))
    print(json.dumps(sae_rows, indent=1))
    return info


if __name__ == "__main__":
    main()
