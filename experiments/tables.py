"""Print the README's result tables (markdown) from the `featcirc compare` outputs in experiments/results/.

    python experiments/tables.py          # after bash experiments/reproduce.sh [tiny|gemma|all]
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
RUNS = [  # (label, component-level run, feature-level run)
    ("tiny, IOI", "tiny-ioi-component", "tiny-ioi-feature"),
    ("tiny, SVA nounpp", "tiny-sva-nounpp-component", "tiny-sva-nounpp-feature"),
    ("Gemma-3-270M, IOI", "gemma-ioi-component", "gemma-ioi-feature"),
    ("Gemma-3-270M, SVA nounpp", "gemma-sva-nounpp-component", "gemma-sva-nounpp-feature"),
]
METHODS = ("atp", "relp", "ig")
# A run directory holding this file has a stale Spearman (see the file): shown as a dash with a footnote.
# Rerunning the compare replaces the directory, and the file with it.
STALE_SPEARMAN = "STALE_SPEARMAN.md"
STALE_NOTE = ("† Spearman not shown: the stored values were computed with arbitrary tie-breaking (cells of "
              "equal score ranked by their position, before average ranks were used) and have not been "
              "recomputed since; rerun `bash experiments/reproduce.sh gemma` (it needs the gemma-3-270m-local "
              "SAEs, `bash experiments/train_gemma_saes.sh`, ~1 hour).")


def rows(run: str, name: str) -> list[dict]:
    path = R / run / name
    return list(csv.DictReader(path.open())) if path.exists() else []


def cell(r: dict, stale_spearman: bool = False) -> str:
    f = lambda k: float(r[k])  # noqa: E731
    rho = "–†" if stale_spearman else f"{f('spearman_r'):.2f}"
    return f"{f('pearson_r'):.2f} [{f('pearson_lo'):.2f}, {f('pearson_hi'):.2f}] / {rho}"


def correlations(level: str) -> None:
    print(f"\n{level} level: Pearson [95% CI over pairs] / Spearman against exact patching\n")
    print("| model, task | pairs | site | node | " + " | ".join({"atp": "AtP", "relp": "RelP", "ig": "IG"}[m] for m in METHODS) + " |")
    print("|---|---|---|---|" + "---|" * len(METHODS))
    any_stale = False
    for label, comp, feat in RUNS:
        run = comp if level == "component" else feat
        got = rows(run, "correlations.csv")
        if not got or "node_kind" not in got[0]:  # absent, or written by an older featcirc
            continue
        n_pairs = got[0].get("n_pairs", "")
        stale = (R / run / STALE_SPEARMAN).exists()
        any_stale |= stale
        groups = sorted({(r["site_kind"], r["node_kind"]) for r in got}, key=lambda g: (
            ["embed", "attn", "z", "mlp", "resid"].index(g[0]), g[1]))
        for i, (site, node) in enumerate(groups):
            by = {r["method"]: r for r in got if (r["site_kind"], r["node_kind"]) == (site, node)}
            cells = [cell(by[m], stale) if m in by else "–" for m in METHODS]
            print(f"| {label if i == 0 else ''} | {n_pairs if i == 0 else ''} | {site} | {node} | " + " | ".join(cells) + " |")
    if any_stale:
        print(f"\n{STALE_NOTE}")


def faithfulness() -> None:
    print("\nFaithfulness of each method's circuits on held-out pairs (CPR higher is better, CMD lower is "
          "better, 95% CI over pairs) and wall time of nodes + edges\n")
    print("| model, task | ablation, held-out pairs | method | CPR | CMD | nodes + edges (s) | / IG time |")
    print("|---|---|---|---|---|---|---|")
    for label, _, feat in RUNS:
        cost = {r["method"]: r for r in rows(feat, "cost.csv")}
        if not cost:
            continue
        f = json.loads((R / feat / "compare.json").read_text()).get("faithfulness", {})
        ig_time = float(cost["ig"]["total_seconds"]) if "ig" in cost else float("nan")
        for i, m in enumerate(METHODS):
            if m not in cost:
                continue
            c = cost[m]
            v = lambda k: float(c[k])  # noqa: E731
            print(f"| {label if i == 0 else ''} | {(f.get('ablation', '') + ', ' + str(f.get('pairs', ''))) if i == 0 else ''} "
                  f"| {m} | {v('cpr'):.3f} [{v('cpr_lo'):.3f}, {v('cpr_hi'):.3f}] | {v('cmd'):.3f} [{v('cmd_lo'):.3f}, "
                  f"{v('cmd_hi'):.3f}] | {v('total_seconds'):.1f} | {v('total_seconds') / ig_time:.3f} |")


if __name__ == "__main__":
    correlations("component")
    correlations("feature")
    faithfulness()
