"""What the commands share (docs/design.md §12): the run configuration (``run.json``; :class:`RunConfig`,
defined in :mod:`featcirc.run_files` with the run files it is read from),
the shared options, starting torch (threads, device, dtype), loading a model with its SAEs and the
data, the phase hook, and CSV output.

A command first checks everything it can without a model (:meth:`RunConfig.check`,
:mod:`featcirc.commands.checks`, :func:`featcirc.data.load.run_pairs`), with nothing heavy imported;
then it starts torch (:func:`start_torch`) and loads. A run directory is built in a temporary
sibling (:func:`featcirc.io.staged_dir`) and holds ``run.json`` (what was run, with its data split),
the full scores (``nodes.pt``, ``edges.pt``), the circuit in every export format, drawings, the
viewer and ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from featcirc.commands.checks import DTYPE_NAMES, InputError, check_int, max_threads
from featcirc.io import write_text
from featcirc.run_files import RunConfig  # run.json's schema lives with its reader, below the commands
from featcirc.vocabulary import AGGREGATIONS, ALIGN_CHOICES, LEVELS, TASKS  # noqa: F401 - re-exported (§12)

logger = logging.getLogger("featcirc")

DEFAULT_THREADS = 1
"""torch CPU threads when neither ``--threads`` nor ``OMP_NUM_THREADS`` says otherwise: measured on a busy
2-core machine, one thread is as fast or faster than torch's default for these small tensors
(``experiments/results/scale/threads.txt``)."""

PAUSE_ENV = "FEATCIRC_PAUSE_AT"
"""Test hook: a command that reaches the phase named here (see :func:`phase`) says so on stderr and
waits (up to a minute) for a signal, so an interrupt can be sent at an exact point of a run."""

TASK_CHOICES = TASKS
"""``--task`` values (:data:`featcirc.vocabulary.TASKS`)."""


# ------------------------------------------------------------------------------------- options
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option whose default is a value (0 and 0.0 included; not
    None, a flag's False or SUPPRESS) and whose help does not state its default already (``default``
    followed by a space or a colon, or ``%(default)s``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (not action.option_strings or d is None or d is False or d is argparse.SUPPRESS
                or "%(default)" in text or re.search(r"\(default[ :]", text)):
            return text
        return f"{text} (default: %(default)s)"


def add_model_arguments(p, *, saes_help: str = "SAE set: tiny, a named set, or a directory of SAELens SAEs "
                                                "(omit for --level component)") -> None:
    p.add_argument("--model", required=True, help="tiny, gemma-3-270m, or a TransformerLens model name")
    p.add_argument("--saes", help=saes_help)
    add_fit_argument(p)


def add_fit_argument(p) -> None:
    """``--skip-fit-check`` (every command that loads SAEs; :mod:`featcirc.saes.fit`)."""
    p.add_argument("--skip-fit-check", action="store_true",
                   help="load SAEs that reconstruct their sites poorly (FVE below 0.3 on a fixed sample: a wrong "
                        "hook, pre- vs post-norm, or an SAE of another model) instead of refusing them; "
                        "FEATCIRC_SKIP_FIT_CHECK=1 does the same")


def add_device_arguments(p, *, dtype_default: Optional[str] = "float32") -> None:
    """``--device`` and ``--dtype`` (for every command that loads a model)."""
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=dtype_default,
                   help="model and SAE dtype" + ("" if dtype_default else " (default: the run's)"))


def add_data_arguments(p, *, required: bool = True, default_pairs: Optional[int] = 64,
                       pairs_help: Optional[str] = None) -> None:
    """``--data FILE | --task NAME``, ``--pairs`` (alias ``--n``), ``--seed``, ``--batch-size``."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--data", help="feature-circuits JSONL file of prompt pairs")
    g.add_argument("--task", choices=TASK_CHOICES, help="generate pairs for a built-in task")
    p.add_argument("--pairs", "--n", dest="pairs", type=int, default=default_pairs, metavar="N",
                   help=pairs_help or "prompt pairs to use (--n is an alias, not usable under torchrun)")
    p.add_argument("--seed", type=int, default=0, help="seed of generated pairs and of the held-out split")
    p.add_argument("--batch-size", type=int, default=16, help="prompt pairs per forward pass")


