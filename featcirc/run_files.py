"""The run directory's JSON records, typed, and reading its JSON files back (docs/design.md §11-§12):
``run.json`` is a :class:`RunRecord` (the :class:`RunConfig` fields plus the split, alignment,
environment, SAE fit and identity), ``summary.json`` a :class:`Summary` (with its ``faithfulness`` in the
shape of any featcirc version: :func:`faithfulness_by_ablation`); both round-trip their file exactly
(``RunRecord.from_json(d).to_json() == d``) and carry a ``format`` version (:data:`RUN_FORMAT`,
:data:`SUMMARY_FORMAT`; a file without one is format 0, read as before; a newer one is refused). Every
command and exporter reads and writes them through these types; ``circuit.json`` and ``cards.json`` are
read with :func:`read_json_file`. A run directory may come from someone else or from another featcirc
version, so every file is checked as it is read: a missing, truncated, foreign or out-of-range file
is a ``ValueError`` / ``FileNotFoundError`` whose one-line message names the file (and, for
``run.json``, the field and the featcirc version that wrote it) and says what to do, which the
command line prints as a one-line error (exit 2).

Nothing here imports torch or networkx, nor a command (only the input checks,
:mod:`featcirc.commands.checks`): :class:`RunConfig`, the schema of ``run.json``, lives here, below
:mod:`featcirc.commands.common`, which re-exports it. The score files (``nodes.pt``, ``edges.pt``) are
checked by :mod:`featcirc.attribution.scores`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from featcirc.attribution import DEFAULT_MAX_NODES  # the package's constant: imports none of its modules
from featcirc.commands.checks import (IG_STEPS_WHY, MAX_IG_STEPS, InputError, check_device_name, check_dtype_name,
                                      check_float, check_int, check_memory_size, check_model_name, check_prune,
                                      check_sae_spec, check_saes_level)
from featcirc.data.tasks import MAX_PAIRS
from featcirc.run_dir import RUN_JSON, SUMMARY_JSON, RunDir
from featcirc.vocabulary import AGGREGATIONS, ALIGN_CHOICES, LEVELS, MASK_ABLATIONS, PRUNERS, TASKS

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



# ------------------------------------------------------------------------------------ RunConfig
@dataclass
class RunConfig:
    """What a discover run used: the fields of ``run.json`` that name the run (:class:`RunRecord` holds
    the rest). :mod:`featcirc.commands.common` re-exports it.

    ``n``: discovery pairs (``--pairs``); ``eval_fraction``: the share of the pairs held out for
    evaluation (0: none), or ``eval_data``: a file of evaluation pairs instead; ``eval_pairs``: how
    many of them ``discover`` measures the exported circuit on (None: all; ``eval_pairs.jsonl``
    keeps them all for ``evaluate``); ``max_memory``: the attribution's memory budget per process
    (:func:`featcirc.memory.fit_to_budget`; None: batch size as given, records kept up to 1 GiB)."""

    model: str
    saes: Optional[str]
    method: str
    level: str
    aggregation: str
    data: Optional[str] = None
    task: Optional[str] = None
    n: Optional[int] = 64
    seed: int = 0
    batch_size: int = 16
    ig_steps: int = 10
    max_nodes: Optional[int] = DEFAULT_MAX_NODES
    node_threshold: Optional[float] = None
    top_k: Optional[int] = 100
    edge_threshold: float = 0.0
    eval_fraction: Optional[float] = 0.5
    eval_data: Optional[str] = None
    eval_pairs: Optional[int] = None
    max_memory: Optional[str] = None
    device: str = "auto"
    dtype: str = "float32"
    align: str = "auto"
    prune: str = "threshold"
    mask_ablation: str = "patch"

    @property
    def source(self) -> dict:
        return dict(data=self.data, task=self.task, n=self.n, seed=self.seed, batch_size=self.batch_size)

    def check(self) -> Optional[dict]:
        """Every check that needs no model (options in range, known method, level and aggregation,
        device and dtype names, model name, SAE directories); returns the model's shape where it is
        known without loading it. Raises :class:`~featcirc.commands.checks.InputError`."""
        from featcirc.attribution import get_method  # the registry, through the package's lazy names

        if (self.data is None) == (self.task is None):
            raise InputError("give exactly one of --data FILE or --task NAME")
        if self.task is not None and self.task not in TASKS:
            raise InputError(f"unknown --task {self.task!r}; choose one of {', '.join(TASKS)}")
        method = get_method(self.method)  # UnknownMethodError (a ValueError) lists the known ones
        if not method.has_edges:
            raise InputError(f"--method {self.method} scores nodes only (no edges), so it cannot build a circuit; "
                             "use relp, atp or ig (compare runs exact patching against them)")
        if self.level not in LEVELS:
            raise InputError(f"unknown --level {self.level!r}; choose {' or '.join(LEVELS)}")
        if self.aggregation not in AGGREGATIONS:
            raise InputError(f"unknown --aggregation {self.aggregation!r}; choose {' or '.join(AGGREGATIONS)}")
        if self.align not in ALIGN_CHOICES:
            raise InputError(f"unknown --align {self.align!r}; choose one of {', '.join(ALIGN_CHOICES)}")
        if self.aggregation == "sum" and self.align not in ("auto", "sum"):
            raise InputError(f"--aggregation sum sums positions; it does not go with --align {self.align}")
        if self.level == "feature" and not self.saes:
            raise InputError("feature-level circuits need SAEs: pass --saes (e.g. --saes tiny), or use --level component")
        check_saes_level(self.saes, self.level)
        check_int(self.n, "--pairs", what="the prompt pairs to discover the circuit on", maximum=MAX_PAIRS,
                  why="every pair is scored by forward and backward passes: more would run for days")
        check_int(self.seed, "--seed", minimum=0, allow_none=False)
        check_int(self.batch_size, "--batch-size", allow_none=False)
        check_int(self.ig_steps, "--ig-steps", allow_none=False, what="interpolation steps of integrated gradients",
                  maximum=MAX_IG_STEPS, why=IG_STEPS_WHY)
        check_int(self.max_nodes, "--max-nodes", what="edges are scored among the top N nodes")
        check_int(self.top_k, "--top-k", what="nodes kept in the circuit")
        check_float(self.node_threshold, "--node-threshold")
        check_float(self.edge_threshold, "--edge-threshold", allow_none=False)
        check_prune(self.prune, self.mask_ablation, self.top_k, self.node_threshold)
        check_int(self.eval_pairs, "--eval-pairs", what="held-out pairs to measure the circuit on")
        if self.eval_data is None:
            check_float(self.eval_fraction, "--eval-fraction", below=1.0, what="share of the pairs held out; 0: none")
        check_memory_size(self.max_memory)
        check_device_name(self.device)
        check_dtype_name(self.dtype)
        shape = check_model_name(self.model)
        check_sae_spec(self.saes, shape)
        return shape


# ------------------------------------------------------------------------------------------ run.json
def _field_checks(known_task: bool = True) -> dict:
    """``{field: check(value, option)}`` for :class:`RunConfig`'s fields: the
    same checks, with the same ranges, as :meth:`RunConfig.check` runs on the command line."""
    def text(value, option, *, allow_none=True, choices=None):
        if value is None and allow_none:
            return
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{option} must be a name (text), got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"unknown {option} {value!r}; known: {', '.join(choices)}")

    def method(value, option):
        from featcirc.attribution import get_method, method_names  # the registry, through the package's lazy names

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
    """Check the :class:`RunConfig` fields that ``run.json``'s content
    (``raw``, a dict) has, as :meth:`RunConfig.check` checks the options they came from: types, ranges,
    known method, level, aggregation, device and dtype names (and task, with ``known_task``); missing
    fields are not an error here (:func:`check_run_config` requires them). Checks that depend on this
    machine (the model and SAEs can be loaded here) are left to loading. A bad value is a
    ``ValueError`` naming ``path``, the field and the featcirc version that wrote the file. Returns
    the fields found, ``{name: value}``."""
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
    """``run.json``'s content (``raw``, a dict) as a :class:`RunConfig`
    (unknown keys ignored): the fields without a default must be there, every field is checked
    (:func:`check_run_values`) and exactly one of ``data`` / ``task`` names the pairs."""
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
    """A run directory's ``run.json``, read and checked (:meth:`RunRecord.read`, :meth:`RunRecord.run_config`):
    ``(RunConfig, raw dict)``. A directory without one is a ``FileNotFoundError`` that says how to make
    a run directory."""
    record = RunRecord.read(run_dir)
    return record.run_config(), record.to_json()


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


# ------------------------------------------------------------------------------------ format versions
FORMAT_KEY = "format"
RUN_FORMAT = 1
"""``run.json``'s format: 1 since it carries one; a file without ``format`` is format 0 (read the same)."""
SUMMARY_FORMAT = 1
"""``summary.json``'s format: 1 since it carries one; a file without ``format`` is format 0 (read the same)."""


