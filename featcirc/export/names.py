"""Names that Neuronpedia and circuit-tracer accept for a graph: slugs and ``scan`` (Neuronpedia's model
id). Torch-free, so the commands check ``--slug`` / ``--scan`` before anything heavy loads."""

from __future__ import annotations

import re
from typing import Any

SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NEURONPEDIA_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
"""What Neuronpedia's graph upload accepts as ``metadata.scan`` (and ``slug``): its
``save-to-db`` route rejects a value holding any character outside ``[a-zA-Z0-9_.-]``; the
``scan`` must also name a model on Neuronpedia, which only the upload can check."""
_LOCAL_SCAN_RE = re.compile(r"^\./(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+$")
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def slug_part(text: str) -> str:
    """``text`` reduced to slug characters (letters, digits, ``-``, ``_``, ``.``)."""
    return _SLUG_BAD.sub("-", str(text)).strip("-.") or "x"


def neuronpedia_model_id(model: str) -> str:
    """A model name as a Neuronpedia model id (``scan``): its last ``/`` component in
    :data:`NEURONPEDIA_ID_RE` characters (``google/gemma-3-270m`` -> ``gemma-3-270m``,
    ``gpt2-small`` unchanged). Neuronpedia must know the model under that id for an upload."""
    return slug_part(str(model).rstrip("/").rsplit("/", 1)[-1])


def check_scan(scan: Any, *, local_viewer: bool = False) -> str:
    """Return ``scan`` if Neuronpedia's upload accepts it (non-empty, only letters, digits, ``_``,
    ``.``, ``-``: :data:`NEURONPEDIA_ID_RE`), else raise ``ValueError`` saying so. With
    ``local_viewer`` (a ``graph_files/`` graph for circuit-tracer's local server) a ``./`` path
    of such parts, where that viewer reads feature files, is accepted too."""
    if isinstance(scan, str) and NEURONPEDIA_ID_RE.match(scan):
        return scan
    if local_viewer and isinstance(scan, str) and _LOCAL_SCAN_RE.match(scan):
        return scan
    hint = (" (a './' path is only for circuit-tracer's local viewer: graph_files/, not an upload)"
            if isinstance(scan, str) and scan.startswith("./") else "")
    raise ValueError(f"scan {scan!r} must be Neuronpedia's model id: letters, digits, '_', '.', '-' only "
                     f"(Neuronpedia's graph upload rejects anything else){hint}")


def check_slug(slug: str) -> str:
    """Return ``slug`` if it is a valid graph name, else raise ``ValueError`` saying what is allowed."""
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        raise ValueError(f"slug {slug!r} must be non-empty letters, digits, '-', '_' or '.' "
                         "(it names the graph's URL and file)")
    return slug


__all__ = ["NEURONPEDIA_ID_RE", "SLUG_RE", "slug_part", "neuronpedia_model_id", "check_scan", "check_slug"]
