"""Atomic file output: every result is written to a temporary file beside its target and renamed,
so a crash never leaves a half-written file behind.

Files come out with the permissions any ``open(path, "w")`` would give them: ``0o666`` minus the
process umask (``tempfile.mkstemp`` alone would make them ``0o600``, readable by their owner only).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
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


def prepare_out_dir(out: "str | os.PathLike[str]", force: bool, marker: str) -> Path:
    """Create an output directory; refuse to mix results into a non-empty one unless ``force``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"{out} already holds results ({marker} or others); pass --force to overwrite them "
            "or choose another --out directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out
