"""``featcirc`` command line. Each command is a module of :mod:`featcirc.commands` with ``HELP``,
``add_arguments(parser)`` and ``run(args, progress) -> exit code``; :data:`COMMANDS` lists them."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

COMMANDS: tuple[str, ...] = ("discover", "evaluate", "export", "view", "compare", "demo", "train-saes", "features")
"""Command names, each a module ``featcirc.commands.<name>`` (``-`` in a name is ``_`` in its module)."""


def _module(name: str):
    return importlib.import_module(f"featcirc.commands.{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="featcirc", description=(
        "Sparse feature circuits: SAEs spliced with error nodes, RelP / IG / AtP / activation-patching "
        "attribution, pruned networkx circuits, faithfulness and export."))
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = _module(name)
        mod.add_arguments(sub.add_parser(name, help=mod.HELP, description=mod.HELP))
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="featcirc: %(message)s")
    from featcirc.models.loading import ModelLoadError

    try:
        return _module(args.command).run(args, progress=not args.quiet)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError, ModelLoadError) as e:
        print(f"featcirc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
