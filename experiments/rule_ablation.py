"""Which LRP rule helps or hurts? Correlation with exact patching of AtP, RelP, and RelP with each
rule switched off (and each rule alone), per site kind, at component level.

    python experiments/rule_ablation.py --model tiny --task ioi --n 32
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from featcirc.attribution import AttributionSettings, LRPRules, Method, attribute
from featcirc.data import load_pairs
from featcirc.evaluate.stats import pearson
from featcirc.models import load_model

RULES = ("ln", "attention", "activation", "gate")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    data = load_pairs(model, task=args.task, n=args.n, batch_size=args.batch_size)
    settings = AttributionSettings(level="component", pair_effects=True, progress=False)
    print(f"{args.model}, {data.summary()}")

    def cells(method):
        nodes, _ = attribute(model, data, method, edges=False, settings=settings)
        return {k.split("/")[0]: v.numpy() for k, (v, _) in nodes.cell_groups().items()}

    ref = cells("exact")
    variants = {"atp": cells("atp"), "relp (all rules)": cells("relp")}
    for r in RULES:
        without = dataclasses.replace(LRPRules(), **{r: False})
        only = LRPRules(**{k: k == r for k in RULES})
        variants[f"relp without {r}"] = cells(Method(f"relp-no-{r}", "gradient", without))
        variants[f"relp with only {r}"] = cells(Method(f"relp-only-{r}", "gradient", only))
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
