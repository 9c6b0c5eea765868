"""Atomic output: every result file is written to a temporary file beside its target and renamed
(:func:`atomic_path`, :func:`write_text`, :func:`write_json`, :func:`atomic_paths` for a set of
files), and a whole run directory is built beside its target and moved into place when complete
(:func:`staged_dir`), so a crash or Ctrl-C never leaves a half-written file or run behind.

Files come out with the permissions any ``open(path, "w")`` would give them: ``0o666`` minus the
process umask (``tempfile.mkstemp`` alone would make them ``0o600``, readable by their owner only).
"""

from __future__ import annotations

import contextlib
import errno
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
    except Exception as e:
        failed = write_failure(e, tmp_path.parent, path)  # judged before the partial file is removed
        if failed is None:
            raise
        raise failed from e
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
    ancestor is a directory this process can create files in (:func:`writable_dir_problem`: the
    permission bits, a read-only file system, root included). A symbolic link ``out`` stands for the
    directory it points to (:func:`run_target`): that is what a run replaces, the link stays.
    Raises ``FileExistsError`` / :class:`OutputDirError` (a ``ValueError``) saying what to do."""
    out = Path(out)
    target = run_target(out)
    if target.exists() and not target.is_dir():
        raise OutputDirError(f"{option} {out} is a file; give a directory (it will hold the run)")
    if Path.cwd().resolve().is_relative_to(target.resolve()):
        raise OutputDirError(f"{option} {out} is the working directory or one of its parents; a run replaces "
                             f"its {option} as a whole: give a new directory such as runs/NAME")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise FileExistsError(f"{out} already holds results; pass --force to replace them (the old run is "
                              f"replaced only once the new one is complete) or choose another {option} directory")
    check_writable_dir(target.parent, option=option, out=out)
    return out


def run_target(out: "str | os.PathLike[str]") -> Path:
    """The directory a run into ``out`` builds and replaces: ``out`` itself, or where ``out`` points
    when it is a symbolic link (so ``--force`` replaces the run behind the link and keeps the link)."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def nearest_existing(path: "str | os.PathLike[str]") -> Path:
    """``path`` (made absolute) or its nearest ancestor that exists."""
    base = Path(path).absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    return base


def writable_dir_problem(directory: "str | os.PathLike[str]") -> "str | None":
    """Why no file can be created in the existing ``directory`` (None: one can). Besides
    ``os.access`` (the permission bits; for root only a read-only file system fails it) an unnamed
    file is created and dropped (``O_TMPFILE`` where Linux has it, so nothing is ever left behind,
    even by a killed process): that is the only check that sees ACLs, read-only bind mounts and quota."""
    d = Path(directory)
    if not d.is_dir():
        return "not a directory"
    if not os.access(d, os.W_OK | os.X_OK):
        return "read-only file system" if _read_only_fs(d) else "not a directory this user may write to"
    try:
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        return _ERRNO_CAUSES.get(e.errno, e.strerror or str(e))
    return None


def _read_only_fs(d: Path) -> bool:
    try:
        return bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_writable_dir(directory: "str | os.PathLike[str]", *, option: str = "--out",
                       out: "str | os.PathLike[str] | None" = None) -> Path:
    """Raise :class:`OutputDirError` unless files can be created in ``directory`` or, where it does
    not exist yet, in its nearest existing ancestor (which will hold the directories made for it).
    ``out``: what the user gave, for the message. Writes nothing that stays."""
    base = nearest_existing(directory)
    problem = writable_dir_problem(base)
    if problem is not None:
        shown = out if out is not None else directory
        why = problem if problem.startswith("not ") else f"not writable ({problem})"
        raise OutputDirError(f"cannot write {option} {shown}: {base} is {why}; choose another place")
    return Path(directory)


def check_writable_file(path: "str | os.PathLike[str]", *, option: str = "--out") -> Path:
    """:func:`check_writable_dir` for a file to be written atomically at ``path`` (its directory)."""
    path = Path(path)
    check_writable_dir(path.parent, option=option, out=path)
    return path


_ERRNO_CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}
"""Errors of writing that are the machine's state, not a bug: reported in one line naming the cause."""

_IO_WORDS = re.compile(r"unexpected pos|PytorchStreamWriter|iostream|write|space", re.I)

LOW_SPACE_BYTES = 4 << 20
"""A failed write where less than this is free is taken for a full disk (torch's writer says only
``unexpected pos N vs M``)."""


def free_bytes(path: "str | os.PathLike[str]") -> "int | None":
    """Bytes this process may still write on the file system of ``path`` (root may use the blocks
    reserved for it); None where unknown."""
    try:
        st = os.statvfs(nearest_existing(path))
    except (OSError, AttributeError):
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen and len(seen) < 16:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
"""The causes that only a write can have (a permission error may be a failed read)."""