def _file_format(raw: Mapping, path: "str | os.PathLike[str]", newest: int, what: str) -> int:
    """The ``format`` of a run file's content ``raw`` (0 when it has none): a newer one than this
    featcirc reads (``newest``) is a ``ValueError`` that says to upgrade; anything but a whole number
    >= 0 one that names the file."""
    if FORMAT_KEY not in raw:
        return 0
    version = raw[FORMAT_KEY]
    by = written_by(raw)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{path}: field 'format' = {_short(version)} is not a format version (a whole number >= 0); "
                         f"not a featcirc {what} file; {by}; {RERUN}")
    if version > newest:
        from featcirc import __version__

        raise ValueError(f"{path} is {what} format {version}, written by a newer featcirc ({by}); featcirc "
                         f"{__version__} reads up to format {newest}: upgrade featcirc to read it")
    return version


# ------------------------------------------------------------------------------------------ RunRecord
RUN_SECTIONS = ("split", "alignment", "environment", "sae_fit", "identity")
"""``run.json``'s objects besides the :class:`RunConfig` fields, in the order they are written."""


@dataclass(frozen=True)
class RunRecord:
    """``run.json``: what was run. ``config``: the :class:`RunConfig` fields as the file has them (and
    any field this featcirc does not know, kept), in the file's order; ``split`` (the held-out split),
    ``alignment`` (docs/design.md §14), ``environment`` (versions, device, dtype), ``sae_fit``
    (docs/design.md §10b), ``identity`` (model and SAE set hashes); ``format`` (:data:`RUN_FORMAT`; 0:
    written before formats). ``absent``: the sections an older file lacks, so that
    ``RunRecord.from_json(d).to_json() == d``."""

    config: Mapping[str, Any]
    split: Optional[dict] = None
    alignment: Optional[dict] = None
    environment: Optional[dict] = None
    sae_fit: Optional[dict] = None
    identity: Optional[dict] = None
    format: int = RUN_FORMAT
    absent: frozenset = field(default=frozenset(), repr=False)

    @classmethod
    def of_run(cls, cfg: RunConfig, **sections: Any) -> "RunRecord":
        """The record of a run configured by ``cfg`` with ``sections`` (:data:`RUN_SECTIONS`), at the
        current format (what ``discover`` writes)."""
        unknown = set(sections) - set(RUN_SECTIONS)
        if unknown:
            raise TypeError(f"not a section of {RUN_JSON}: {', '.join(sorted(unknown))}")
        return cls(config=dataclasses.asdict(cfg), **sections)

    @classmethod
    def from_json(cls, raw: Any, path: "str | os.PathLike[str]" = RUN_JSON) -> "RunRecord":
        """The record of ``run.json``'s content ``raw``: its format known (:func:`_file_format`), its
        sections JSON objects and the :class:`RunConfig` fields it has valid
        (:func:`check_run_values`, any task name); a problem is a ``ValueError`` naming ``path``."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path} holds {_json_type(raw)}, not a JSON object: not a featcirc run configuration "
                             f"file; {RERUN}")
        version = _file_format(raw, path, RUN_FORMAT, "run configuration")
        check_run_values(dict(raw), path, known_task=False)  # the sections' types too
        config = {k: v for k, v in raw.items() if k != FORMAT_KEY and k not in RUN_SECTIONS}
        return cls(config=config, **{k: raw[k] for k in RUN_SECTIONS if k in raw}, format=version,
                   absent=frozenset(k for k in RUN_SECTIONS if k not in raw))

    @classmethod
    def read(cls, run_dir: "str | os.PathLike[str]") -> "RunRecord":
        """A run directory's ``run.json`` (:meth:`from_json`); a directory without one is a
        ``FileNotFoundError`` that says how to make a run directory."""
        path = RunDir(run_dir).run_json
        if not path.exists():
            raise FileNotFoundError(f"{Path(run_dir)} is not a featcirc run directory (no {RUN_JSON}); "
                                    "make one with `featcirc discover ... --out DIR`")
        return cls.from_json(read_json_file(path, "run configuration"), path)

    def to_json(self) -> dict:
        """The content of ``run.json``: ``format`` (none at format 0), the configuration, the sections."""
        out: dict = {} if self.format == 0 else {FORMAT_KEY: self.format}
        out.update(self.config)
        out.update((k, getattr(self, k)) for k in RUN_SECTIONS if k not in self.absent)
        return out

    def write(self, run_dir: "str | os.PathLike[str]") -> Path:
        """Write ``run_dir/run.json`` atomically."""
        from featcirc.io import write_json

        return write_json(RunDir(run_dir).run_json, self.to_json())

    def run_config(self, path: "str | os.PathLike[str]" = RUN_JSON) -> RunConfig:
        """The :class:`RunConfig` of the record, every field checked (:func:`check_run_config`)."""
        return check_run_config(self.to_json(), path)

    def get(self, key: str, default: Any = None) -> Any:
        """A field of ``run.json`` by its name (a configuration field or a section), or ``default``."""
        if key in RUN_SECTIONS:
            return default if key in self.absent else getattr(self, key)
        return self.config.get(key, default)

    @property
    def model(self) -> Optional[str]:
        return self.config.get("model")

    @property
    def saes(self) -> Optional[str]:
        return self.config.get("saes")

    @property
    def method(self) -> Optional[str]:
        return self.config.get("method")

    @property
    def level(self) -> Optional[str]:
        return self.config.get("level")

    @property
    def dtype(self) -> Optional[str]:
        return self.config.get("dtype")

    @property
    def data_name(self) -> Optional[str]:
        """The run's task name, else its data file's stem."""
        if self.config.get("task"):
            return str(self.config["task"])
        if self.config.get("data"):
            return Path(str(self.config["data"])).stem
        return None


# --------------------------------------------------------------------------------------------- Summary
SUMMARY_OBJECTS = ("example", "faithfulness", "model_info", "prune", "example_tokens", "evaluations", "environment")
"""``summary.json``'s fields that, when there and not null, are JSON objects."""


