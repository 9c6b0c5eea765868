"""Which LRP rule helps or hurts? Correlation with exact patching of AtP, RelP, and RelP with each
rule switched off (and each rule alone), per site kind, at component level.

    python experiments/rule_ablation.py --model tiny --task ioi --n 32
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from featcirc.attribution.nodes import ScoreSettings, make_splice, score_nodes_with_splice
from featcirc.data import load_pairs
from featcirc.models.loading import load_model
from featcirc.attribution.rules import LRPRules
from featcirc.evaluate.stats import pearson, score_cells

RULES = ("ln", "attention", "activation", "gate")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    model = load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    data = load_pairs(model, task=args.task, n=args.n, batch_size=args.batch_size)
    splice = make_splice(model, "component")
    print(f"{args.model}, {data.summary()}")

    def cells(method: str, rules: LRPRules = LRPRules()):
        s = ScoreSettings(method, "component", "none", rules=rules)
        return score_cells(score_nodes_with_splice(splice, data, s, progress=False, keep_records=True)[1], "component")

    ref = cells("exact")
    variants = {"atp": cells("atp"), "relp (all rules)": cells("relp")}
    for r in RULES:
        variants[f"relp without {r}"] = cells("relp", dataclasses.replace(LRPRules(), **{r: False}))
        variants[f"relp with only {r}"] = cells("relp", LRPRules(**{k: k == r for k in RULES}))
    kinds = sorted(ref)
    print(f"{'variant':28s}" + "".join(f"{k:>9s}" for k in kinds))
    for name, c in variants.items():
        rs = []
        for k in kinds:
            keep = (ref[k] != 0) | (c[k] != 0)
            rs.append(pearson(ref[k][keep], c[k][keep]))
        print(f"{name:28s}" + "".join(f"{r:9.3f}" if np.isfinite(r) else f"{'nan':>9s}" for r in rs))


if __name__ == "__main__":
    main()
