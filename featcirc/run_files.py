"""Reading a run directory's JSON files back (docs/design.md §11-§12): ``run.json``, ``summary.json``
(and its ``faithfulness``, in the shape of any featcirc version: :func:`faithfulness_by_ablation`),
``circuit.json``, ``cards.json``. A run directory may come from someone else or from another featcirc
version, so every file is checked as it is read: a missing, truncated, foreign or out-of-range file
is a ``ValueError`` / ``FileNotFoundError`` whose one-line message names the file (and, for
``run.json``, the field and the featcirc version that wrote it) and says what to do, which the
command line prints as a one-line error (exit 2).

Nothing here imports torch or networkx. The score files (``nodes.pt``, ``edges.pt``) are checked by
:mod:`featcirc.attribution.scores`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from featcirc.run_dir import RUN_JSON, SUMMARY_JSON, RunDir

RERUN = "rerun `featcirc discover ... --out DIR` to recreate it"
"""What to do about a damaged run file, unless the caller says otherwise."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_json_file(path: "str | os.PathLike[str]", what: str = "run file", *, fix: str = RERUN,
                   kind: type = dict) -> Any:
    """The JSON value of ``path``, which must be a ``kind`` (default: an object). A missing file is a
    ``FileNotFoundError``; unreadable, truncated or non-JSON content, or another type, a ``ValueError``;
    each message names the file (``what``: what it is, e.g. ``"run configuration"``) and ends with ``fix``."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not a {what} file; {fix}")
        raise FileNotFoundError(f"{path} not found (the {what}); {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a {what} file (not UTF-8 text); {fix}") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        state = "is empty" if not text.strip() else \
            f"is not valid JSON, damaged or cut short ({e.msg}: line {e.lineno} column {e.colno})"
        raise ValueError(f"{path} {state}; {fix}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a {what} file; {fix}") from None
    if not isinstance(data, kind):
        want = "a JSON object" if kind is dict else f"a JSON {kind.__name__}"
        raise ValueError(f"{path} holds {_json_type(data)}, not {want}: not a featcirc {what} file; {fix}")
    return data


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def written_by(raw: Any) -> str:
    """``"written by featcirc X.Y.Z"`` from a ``run.json`` / ``summary.json`` dict's ``environment``,
    or ``"written by an unknown featcirc version"``."""
    env = raw.get("environment") if isinstance(raw, dict) else None
    version = env.get("featcirc") if isinstance(env, dict) else None
    return f"written by featcirc {version}" if isinstance(version, str) and version else \
        "written by an unknown featcirc version"


def run_version(run_dir: "str | os.PathLike[str]") -> Optional[str]:
    """The featcirc version that wrote a run directory (its ``run.json``'s ``environment``), if readable."""
    try:
        raw = json.loads(RunDir(run_dir).run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    env = raw.get("environment") if isinstance(raw, dict) else None
    version = env.get("featcirc") if isinstance(env, dict) else None
    return version if isinstance(version, str) else None


# ------------------------------------------------------------------------------------------ run.json
def _field_checks(known_task: bool = True) -> dict:
    """``{field: check(value, option)}`` for :class:`~featcirc.commands.common.RunConfig`'s fields: the
    same checks, with the same ranges, as :meth:`RunConfig.check` runs on the command line."""
    from featcirc.commands.checks import (check_device_name, check_dtype_name, check_float, check_int,
                                          check_memory_size)
    from featcirc.vocabulary import AGGREGATIONS, ALIGN_CHOICES, LEVELS, MASK_ABLATIONS, PRUNERS, TASKS

    def text(value, option, *, allow_none=True, choices=None):
        if value is None and allow_none:
            return
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{option} must be a name (text), got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"unknown {option} {value!r}; known: {', '.join(choices)}")

    def method(value, option):
        from featcirc.attribution.methods import get_method, method_names

        text(value, option, allow_none=False)
        get_method(value)  # UnknownMethodError (a ValueError) lists the known ones
        if not get_method(value).has_edges:
            raise ValueError(f"{option} {value} scores nodes only and cannot have built a run; "
                             f"known: {', '.join(method_names(with_edges=True))}")

    return dict(
        model=lambda v, o: text(v, o, allow_none=False),
        saes=text,
        method=method,
        level=lambda v, o: text(v, o, allow_none=False, choices=LEVELS),
        aggregation=lambda v, o: text(v, o, allow_none=False, choices=AGGREGATIONS),
        data=text,
        task=lambda v, o: text(v, o, choices=TASKS if known_task else None),
        n=lambda v, o: check_int(v, o),
        seed=lambda v, o: check_int(v, o, minimum=0, allow_none=False),
        batch_size=lambda v, o: check_int(v, o, allow_none=False),
        ig_steps=lambda v, o: check_int(v, o, allow_none=False),
        max_nodes=lambda v, o: check_int(v, o),
        node_threshold=lambda v, o: check_float(v, o),
        top_k=lambda v, o: check_int(v, o),
        edge_threshold=lambda v, o: check_float(v, o, allow_none=False),
        eval_fraction=lambda v, o: check_float(v, o, below=1.0),
        eval_data=text,
        eval_pairs=lambda v, o: check_int(v, o),
        max_memory=lambda v, o: (text(v, o), check_memory_size(v, o)),
        device=lambda v, o: (text(v, o, allow_none=False), check_device_name(v)),
        dtype=lambda v, o: (text(v, o, allow_none=False), check_dtype_name(v)),
        align=lambda v, o: _check_choice(v, ALIGN_CHOICES),
        prune=lambda v, o: _check_choice(v, PRUNERS),
        mask_ablation=lambda v, o: _check_choice(v, MASK_ABLATIONS),
    )


def _check_choice(v, choices: tuple[str, ...]) -> None:
    if v not in choices:
        raise ValueError(f"choose one of {', '.join(choices)}")


def check_run_values(raw: dict, path: "str | os.PathLike[str]" = RUN_JSON, *, known_task: bool = True) -> dict:
    """Check the :class:`~featcirc.commands.common.RunConfig` fields that ``run.json``'s content
    (``raw``, a dict) has, as :meth:`RunConfig.check` checks the options they came from: types, ranges,
    known method, level, aggregation, device and dtype names (and task, with ``known_task``); missing
    fields are not an error here (:func:`check_run_config` requires them). Checks that depend on this
    machine (the model and SAEs can be loaded here) are left to loading. A bad value is a
    ``ValueError`` naming ``path``, the field and the featcirc version that wrote the file. Returns
    the fields found, ``{name: value}``."""
    from featcirc.commands.common import RunConfig

    by = written_by(raw)
    checks = _field_checks(known_task)
    values = {f.name: raw[f.name] for f in dataclasses.fields(RunConfig) if f.name in raw}
    for name, value in values.items():
        if name == "eval_fraction" and values.get("eval_data") is not None:
            continue  # not used with a file of evaluation pairs (as in RunConfig.check)
        try:
            checks[name](value, f"--{name.replace('_', '-')}")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: field {name!r} = {_short(value)} is not valid ({_one_line(e)}); {by}; "
                             f"{RERUN}") from None
    if values.get("data") is not None and values.get("task") is not None:
        raise ValueError(f"{path}: fields 'data' and 'task' both name pairs ({_short(values['data'])}, "
                         f"{_short(values['task'])}); a run has one; {by}; {RERUN}")
    if values.get("level") == "feature" and "saes" in values and not values["saes"]:
        raise ValueError(f"{path}: field 'saes' is empty but 'level' is 'feature'; {by}; {RERUN}")
    for key in ("split", "environment", "alignment", "sae_fit"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ValueError(f"{path}: field {key!r} is {_json_type(raw[key])}, not a JSON object; {by}; {RERUN}")
    return values


def check_run_config(raw: dict, path: "str | os.PathLike[str]" = RUN_JSON):
    """``run.json``'s content (``raw``, a dict) as a :class:`~featcirc.commands.common.RunConfig`
    (unknown keys ignored): the fields without a default must be there, every field is checked
    (:func:`check_run_values`) and exactly one of ``data`` / ``task`` names the pairs."""
    from featcirc.commands.common import RunConfig

    by = written_by(raw)
    missing = [f.name for f in dataclasses.fields(RunConfig) if f.default is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(repr(m) for m in missing)} ({by}; not a {RUN_JSON} this "
                         f"featcirc reads); {RERUN}")
    values = check_run_values(raw, path)
    if values.get("data") is None and values.get("task") is None:
        raise ValueError(f"{path}: neither field 'data' nor 'task' names the pairs; {by}; {RERUN}")
    return RunConfig(**values)


def _short(value: Any, limit: int = 60) -> str:
    text = _one_line(json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_run_json(run_dir: "str | os.PathLike[str]"):
    """A run directory's ``run.json``, read and checked: ``(RunConfig, raw dict)``. A directory without
    one is a ``FileNotFoundError`` that says how to make a run directory."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).run_json
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a featcirc run directory (no {RUN_JSON}); "
                                "make one with `featcirc discover ... --out DIR`")
    raw = read_json_file(path, "run configuration")
    return check_run_config(raw, path), raw


# ------------------------------------------------------------------------------ summary.json's faithfulness
FAITHFULNESS_RECORD_KEYS = ("ablation", "faithfulness", "completeness", "split", "pairs", "n_nodes")
"""Fields of one ablation's record in ``summary.json``'s ``faithfulness``; a mapping with any of them at
its top level is a single record (the shape runs written before both ablations were reported have)."""


def faithfulness_by_ablation(value: Any, where: str = SUMMARY_JSON) -> Optional[dict]:
    """``summary.json``'s ``faithfulness`` as ``{ablation: record}``, whichever featcirc wrote it: now a
    mapping ablation -> record (``commands.discover.exported_faithfulness``'s dict, which names its own
    ``ablation``), in the order measured; older runs hold one record, with ``ablation`` at the top
    level, which becomes ``{record["ablation"]: record}`` (``"unknown"`` when it names none). None for
    None (runs from before faithfulness was recorded). Anything else, or a record that is not a JSON
    object, is a ``ValueError`` naming ``where`` (what holds the value)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"faithfulness must be a dict ({where}'s 'faithfulness'), got {type(value).__name__}")
    if any(k in value for k in FAITHFULNESS_RECORD_KEYS):  # one record: a run from before
        name = value.get("ablation")
        return {name if isinstance(name, str) and name else "unknown": dict(value)}
    out = {}
    for name, record in value.items():
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: 'faithfulness' -> {name!r} is {_json_type(record)}, not a JSON object "
                             f"(one ablation's record); {RERUN}")
        out[str(name)] = dict(record)
    return out


__all__ = ["RERUN", "FAITHFULNESS_RECORD_KEYS", "check_run_config", "check_run_values", "faithfulness_by_ablation",
           "read_json_file", "read_run_json", "run_version", "written_by"]
