"""Benchmark the metric on Gemma-3-270M (docs/design.md §2): logit difference from the two unembedding
columns (``featcirc.metric.logit_diff``) vs from the full 262,144-token logits (``logit_diff_full``).

One step = forward + backward on a batch of IOI prompts (all of one token length), with the gradient
taken with respect to the residual stream at ``blocks.0.hook_resid_pre`` (as attribution does;
weights are frozen). The two variants are run interleaved, after one warm-up each, and the script
prints the seconds of every repetition, the medians and best times and the speed-up
(full / two-column). It also
checks that both variants give the same metric and the same gradient.

    PYTHONPATH=. python experiments/bench_metric.py [--batch 16] [--reps 3] [--seed 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from featcirc.data import tokenize_pairs
from featcirc.io import write_json
from featcirc.metric import logit_diff, logit_diff_full
from featcirc.models.loading import load_model, model_info
from featcirc.data.tasks import ioi_pairs

MetricFn = Callable[[object, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ioi_batch(model, batch: int, seed: int):
    """``batch`` IOI pairs whose clean prompts share one token length (the first full length group)."""
    n = 8 * batch
    while True:
        data = tokenize_pairs(model, ioi_pairs(n, seed=seed), batch_size=batch)
        for b in data.batches:
            if b.clean.shape[0] == batch:
                return b
        n *= 2
        if n > 64 * batch:
            raise RuntimeError(f"no {batch} IOI pairs of one token length among {n // 2}; lower --batch")


def fwd_bwd(model, tokens: torch.Tensor, ca: torch.Tensor, pa: torch.Tensor, metric: MetricFn):
    """Forward + backward of ``metric(...).sum()``; returns (metric [B], grad at resid_pre 0, seconds)."""
    store: dict[str, torch.Tensor] = {}

    def leaf(act, hook):
        act = act.detach().requires_grad_(True)
        store["x"] = act
        return act

    t0 = time.perf_counter()
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", leaf)]):
        m = metric(model, tokens, ca, pa)
    m.sum().backward()
    seconds = time.perf_counter() - t0
    return m.detach(), store["x"].grad, seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the timings as JSON here (atomically)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    for p in model.parameters():
        p.requires_grad_(False)
    b = ioi_batch(model, args.batch, args.seed)
    tokens, ca, pa = b.clean, b.clean_answer, b.patch_answer
    print(f"batch: {tokens.shape[0]} IOI prompts x {tokens.shape[1]} tokens")

    variants: dict[str, MetricFn] = {"two_columns": logit_diff, "full_logits": logit_diff_full}
    results = {}
    for name, fn in variants.items():  # warm-up, and the values for the agreement check
        m, g, s = fwd_bwd(model, tokens, ca, pa, fn)
        results[name] = (m, g)
        print(f"warm-up {name}: {s:.2f} s")
    (m2, g2), (mf, gf) = results["two_columns"], results["full_logits"]
    metric_rel = ((m2 - mf).abs() / mf.abs().clamp_min(1e-3)).max().item()
    grad_rel = ((g2 - gf).norm() / gf.norm()).item()
    print(f"agreement: max relative metric diff {metric_rel:.2e}, relative gradient diff {grad_rel:.2e} "
          f"(|grad| = {gf.norm():.3g}, mean metric {mf.mean():.2f})")

    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, fn in variants.items():
            times[name].append(fwd_bwd(model, tokens, ca, pa, fn)[2])
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    ratio = med["full_logits"] / med["two_columns"]
    ratio_best = best["full_logits"] / best["two_columns"]
    for k, v in times.items():
        print(f"{k:12s} fwd+bwd: median {med[k]:.3f} s, best {best[k]:.3f} s  "
              f"(reps: {', '.join(f'{x:.3f}' for x in v)})")
    print(f"speed-up of the two-column metric over full logits: {ratio:.2f}x (medians), "
          f"{ratio_best:.2f}x (best of {args.reps}; less sensitive to other load on the machine)")

    summary = {"model": model_info(model), "batch": list(tokens.shape), "reps": args.reps, "seconds": times,
               "median_seconds": med, "best_seconds": best, "speedup": ratio, "speedup_best": ratio_best, "metric_rel_diff": metric_rel,
               "grad_rel_diff": grad_rel, "torch_threads": torch.get_num_threads()}
    if args.out:
        write_json(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
