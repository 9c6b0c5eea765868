"""Atomic output: every result file is written to a temporary file beside its target and renamed
(:func:`atomic_path`, :func:`write_text`, :func:`write_json`, :func:`atomic_paths` for a set of
files), and a whole run directory is built beside its target and moved into place when complete
(:func:`staged_dir`), so a crash or Ctrl-C never leaves a half-written file or run behind.

Files come out with the permissions any ``open(path, "w")`` would give them: ``0o666`` minus the
process umask (``tempfile.mkstemp`` alone would make them ``0o600``, readable by their owner only).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_UMASK_RE = re.compile(r"^Umask:\s*([0-7]+)\s*$", re.M)


def current_umask() -> int:
    """The process umask. Read from ``/proc/self/status`` where Linux has it (no global state
    touched); elsewhere set and restored with ``os.umask`` (not thread-safe for that instant)."""
    try:
        m = _UMASK_RE.search(Path("/proc/self/status").read_text())
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Permission bits of a newly created regular file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: "str | os.PathLike[str]") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success.

    The temporary file is created with :func:`new_file_mode` permissions (the user's umask), so the
    renamed result has the same mode as a file written directly. On an exception the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def jsonable(x: Any) -> Any:
    """Strict-JSON copy of ``x``: non-finite floats -> ``None``, tuples -> lists, dict keys -> str,
    numpy / torch scalars -> Python numbers, other objects -> ``str``, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return jsonable(float(x))
    return str(x)  # anything else (e.g. a tensor in ``info``) as text


def write_text(path: "str | os.PathLike[str]", text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: "str | os.PathLike[str]", obj: Any, indent: "int | None" = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_paths(*paths: "str | os.PathLike[str]") -> "contextlib.AbstractContextManager[list[Path]]":
    """:func:`atomic_path` for several files at once: yields their temporary paths; all are renamed
    into place when the block completes, none when it raises (a result set is never half replaced
    by a crash in the middle of writing it)."""

    @contextmanager
    def group() -> Iterator[list[Path]]:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(atomic_path(p)) for p in paths]

    return group()


def check_out_dir(out: "str | os.PathLike[str]", force: bool, *, option: str = "--out") -> Path:
    """Check, without writing anything, that a run can later be moved to ``out``: ``out`` is not a
    file, holds no results unless ``force`` (an empty directory is fine), and its nearest existing
    ancestor is a directory this process may write to. Raises ``FileExistsError`` /
    :class:`OutputDirError` (a ``ValueError``) saying what to do."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{option} {out} is a file; give a directory (it will hold the run)")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise OutputDirError(f"{option} {out} is the working directory or one of its parents; a run replaces "
                             f"its {option} as a whole: give a new directory such as runs/NAME")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} already holds results; pass --force to replace them (the old run is "
                              f"replaced only once the new one is complete) or choose another {option} directory")
    base = out.parent.absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot write {option} {out}: {base} is not a directory this user may write to")
    return out


class OutputDirError(ValueError):
    """An output directory that cannot be written."""


def _sigint_ignored():
    """Ignore Ctrl-C for the duration (cleaning up after an interrupt must not be interrupted);
    a no-op outside the main thread."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        return contextlib.nullcontext()

    @contextmanager
    def restore() -> Iterator[None]:
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    return restore()


@contextmanager
def staged_dir(out: "str | os.PathLike[str]", *, force: bool = False) -> Iterator[Path]:
    """Build a run directory in a hidden temporary sibling of ``out`` (``.NAME.partial-PID-*``) and move
    it onto ``out`` when the block completes (docs/design.md §12).

    An exception or Ctrl-C inside the block removes the temporary directory (and parent directories
    created for it) and leaves ``out`` as it was: absent, or the previous complete run. With
    ``force`` an existing ``out`` is replaced only at that last moment (renamed aside, the new run
    renamed in, the old one deleted). The directory gets the permissions of a plain ``mkdir`` (the
    user's umask). A process killed outright (SIGKILL) leaves only the hidden sibling behind, named with
    its PID; the next run into the same ``out`` removes it.
    """
    out = Path(out)
    check_out_dir(out, force)
    parent = out.parent.absolute()
    created = []
    p = parent
    while not p.exists():
        created.append(p)
        p = p.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(parent, out.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        _move_into_place(tmp, out, force)
    except BaseException:
        with _sigint_ignored():
            shutil.rmtree(tmp, ignore_errors=True)
            for d in created:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    break
        raise


def _remove_stale_partials(parent: Path, name: str) -> None:
    """Delete ``.NAME.partial-PID-*`` directories left by runs of ``name`` whose process is gone (killed
    outright): a run in progress (its PID alive) is left alone."""
    for d in parent.glob(f".{name}.partial-*-*"):
        pid = d.name[len(f".{name}.partial-"):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive but not ours (EPERM): leave it
            pass


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` onto ``out``; an existing non-empty ``out`` (allowed by ``force``) is renamed
    aside first and deleted once the new one is in place (restored if that fails)."""
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} was filled by someone else while this run was working; "
                                  "nothing was replaced: rerun with --force or another --out")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # onto nothing, or onto an empty directory
