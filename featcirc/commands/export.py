"""``featcirc export``: re-export a discovered circuit (no model needed)."""

from __future__ import annotations

from pathlib import Path


def export_run(run_dir: "str | Path", fmt: str) -> Path:
    """Re-export a run's ``circuit.json`` in another format (no model needed)."""
    from featcirc.export.formats import read_json, write_dot, write_graphml, write_json as write_graph_json
    from featcirc.export.formats import write_neuronpedia

    run_dir = Path(run_dir)
    src = run_dir / "circuit.json"
    if not src.exists():
        raise FileNotFoundError(f"{src} not found; run `featcirc discover ... --out {run_dir}` first")
    C = read_json(src)
    if fmt == "graphml":
        return write_graphml(C, run_dir / "circuit.graphml")
    if fmt == "dot":
        return write_dot(C, run_dir / "circuit.dot")
    if fmt == "json":
        return write_graph_json(C, run_dir / "circuit.json")
    if fmt == "neuronpedia":
        import json

        meta = json.loads((run_dir / "neuronpedia.json").read_text())["metadata"] if (
            run_dir / "neuronpedia.json").exists() else {}
        return write_neuronpedia(C, run_dir / "neuronpedia.json",
                                 slug=meta.get("slug", "featcirc-circuit"),
                                 prompt=meta.get("prompt", ""),
                                 prompt_tokens=meta.get("prompt_tokens", []))
    raise ValueError(f"unknown format {fmt!r}; choose graphml, dot, json or neuronpedia")


HELP = "re-export a discovered circuit"


def add_arguments(p) -> None:
    p.add_argument("dir")
    p.add_argument("--format", choices=("graphml", "dot", "json", "neuronpedia"), required=True)


def run(args, progress: bool) -> int:  # noqa: ARG001
    print(export_run(args.dir, args.format))
    return 0