def add_output_arguments(p, *, required: bool = True, default: Optional[str] = None) -> None:
    p.add_argument("--out", required=required, default=default,
                   help="run directory (built beside it and moved into place when complete)")
    p.add_argument("--force", action="store_true",
                   help="replace a previous run in --out (only once the new one is complete)")


# ------------------------------------------------------------------------------- running phases
def phase(name: str) -> None:
    """Mark a phase of a command (``checked``, ``loaded``, ``scored``, ``written``): logged at debug
    level, and the test hook :data:`PAUSE_ENV` pauses here."""
    logger.debug("phase: %s", name)
    if os.environ.get(PAUSE_ENV) == name:
        print(f"featcirc: paused at {name}", file=sys.stderr, flush=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            time.sleep(0.05)


def resolve_threads(requested: Optional[int]) -> Optional[int]:
    """torch CPU threads to set: ``--threads`` when given (0: None, torch's own default of one per
    core), else None when ``OMP_NUM_THREADS`` is set (torch honours it), else :data:`DEFAULT_THREADS`."""
    if requested is not None:
        check_int(requested, "--threads", minimum=0, allow_none=False, maximum=max_threads(),
                  why=f"4 per CPU core of this machine's {os.cpu_count() or 1}: more only slows torch down, "
                      "and a huge thread pool crashes it")
        return requested or None
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return DEFAULT_THREADS


def start_torch(args) -> tuple[Any, Any]:
    """Import torch (the first heavy import of a command), set its CPU threads and resolve
    ``--device`` / ``--dtype``: returns ``(torch.device, torch.dtype)``; a GPU asked for on a machine
    without one is a :class:`~featcirc.models.device.DeviceError` here, before anything loads."""
    threads = resolve_threads(getattr(args, "threads", None))  # checked before torch is imported
    import torch

    from featcirc.models.device import resolve_device, resolve_dtype

    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(getattr(args, "device", "auto") or "auto")
    dtype = resolve_dtype(getattr(args, "dtype", None) or "float32")
    return device, dtype


def process_context(device: str):
    """This process's place in a run (docs/design.md §13), :func:`featcirc.distributed.context`: one
    process, or a rank of several started by torchrun; use it as a context manager."""
    from featcirc.distributed import context

    return context(device)


@contextlib.contextmanager
def stdout_to_log():
    """Send what libraries print while loading (TransformerLens's "Moving model to device") to the
    info log (silent under ``-q``) instead of stdout, which holds the command's own output."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                logger.info("%s", line.strip())


def load_model_and_saes(model_name: str, saes_spec: Optional[str], level: str, *, device: Any = "cpu",
                        dtype: Any = None, fit_check: Optional[bool] = None):
    """The model (on ``device``, in ``dtype``) and, at feature level, its SAEs (which follow the
    model's device and dtype). A SAELens failure on a bad SAE file becomes a clear ``ValueError``.

    The SAEs are checked to fit their sites (:func:`featcirc.saes.fit.check_fit`: an SAE with FVE below
    0.3 is a :class:`~featcirc.saes.fit.SAEFitError`, one line); ``fit_check`` None: unless
    ``--skip-fit-check`` or ``FEATCIRC_SKIP_FIT_CHECK=1`` (:func:`featcirc.saes.fit.skip_requested`).
    What was measured is :func:`featcirc.saes.fit.fit_record` of the SAEs (``run.json``'s ``sae_fit``)."""
    import torch

    from featcirc.models.loading import load_model
    from featcirc.saes.loading import load_saes

    if level == "feature" and not saes_spec:
        raise InputError("feature-level circuits need SAEs: pass --saes (e.g. --saes tiny), or use --level component")
    with stdout_to_log():
        model = load_model(model_name, device=str(device), dtype=dtype or torch.float32)
        saes = None
        if level == "feature":
            try:
                saes = load_saes(model, saes_spec)
            except (TypeError, KeyError, AttributeError, RuntimeError) as e:
                raise InputError(f"could not load the SAEs {saes_spec!r}: {type(e).__name__}: {e}; check their "
                                 "cfg.json and sae_weights.safetensors (SAELens format)") from e
    if saes:
        from featcirc.saes.fit import SKIP_ENV, check_fit, skip_requested

        if fit_check if fit_check is not None else not skip_requested():
            check_fit(model, saes, model_name=model_name, saes_spec=saes_spec)
        else:
            logger.info("SAE fit check skipped (--skip-fit-check or %s=1)", SKIP_ENV)
    return model, saes


def load_data(model, cfg: "RunConfig | dict"):
    """Tokenized pairs of a ``RunConfig`` or a source dict (``data``, ``task``, ``n``, ``seed``,
    ``batch_size``)."""
    from featcirc.data import load_pairs

    src = cfg.source if isinstance(cfg, RunConfig) else cfg
    return load_pairs(model, data=src.get("data"), task=src.get("task"), n=src.get("n"),
                      seed=src.get("seed", 0), batch_size=src.get("batch_size", 16))


def example_prompt(model, data, alignment=None) -> tuple[str, list[str]]:
    """The longest prompt's first pair (node positions fit it) and its tokens as strings. With an
    alignment by role or from the end (docs/design.md §14), one entry per slot instead: the slot's
    label and the example's token there (``"[S2] John"``; ``"[S1+3]"`` where the example has none)."""
    batch = max(data.batches, key=lambda b: b.clean.shape[1])
    toks = [model.tokenizer.decode([int(t)]) for t in batch.clean[0]]
    if alignment is None or alignment.mode in ("start", "sum"):
        return batch.pairs[0].clean_prefix, toks
    from featcirc.data.align import token_labels

    at = dict(zip(token_labels(alignment.mode, len(toks), batch.positions[0]), toks))
    return batch.pairs[0].clean_prefix, [f"[{s}]{at.get(s, '')}" for s in alignment.slots]


def example_token_slots(model, data, alignment=None) -> Optional[dict]:
    """For an alignment by role or from the end (docs/design.md §14): the example prompt's own tokens
    (the prompt of :func:`example_prompt`) and the slot label of each, ``{"tokens": [...], "slots":
    [...]}``, which the exports use to place each node on the example's token at its slot; else None."""
    if alignment is None or alignment.mode not in ("role", "end"):
        return None
    from featcirc.data.align import token_labels

    batch = max(data.batches, key=lambda b: b.clean.shape[1])
    toks = [model.tokenizer.decode([int(t)]) for t in batch.clean[0]]
    return dict(tokens=toks, slots=token_labels(alignment.mode, len(toks), batch.positions[0]))


def example_metrics(model, data) -> dict:
    """The example pair's own numbers (the pair of :func:`example_prompt`), for the viewer, the drawing
    and the exports, which otherwise only know the metric's mean over the pairs:

    ``metric_clean`` / ``metric_patch``: ``m = logit(clean answer) - logit(patch answer)`` on its clean /
    patch prompt; ``p_clean_answer`` / ``p_patch_answer``: the softmax probability (whole vocabulary)
    of each answer at the clean prompt's last position; ``n_pairs_mean``: the pairs the mean averages."""
    import torch

    batch = max(data.batches, key=lambda b: b.clean.shape[1])
    pair = batch.pairs[0]
    with torch.no_grad():
        logits = model(torch.cat([batch.clean[:1], batch.patch[:1]]), return_type="logits")[:, -1, :].double()
    c, p = int(batch.clean_answer[0]), int(batch.patch_answer[0])
    probs = torch.softmax(logits[0], dim=-1)
    return dict(prompt=pair.clean_prefix, patch_prompt=pair.patch_prefix, clean_answer=pair.clean_answer,
                patch_answer=pair.patch_answer, metric_clean=float(logits[0, c] - logits[0, p]),
                metric_patch=float(logits[1, c] - logits[1, p]), p_clean_answer=float(probs[c]),
                p_patch_answer=float(probs[p]), n_pairs_mean=int(data.n_pairs))


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(["" if (isinstance(x, float) and math.isnan(x)) else
                    (f"{x:.6g}" if isinstance(x, float) else x) for x in r])
    return write_text(path, buf.getvalue())
