"""Train the bundled tiny transcoders ``saes/tiny-transcoders/tc.0 .. tc.3`` (docs/design.md §4b): one
ReLU transcoder per layer of the bundled tiny model (``featcirc.load_model("tiny")``), reading block L's
MLP input (ln2's output) and writing its output (``blocks.L.hook_mlp_out``), trained on the tiny corpus
by ``featcirc train-saes --transcoders`` (featcirc's own loop, :func:`featcirc.saes.training.train_transcoders`).

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/train_tiny_transcoders.py          # the shipped bundle
    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/train_tiny_transcoders.py --out /tmp/tc --tokens 25600

which runs (about two minutes on one CPU thread; seeded, so the same weights on the same torch):

    featcirc --threads 1 train-saes --model tiny --transcoders --corpus tiny --width 768 --tokens 307200 \\
        --seed 0 --out saes/tiny-transcoders --force

Width 768 (as the tiny SAEs), so the four transcoders take about 3.2 MB; 307,200 tokens is 1,200 steps
of 256 tokens (the tiny defaults' batch, learning rate and windows; about 1.6 passes over the corpus).
The card (``README.md``, ``metrics.json``) in the output directory has every number; this script prints
its table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLE = "saes/tiny-transcoders"
"""The bundle, relative to the repository (the script runs there, so the card's command is portable)."""


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=BUNDLE, help="output directory, relative to the repository (replaced)")
    ap.add_argument("--tokens", type=int, default=307_200, help="training tokens per transcoder")
    ap.add_argument("--width", type=int, default=768, help="features per transcoder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from featcirc.cli import main as featcirc_main

    os.chdir(REPO)
    rc = featcirc_main(["--threads", "1", "train-saes", "--model", "tiny", "--transcoders", "--corpus", "tiny",
                        "--width", str(args.width), "--tokens", str(args.tokens), "--seed", str(args.seed),
                        "--out", args.out, "--force"])
    if rc:
        return rc
    info = json.loads((Path(args.out) / "metrics.json").read_text())
    print("site   L0     FVE    CE recovered  CE clean / tc / zero   dead")
    for site, m in info["saes"].items():
        print(f"{site:6s} {m['l0']:5.1f}  {m['fve']:.3f}  {m['ce_recovered']:12.3f}  {m['ce_clean']:.3f} / "
              f"{m['ce_sae']:.3f} / {m['ce_zero']:.3f}  {m['dead_fraction']:.3f}")
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"{size / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
