"""One table of ``featcirc compare`` runs (feature level): per run and ablation, F of RelP's threshold
circuits at 50/100/200 nodes and the smallest size with F >= 0.8 (held-out pairs, 95% intervals, from
``sizes.csv``); Pearson r of RelP and IG with exact per site kind and node kind (``correlations.csv``);
seconds per method, nodes + edges (``cost.csv``).

    python experiments/size_table.py RUN [RUN ...] [--copy-to DIR]   # --copy-to: keep the three CSVs per run
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--copy-to", type=Path, default=None)
    a = ap.parse_args()
    print("F: RelP threshold circuits on the held-out pairs [95% interval]; smallest: nodes for F >= 0.8 ('-': none up to --max-nodes)")
    for run in a.runs:
        if a.copy_to is not None:
            (a.copy_to / run.name).mkdir(parents=True, exist_ok=True)
            for name in ("sizes.csv", "correlations.csv", "cost.csv"):
                shutil.copy(run / name, a.copy_to / run.name / name)
        print(f"\n{run.name}")
        for r in rows(run / "sizes.csv"):
            if r["pruner"] != "threshold" or r["method"] not in ("relp", "atp", "ig"):
                continue
            f = lambda k: f"{float(r[f'f{k}']):.2f} [{float(r[f'f{k}_lo']):.2f}, {float(r[f'f{k}_hi']):.2f}]"  # noqa: E731
            print(f"  {r['method']:5s} {r['ablation']:6s} F@50 {f(50)}  F@100 {f(100)}  F@200 {f(200)}  "
                  f"smallest {r['smallest_f08'] or '-'}")
        corr = [r for r in rows(run / "correlations.csv") if r["method"] in ("relp", "ig", "atp") and r["pearson_r"]]
        for kind in sorted({(r["site_kind"], r["node_kind"]) for r in corr}):
            got = {r["method"]: float(r["pearson_r"]) for r in corr if (r["site_kind"], r["node_kind"]) == kind}
            print(f"  r with exact, {kind[0]:5s} {kind[1]:8s} " + "  ".join(f"{m} {got[m]:.2f}" for m in ("atp", "relp", "ig") if m in got))
        cost = rows(run / "cost.csv")
        print("  seconds (nodes + edges): " + ", ".join(f"{r['method']} {float(r['total_seconds'] or r['seconds']):.1f}" for r in cost))


if __name__ == "__main__":
    main()
