"""Data-parallel throughput: attribution (nodes + edges) in pairs per second with 1 and 2 processes on
the same data, ratios measured in one run.

One ``torchrun --nproc-per-node 2`` launch (gloo, one torch thread a process) runs, interleaved
``--reps`` times after a warm-up: the whole dataset in rank 0 alone (rank 1 waits at a barrier), and
the data-parallel run on both ranks; with ``--compare-threads`` also rank 0 alone with 2 torch
threads. Interleaving keeps the comparison fair on a machine whose load changes. Wall seconds are
medians; CPU seconds are summed over the ranks that work (their ratio is the parallel overhead,
whatever else runs on the machine). The data-parallel scores are checked against the single ones.

    python experiments/bench_distributed.py [--pairs 128] [--method relp] [--max-nodes 300] [--reps 3]
                                            [--compare-threads]

Writes ``experiments/results/distributed/bench.txt`` and ``bench.json`` (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "distributed"
SINGLE, PARALLEL, THREADS = "1 process x 1 thread", "2 processes x 1 thread", "1 process x 2 threads"


def _worker(args: argparse.Namespace) -> None:
    """One rank of the launch; rank 0 writes the timings and a comparison of the scores to ``args.worker``."""
    import numpy as np
    import torch

    from featcirc.attribution import AttributionSettings, attribute
    from featcirc.data import load_pairs
    from featcirc.distributed import context
    from featcirc.models import load_model
    from featcirc.saes import load_saes

    torch.set_num_threads(1)
    with context("cpu") as ctx:
        model = load_model(args.model)
        saes = load_saes(model, args.saes) if args.saes != "none" else None
        data = load_pairs(model, task=args.task, n=args.pairs, seed=0, batch_size=args.batch_size)
        settings = AttributionSettings(level="feature" if saes else "component", max_nodes=args.max_nodes,
                                       progress=False)

        def single(threads: int):
            """Rank 0 alone on the whole dataset (rank 1 waits)."""
            if not ctx.is_main:
                return None
            torch.set_num_threads(threads)
            try:
                return attribute(model, data, args.method, saes, settings=settings)
            finally:
                torch.set_num_threads(1)

        configs = {SINGLE: lambda: single(1), PARALLEL: lambda: ctx.attribute(model, data, args.method, saes,
                                                                              settings=settings)}
        if args.compare_threads:
            configs[THREADS] = lambda: single(2)
        wall: dict[str, list[float]] = {k: [] for k in configs}
        cpu: dict[str, list[float]] = {k: [] for k in configs}
        scores = {}
        for rep in range(args.reps + 1):  # rep 0 warms up
            order = list(configs) if rep % 2 else list(reversed(configs))
            for name in order:
                ctx.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                result = configs[name]()
                c1 = time.process_time()
                ctx.barrier()
                t1 = time.perf_counter()
                spent = ctx.reduce({"cpu": torch.tensor([c1 - c0], dtype=torch.float64)})["cpu"].item()
                if rep:
                    wall[name].append(t1 - t0)
                    cpu[name].append(spent)
                if result is not None:
                    scores[name] = result
        if ctx.is_main:
            (n1, e1), (n2, e2) = scores[SINGLE], scores[PARALLEL]
            same_edges = e1.nodes == e2.nodes and len(e1) == len(e2)
            diffs = [float((n2.vectors[s] - v).abs().max() / v.abs().max().clamp(min=1e-30))
                     for s, v in n1.vectors.items()]
            diffs += [float((n2.features[s] - v).abs().max() / v.abs().max().clamp(min=1e-30))
                      for s, v in n1.features.items()]
            if same_edges:
                diffs.append(float((e2.weight - e1.weight).abs().max() / e1.weight.abs().max().clamp(min=1e-30)))
            Path(args.worker).write_text(json.dumps(dict(
                wall=wall, cpu=cpu, n_pairs=data.n_pairs, n_edges=len(e1), same_edges=same_edges,
                max_relative_difference=float(np.max(diffs)) if same_edges else float("inf"))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--saes", default="tiny", help="'none' for component level")
    ap.add_argument("--task", default="sva-nounpp")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--method", default="relp")
    ap.add_argument("--max-nodes", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compare-threads", action="store_true", help="also time 1 process with 2 torch threads")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run as one rank, rank 0 writes here
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return

    from featcirc.io import write_json, write_text

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
               "--worker", str(out)]
        for k in ("model", "saes", "task", "pairs", "batch_size", "method", "max_nodes", "reps"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        cmd += ["--compare-threads"] if args.compare_threads else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
                              capture_output=True, text=True)
        launch = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"the launch failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        res = json.loads(out.read_text())
    n = res["n_pairs"]
    rows = {name: dict(seconds=statistics.median(w), pairs_per_s=n / statistics.median(w),
                       cpu_seconds=statistics.median(res["cpu"][name]), runs=w) for name, w in res["wall"].items()}
    one, two = rows[SINGLE], rows[PARALLEL]
    ratio = two["pairs_per_s"] / one["pairs_per_s"]
    lines = [f"featcirc data-parallel attribution: {args.model} model, saes {args.saes}, task {args.task}, {n} pairs, "
             f"batch {args.batch_size}, {args.method} nodes + edges (max_nodes {args.max_nodes}); "
             f"medians of {args.reps} interleaved runs after a warm-up",
             f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; the whole launch (imports, loading, "
             f"every run) took {launch:.0f} s",
             "",
             f"{'configuration':<26}{'wall s':>8}{'pairs/s':>9}{'CPU s':>8}"]
    lines += [f"{name:<26}{r['seconds']:>8.2f}{r['pairs_per_s']:>9.1f}{r['cpu_seconds']:>8.2f}"
              for name, r in rows.items()]
    lines += ["",
              f"throughput ratio, 2 processes / 1 process: {ratio:.2f}",
              f"CPU seconds ratio, 2 processes / 1 process: {two['cpu_seconds'] / one['cpu_seconds']:.2f} "
              "(1.00: no parallel overhead)"]
    if THREADS in rows:
        lines.append(f"throughput ratio, 1 process with 2 threads / 1 thread: "
                     f"{rows[THREADS]['pairs_per_s'] / one['pairs_per_s']:.2f}")
    lines.append(f"2-process scores vs 1-process: max relative difference {res['max_relative_difference']:.2e} "
                 f"(node scores and {res['n_edges']} edge weights, same edges: {res['same_edges']})")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    write_text(args.out / "bench.txt", text)
    write_json(args.out / "bench.json", dict(
        settings={k: getattr(args, k) for k in ("model", "saes", "task", "pairs", "batch_size", "method",
                                               "max_nodes", "reps", "compare_threads")},
        configurations=rows, ratio_2proc_over_1proc=ratio, max_relative_difference=res["max_relative_difference"],
        cpu_count=os.cpu_count(), load_average=os.getloadavg(), launch_seconds=launch))


if __name__ == "__main__":
    main()
