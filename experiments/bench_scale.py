"""Peak memory and wall time of ``featcirc discover`` against the number of prompt pairs (issue 10).

Runs ``featcirc discover`` on the tiny model (RelP, feature level, SVA nounpp, edges among the top
``--max-nodes`` nodes) in a fresh process per size, one size after another, and reads each process's
peak resident memory from the kernel (``os.wait4``'s ``ru_maxrss``) and its phases from
``summary.json``. Scores are accumulated over batches, so the attribution itself should not grow with
the number of pairs beyond one batch's working set; what may grow is listed per run:

- the node pass's per-batch records kept for the edge pass (``AttributionSettings.record_bytes``,
  1 GiB by default; beyond it the edge pass recomputes them batch by batch), bounded by
  ``--max-memory`` (which also sets the batch size and rows that fit);
- the held-out pairs on which ``summary.json``'s faithfulness is measured (``--eval-pairs`` caps them).

With ``--demo-threads 1,2,0`` it times ``featcirc demo`` instead, with each ``--threads`` value
(0: torch's own default, one thread per core), the values interleaved over ``--repeats`` rounds so
that a changing background load hits them alike; ``OMP_NUM_THREADS`` is removed from the runs'
environment.

Usage::

    python experiments/bench_scale.py                       # 125, 250, 500, 1000 pairs, default settings
    python experiments/bench_scale.py --extra "--max-memory 300MB --eval-pairs 125" --label budget
    python experiments/bench_scale.py --demo-threads 1,2,0 --repeats 3 --label threads

Prints one line per run and writes ``experiments/results/scale/<label>.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scale"


def run_discover(n_pairs: int, out: Path, extra: list[str], threads: int) -> dict:
    cmd = [sys.executable, "-m", "featcirc", "-q", "--threads", str(threads), "discover", "--model", "tiny",
           "--saes", "tiny", "--task", "sva-nounpp", "--pairs", str(n_pairs), "--method", "relp",
           "--batch-size", "16", "--device", "cpu", *extra, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"discover failed ({' '.join(map(shlex.quote, cmd))}):\n{stdout}\n{stderr}")
    summ = json.loads((out / "summary.json").read_text())
    return dict(pairs=n_pairs, peak_rss_mib=usage.ru_maxrss / 1024, wall_s=wall,
                eval_pairs=summ["eval_pairs"], seconds=summ["seconds"], n_nodes_scored=summ["n_nodes_scored"],
                n_edges_scored=summ["n_edges_scored"])


def time_demo(threads: int, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``featcirc -q --threads N demo`` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "featcirc", "-q", "--threads", str(threads), "demo", "--out", str(out), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"demo failed: {proc.stderr.read()}")
    return wall, usage.ru_utime + usage.ru_stime


def demo_threads(values: list[int], repeats: int, label: str) -> None:
    import statistics

    load = os.getloadavg()[0]
    lines = [f"featcirc demo (tiny model, defaults; its feature cards come from the card cache after the first demo), "
             f"--threads interleaved over {repeats} rounds; "
             f"{os.cpu_count()} CPUs, load average {load:.1f} at the start",
             f"{'threads':>8} {'wall s (each run)':>30} {'median wall s':>14} {'median CPU s':>13}"]
    print(lines[0], flush=True)
    times: dict[int, list[tuple[float, float]]] = {v: [] for v in values}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for v in values:
                times[v].append(time_demo(v, Path(tmp) / "demo"))
                print(f"round {r + 1}: --threads {v}: {times[v][-1][0]:.1f} s", flush=True)
    print(lines[1])
    base = statistics.median(w for w, _ in times[values[0]])
    for v in values:
        walls = [w for w, _ in times[v]]
        name = f"{v} (torch default)" if v == 0 else str(v)
        line = (f"{name:>8} {', '.join(f'{w:.1f}' for w in walls):>30} {statistics.median(walls):>14.1f} "
                f"{statistics.median(c for _, c in times[v]):>13.1f}   x{statistics.median(walls) / base:.2f}")
        lines.append(line)
        print(line)
    lines.append(f"load average at the end {os.getloadavg()[0]:.1f}; ratios are median wall time over --threads "
                 f"{values[0]}'s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{label}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"-> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="125,250,500,1000", help="numbers of discovery pairs")
    ap.add_argument("--extra", default="", help="more discover options, e.g. \"--max-memory 600MB\"")
    ap.add_argument("--label", default="default", help="results file name (experiments/results/scale/LABEL.txt)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    ap.add_argument("--demo-threads", default=None, help="time `featcirc demo` with these --threads values instead")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of --demo-threads")
    args = ap.parse_args()
    if args.demo_threads:
        demo_threads([int(v) for v in args.demo_threads.split(",")], args.repeats, args.label)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    extra = shlex.split(args.extra)
    lines = [f"featcirc discover, tiny model, RelP feature level, sva-nounpp, batch 16, {args.threads} thread(s); "
             f"extra options: {args.extra or '(none)'}",
             f"{'pairs':>6} {'eval pairs':>10} {'peak RSS MiB':>13} {'wall s':>8} {'nodes s':>8} {'edges s':>8} "
             f"{'faithfulness s':>15}"]
    print(lines[0], flush=True)
    print(lines[1], flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = run_discover(n, Path(tmp) / f"run{n}", extra, args.threads)
            rows.append(r)
            s = r["seconds"]
            line = (f"{n:>6} {r['eval_pairs']:>10} {r['peak_rss_mib']:>13.0f} {r['wall_s']:>8.1f} {s['nodes']:>8.1f} "
                    f"{s['edges']:>8.1f} {s['faithfulness']:>15.1f}")
            lines.append(line)
            print(line, flush=True)
    first, last = rows[0], rows[-1]
    growth = last["peak_rss_mib"] - first["peak_rss_mib"]
    per_pair = growth / (last["pairs"] - first["pairs"]) * 1024 if last["pairs"] != first["pairs"] else float("nan")
    tail = (f"peak RSS from {first['pairs']} to {last['pairs']} pairs: {first['peak_rss_mib']:.0f} -> "
            f"{last['peak_rss_mib']:.0f} MiB ({growth:+.0f} MiB, {per_pair:.0f} KiB per added pair)")
    lines.append(tail)
    print(tail)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.label}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
