"""``featcirc demo``: discover and evaluate a circuit on the bundled tiny model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from featcirc.commands.common import RunConfig
from featcirc.commands.discover import discover
from featcirc.commands.evaluate import evaluate


def demo(out: "str | Path" = "featcirc-demo", *, force: bool = False, task: str = "sva-nounpp",
         method: str = "relp", n: int = 32, max_nodes: int = 500, progress: bool = True) -> dict:
    """Discover and evaluate a circuit on the bundled tiny model with a built-in task."""
    from featcirc.models.tiny import heldout_path

    cfg = RunConfig(model="tiny", saes="tiny", method=method, level="feature", aggregation="none",
                    data=str(heldout_path(task)), n=n, top_k=100, max_nodes=max_nodes)
    summ = discover(cfg, out, force=force, progress=progress)
    points = evaluate(out, progress=progress)
    best = max(points, key=lambda p: (p.faithfulness >= 0.8, -p.n_nodes if p.faithfulness >= 0.8 else p.faithfulness))
    summ["faithfulness"] = [asdict(p) for p in points]
    summ["smallest_faithful"] = asdict(best)
    return summ


HELP = "discover + evaluate on the bundled tiny model (about a minute)"


def add_arguments(p) -> None:
    from featcirc.attribution.methods import method_names
    from featcirc.commands.common import TASK_CHOICES

    p.add_argument("--out", default="featcirc-demo")
    p.add_argument("--task", choices=TASK_CHOICES, default="sva-nounpp")
    p.add_argument("--method", choices=method_names(with_edges=True), default="relp")
    p.add_argument("--force", action="store_true")


def run(args, progress: bool) -> int:
    summ = demo(args.out, force=args.force, task=args.task, method=args.method, progress=progress)
    best = summ["smallest_faithful"]
    print(f"demo: {summ['method']} circuit on {summ['data']}: {summ['n_nodes']} nodes, "
          f"{summ['n_edges']} edges; smallest circuit with faithfulness >= 0.8: "
          f"{best['n_nodes']} nodes (F = {best['faithfulness']:.3f}) -> {args.out}/")
    return 0
