"""``featcirc`` command line. Each command is a module of :mod:`featcirc.commands` with ``HELP``,
``add_arguments(parser)`` and ``run(args, progress) -> exit code``; :data:`COMMANDS` lists them.

Conventions (docs/design.md §12): bad input is one line on stderr and exit 2, found before any model
loads (this module and the commands' checks import no torch); Ctrl-C (or SIGTERM) prints one line,
leaves every output as it was and exits 130 (143; SIGHUP, a closed terminal: 129); no traceback for
either. An output that cannot be written (disk full, quota, read-only, permission) is one line naming
the cause and the path, exit 2, and leaves nothing half-written; argparse's errors are one line too.
Options are never a prefix of ``torchrun``'s, so ``torchrun ... -m featcirc discover ...`` passes them
through (``--n``, kept as an alias of ``--pairs``, is the one exception: use ``--pairs`` under torchrun).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
from typing import Optional, Sequence

COMMANDS: tuple[str, ...] = ("discover", "evaluate", "export", "view", "compare", "demo", "train-saes", "features")
"""Command names, each a module ``featcirc.commands.<name>`` (``-`` in a name is ``_`` in its module)."""

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               NotADirectoryError, KeyError, ImportError)
"""Exceptions that are the input's fault: reported in one line, exit 2 (``ModelLoadError`` too)."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM) turned into an interrupt, so that cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _module(name: str):
    return importlib.import_module(f"featcirc.commands.{name.replace('-', '_')}")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``featcirc CMD: error: ...`` with a pointer to
    ``--help`` (argparse prints the whole usage first), exit 2; its subcommands' parsers are too."""

    def error(self, message: str):  # noqa: D102
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from featcirc.commands.common import DEFAULT_THREADS, HelpFormatter

    ap = Parser(prog="featcirc", formatter_class=HelpFormatter, description=(
        "Sparse feature circuits: SAEs spliced with error nodes, RelP / IG / AtP / activation-patching "
        "attribution, pruned networkx circuits, faithfulness and export."))
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help=f"torch CPU threads; 0: torch's default, one per core (default: OMP_NUM_THREADS when "
                         f"set, else {DEFAULT_THREADS}: faster than more threads on a small shared CPU)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = _module(name)
        mod.add_arguments(sub.add_parser(name, help=mod.HELP, description=mod.HELP, formatter_class=HelpFormatter))
    return ap


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, USER_ERRORS):
        return True
    loading = sys.modules.get("featcirc.models.loading")  # imported only if a model was asked for
    return loading is not None and isinstance(e, loading.ModelLoadError)


def _target(args) -> str:
    out = getattr(args, "out", None) or getattr(args, "dir", None)
    return str(out) if out else "the output"


def _raise_interrupted(signum, frame) -> None:  # noqa: ARG001
    raise Interrupted(signum)


INTERRUPT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
"""Ctrl-C, SIGTERM (a scheduler, ``kill``) and SIGHUP (the terminal closed): each one line, the outputs
left as they were, exit 128 + the signal's number (130, 143, 129)."""


def install_interrupt_handlers() -> dict:
    """Turn :data:`INTERRUPT_SIGNALS` into :class:`Interrupted` (a ``KeyboardInterrupt``) so cleanup
    runs; a signal the process was started ignoring (``nohup``: SIGHUP; a background job: SIGINT)
    stays ignored. Returns the previous handlers for :func:`restore_handlers` ({} outside the main
    thread, where signals are left alone)."""
    previous = {}
    try:
        for sig in INTERRUPT_SIGNALS:
            old = signal.getsignal(sig)
            if old == signal.SIG_IGN:
                continue
            signal.signal(sig, _raise_interrupted)
            previous[sig] = old
    except ValueError:  # not the main thread
        pass
    return previous


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _write_error(e: BaseException, args) -> Optional[str]:
    """The one-line message for a failure to write an output that is the machine's state (disk full,
    quota, read-only, permission: :func:`featcirc.io.write_failure`, also when wrapped), else None."""
    from featcirc.io import WRITE_ONLY_ERRNOS, WriteFailed, nearest_existing, write_failure

    if not isinstance(e, WriteFailed):  # raised outside featcirc.io's writers: a permission error may be a read
        target = getattr(args, "out", None) or getattr(args, "dir", None)
        e = write_failure(e, nearest_existing(target) if target else os.getcwd(), None, errnos=WRITE_ONLY_ERRNOS)
    if e is None:
        return None
    hint = ("free some space or choose another --out" if e.errno in (errno.ENOSPC, errno.EDQUOT)
            else "choose another --out")
    return f"cannot write {e.filename}: {e.strerror}; {hint}"


def log_level(quiet: bool, rank: Optional[str] = None) -> int:
    """INFO, WARNING with ``-q``; under torchrun (``RANK``) only rank 0 logs below ERROR, so a line
    is printed once, not once per process."""
    rank = os.environ.get("RANK", "0") if rank is None else rank
    if rank.strip() not in ("", "0"):
        return logging.ERROR
    return logging.WARNING if quiet else logging.INFO


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=log_level(args.quiet), format="featcirc: %(message)s")
    from featcirc.io import process_tempdir

    previous = install_interrupt_handlers()
    try:
        with process_tempdir():
            return _run(args)
    except KeyboardInterrupt as e:  # also one that came while the temporary files were removed
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"featcirc {args.command}: interrupted; nothing written to {_target(args)}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        restore_handlers(previous)


def _run(args) -> int:
    try:
        if args.threads is not None and args.threads < 0:
            raise ValueError(f"--threads must be a whole number >= 0 (0: torch's default), got {args.threads}")
        from featcirc.saes.fit import skipping  # --skip-fit-check reaches every load of SAEs (torch-free import)

        with skipping(bool(getattr(args, "skip_fit_check", False))):
            return _module(args.command).run(args, progress=not args.quiet)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"featcirc {args.command}: interrupted; nothing written to {_target(args)}", file=sys.stderr)
        return 128 + int(signum)
    except Exception as e:
        written = _write_error(e, args)
        if written is not None:
            print(f"featcirc {args.command}: error: {written}", file=sys.stderr)
            return 2
        if _is_user_error(e):
            print(f"featcirc {args.command}: error: {e}", file=sys.stderr)
            return 2
        if type(e).__name__ == "OutOfMemoryError":
            print(f"featcirc {args.command}: error: out of GPU memory ({e}); use a smaller --batch-size or "
                  "--max-nodes", file=sys.stderr)
            return 1
        raise

if __name__ == "__main__":
    sys.exit(main())