def write_failure(e: BaseException, where: "str | os.PathLike[str]",
                  target: "str | os.PathLike[str] | None" = None, *,
                  errnos: "frozenset[int] | None" = None) -> "OSError | None":
    """An ``OSError`` naming the cause when ``e`` is a failure to write at ``where`` that is the
    machine's state (disk full, quota, read-only, permission; also when wrapped, like torch's
    ``RuntimeError: ... unexpected pos`` of a file that did not fit, judged by the free space left at
    ``where``); None for anything else. ``target``: the path to name (default ``where``); ``errnos``:
    the causes to recognise (default all of :data:`_ERRNO_CAUSES`; :data:`WRITE_ONLY_ERRNOS` where
    ``e`` may come from reading)."""
    errnos = _ERRNO_CAUSES.keys() if errnos is None else errnos
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in errnos:
            return WriteFailed(x.errno, _ERRNO_CAUSES[x.errno], str(target or x.filename or where))
    if any(isinstance(x, OSError) or (isinstance(x, RuntimeError) and _IO_WORDS.search(str(x)))
           for x in _chain(e)):
        free = free_bytes(where)
        if free is not None and free < LOW_SPACE_BYTES:
            return WriteFailed(errno.ENOSPC, _ERRNO_CAUSES[errno.ENOSPC], str(target or where))
    return None


class WriteFailed(OSError):
    """Writing an output failed for a reason outside the program (disk full, read-only, ...):
    ``errno``, ``strerror`` (the cause in words) and ``filename`` (the output)."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


class OutputDirError(ValueError):
    """An output directory that cannot be written."""


CLEANUP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextmanager
def signals_ignored(signals=CLEANUP_SIGNALS) -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP for the duration (cleaning up after an interrupt must not be
    interrupted), then put the previous handlers back; a no-op outside the main thread."""
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


_sigint_ignored = signals_ignored  # the former name


@contextmanager
def staged_dir(out: "str | os.PathLike[str]", *, force: bool = False, replace: bool = False) -> Iterator[Path]:
    """Build a run directory in a hidden temporary sibling of ``out`` (``.NAME.partial-PID-*``) and move
    it onto ``out`` when the block completes (docs/design.md §12). The one way featcirc replaces a
    directory: runs, trained SAE sets, each SAE of :func:`featcirc.saes.save_saes`, the Gemma cache's
    tokenizer.

    An exception or Ctrl-C inside the block removes the temporary directory (and parent directories
    created for it) and leaves ``out`` as it was: absent, or the previous complete run. With
    ``force`` an existing ``out`` is replaced only at that last moment (renamed aside, the new run
    renamed in, the old one deleted). The directory gets the permissions of a plain ``mkdir`` (the
    user's umask). A process killed outright (SIGKILL) leaves only the hidden sibling behind, named with
    its PID; the next run into the same ``out`` removes it. A symbolic link ``out`` stands for the
    directory it points to (:func:`run_target`): the run is built beside that one and replaces it, and
    the link is kept. A write that fails because the disk is full (also torch's ``unexpected pos``),
    over quota or read-only raises :class:`WriteFailed` naming the cause and ``out``.

    ``replace``: ``out`` is the caller's own place (a cache entry, one SAE of a saved set), not a
    user's ``--out``: it is replaced whenever it exists (at the last moment, as with ``force``), and
    :func:`check_out_dir`, whose messages speak of ``--out`` and ``--force``, is not run.
    """
    out = Path(out)
    if replace:
        force = True
    else:
        check_out_dir(out, force)
    target = run_target(out)
    parent = target.parent.absolute()
    created = []
    p = parent
    while not p.exists():
        created.append(p)
        p = p.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        _move_into_place(tmp, target, force)
    except BaseException as e:
        # judged before the partial run is removed (and its space freed)
        failed = write_failure(e, tmp, out) if isinstance(e, Exception) else None
        with signals_ignored():
            shutil.rmtree(tmp, ignore_errors=True)
            for d in created:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    break
        if failed is not None:
            raise failed from e
        raise


def _remove_stale_partials(parent: Path, name: str) -> None:
    """Delete ``.NAME.partial-PID-*`` directories left by runs of ``name`` whose process is gone (killed
    outright): a run in progress (its PID alive) is left alone."""
    for d in parent.glob(f".{name}.partial-*"):  # also the older ``.NAME.partial-PID`` of train-saes
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


# --------------------------------------------------------------------------- the process's temporary files
TMP_PREFIX = "featcirc-tmp-"


@contextmanager
def process_tempdir() -> Iterator["Path | None"]:
    """Send this process's temporary files (``tempfile``'s default directory: libraries' too, such as
    the ``tmp*wandb-media`` / ``tmp*wandb-artifacts`` directories that importing SAELens makes through
    wandb) into ``$TMPDIR/featcirc-tmp-PID-*``, removed at the end; one left by a process killed
    outright (its PID gone) is removed by the next command. Yields the directory (None where the
    temporary directory cannot be written: then nothing changes)."""
    base = Path(tempfile.gettempdir())
    _remove_dead(base, TMP_PREFIX)
    try:
        d = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=base)
    except OSError:
        yield None
        return
    previous = tempfile.tempdir
    tempfile.tempdir = d
    try:
        yield Path(d)
    finally:
        tempfile.tempdir = previous
        with signals_ignored():
            shutil.rmtree(d, ignore_errors=True)


def _remove_dead(parent: Path, prefix: str) -> None:
    """Delete this user's ``<prefix>PID[-*]`` directories in ``parent`` whose process is gone."""
    try:
        entries = list(parent.glob(f"{prefix}*"))
    except OSError:
        return
    for d in entries:
        pid = d.name[len(prefix):].split("-", 1)[0]
        try:
            if not pid.isdigit() or not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.geteuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive but not ours (EPERM), or gone meanwhile
            pass