@dataclass(frozen=True)
class Summary:
    """``summary.json`` (docs/design.md §11): ``fields``, its content in the file's order (counts, cost,
    the exported circuit's ``faithfulness``, the example pair, ``evaluations``, ...), and ``format``
    (:data:`SUMMARY_FORMAT`; 0: written before formats). ``Summary.from_json(d).to_json() == d``."""

    fields: Mapping[str, Any]
    format: int = SUMMARY_FORMAT

    @classmethod
    def from_json(cls, raw: Any, path: "str | os.PathLike[str]" = SUMMARY_JSON, *, fix: str = RERUN) -> "Summary":
        """The summary of ``summary.json``'s content ``raw``: its format known, its objects (:data:`SUMMARY_OBJECTS`)
        objects and its ``faithfulness`` readable (:func:`faithfulness_by_ablation`); a problem is a
        ``ValueError`` naming ``path`` and ending with ``fix``."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path} holds {_json_type(raw)}, not a JSON object: not a featcirc run summary file; {fix}")
        version = _file_format(raw, path, SUMMARY_FORMAT, "run summary")
        for key in SUMMARY_OBJECTS:
            if raw.get(key) is not None and not isinstance(raw[key], Mapping):
                raise ValueError(f"{path}: {key!r} is not a JSON object; {fix}")
        faithfulness_by_ablation(raw.get("faithfulness"), str(path))
        return cls(fields={k: v for k, v in raw.items() if k != FORMAT_KEY}, format=version)

    @classmethod
    def read(cls, run_dir: "str | os.PathLike[str]", *, fix: str = RERUN) -> "Summary":
        """A run directory's ``summary.json`` (:meth:`from_json`; :func:`read_json_file`'s errors)."""
        path = RunDir(run_dir).summary_json
        return cls.from_json(read_json_file(path, "run summary", fix=fix), path, fix=fix)

    def to_json(self) -> dict:
        """The content of ``summary.json``: ``format`` (none at format 0), then the fields."""
        out: dict = {} if self.format == 0 else {FORMAT_KEY: self.format}
        out.update(self.fields)
        return out

    def write(self, path: "str | os.PathLike[str]") -> Path:
        """Write the summary to ``path`` (a run directory's ``summary.json``, or a staging path) atomically."""
        from featcirc.io import write_json

        return write_json(path, self.to_json())

    def with_evaluation(self, name: str, entry: Mapping[str, Any]) -> "Summary":
        """The summary with ``evaluations[name] = entry`` (``featcirc evaluate``'s record), the rest as it was."""
        evaluations = {**(self.fields.get("evaluations") or {}), name: dict(entry)}
        return dataclasses.replace(self, fields={**self.fields, "evaluations": evaluations})

    def get(self, key: str, default: Any = None) -> Any:
        """A field of ``summary.json`` by its name, or ``default``."""
        return self.fields.get(key, default)

    @property
    def faithfulness(self) -> Optional[dict]:
        """``faithfulness`` as ``{ablation: record}``, whichever featcirc wrote it (:func:`faithfulness_by_ablation`)."""
        return faithfulness_by_ablation(self.fields.get("faithfulness"))

    @property
    def example(self) -> Optional[dict]:
        return self.fields.get("example")

    @property
    def prompt(self) -> Optional[str]:
        return self.fields.get("prompt")

    @property
    def prompt_tokens(self) -> Optional[list]:
        return self.fields.get("prompt_tokens")


__all__ = ["RERUN", "FAITHFULNESS_RECORD_KEYS", "FORMAT_KEY", "RUN_FORMAT", "SUMMARY_FORMAT", "RUN_SECTIONS",
           "SUMMARY_OBJECTS", "RunConfig", "RunRecord", "Summary", "check_run_config", "check_run_values",
           "faithfulness_by_ablation", "read_json_file", "read_run_json", "run_version", "written_by"]
