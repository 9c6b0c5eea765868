"""featcirc's vocabularies, each spelled once: the names the command line takes (every ``choices=``),
the dataclasses check and the run files hold (docs/design.md §1, §12).

Each is a tuple of plain strings, the default first where there is one, so a ``choices=`` list, a
check's "choose one of ..." message and a JSON field all read the same names in the same order. An
option whose default differs from the library's lists the same names with its own default first
(:func:`default_first`).

This module imports nothing (no torch, no other featcirc module), so the command-line checks
(:mod:`featcirc.commands.checks`) and the readers of run files can use it before anything heavy loads.
"""

from __future__ import annotations

from typing import Literal, get_args

LEVELS: tuple[str, ...] = ("feature", "component")
"""Node levels (``--level``; :class:`~featcirc.attribution.settings.AttributionSettings`' default first):
``feature``: SAE features and error nodes; ``component``: whole site vectors."""

AGGREGATIONS: tuple[str, ...] = ("none", "sum")
"""Over positions (``--aggregation``): ``none``, a node per position (default), or ``sum``."""

ALIGNMENTS: tuple[str, ...] = ("start", "end", "sum", "role")
"""How per-position scores of ragged pairs line up (:mod:`featcirc.data.align`, docs/design.md §14)."""

ALIGN_CHOICES: tuple[str, ...] = ("auto",) + ALIGNMENTS
"""``--align`` values: :data:`ALIGNMENTS` and ``auto`` (the default: ``resolve_alignment``'s choice)."""

ABLATIONS: tuple[str, ...] = ("mean", "zero", "resample", "patch")
"""The values nodes outside a circuit take (docs/design.md §9; ``--ablation``, ``--ablations``)."""

FAITHFULNESS_ABLATIONS: tuple[str, ...] = ("mean", "patch")
"""The ablations the exported circuit's faithfulness is measured under unless told otherwise
(``discover --ablations``: ``summary.json``'s ``faithfulness``, one record each; ``compare --ablation``):
mean ablation is the gentlest test (a circuit can look faithful when the mean activation lies between
the two answers' values), patch ablation (each pair's own counterfactual) the one MIB and most papers
use; ``evaluate`` does curves and the others."""

PRUNERS: tuple[str, ...] = ("threshold", "mask")
"""How a circuit is chosen (``--prune``; :mod:`featcirc.pruning`, docs/design.md §8)."""

MASK_ABLATIONS: tuple[str, ...] = ("patch", "mean")
"""Ablations a mask can be trained under (``--mask-ablation``; the first is the default)."""

NodeKind = Literal["feature", "error", "component", "metric"]
"""The kind of a node of the graph (:class:`featcirc.sites.NodeRef`, ``kind`` in ``circuit.json``)."""

NODE_KINDS: tuple[str, ...] = get_args(NodeKind)
"""The names of :data:`NodeKind`, in its order."""

DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Model and SAE dtypes (``--dtype``, ``--sae-dtype``; the keys of :data:`featcirc.models.device.DTYPES`)."""

TASKS: tuple[str, ...] = ("ioi", "sva-simple", "sva-nounpp", "sva-rc", "sva-within-rc")
"""The built-in tasks (``--task``; :func:`featcirc.data.tasks.make_task`)."""

WINDOWS: tuple[str, ...] = ("packed", "documents")
"""How ``train-saes`` cuts its corpus into windows (``--windows``): packed documents or one per window."""


def default_first(names: tuple[str, ...], default: str) -> tuple[str, ...]:
    """``names`` with ``default`` moved to the front (the rest in their order): the choices of an option
    whose default is not the vocabulary's first name. ``ValueError`` when ``default`` is not one."""
    if default not in names:
        raise ValueError(f"{default!r} is none of {', '.join(names)}")
    return (default,) + tuple(n for n in names if n != default)


VOCABULARIES: dict[str, tuple[str, ...]] = dict(
    LEVELS=LEVELS, AGGREGATIONS=AGGREGATIONS, ALIGNMENTS=ALIGNMENTS, ALIGN_CHOICES=ALIGN_CHOICES,
    ABLATIONS=ABLATIONS, FAITHFULNESS_ABLATIONS=FAITHFULNESS_ABLATIONS, PRUNERS=PRUNERS,
    MASK_ABLATIONS=MASK_ABLATIONS, NODE_KINDS=NODE_KINDS, DTYPE_NAMES=DTYPE_NAMES, TASKS=TASKS, WINDOWS=WINDOWS)
"""Every vocabulary by its name."""

__all__ = ["ABLATIONS", "AGGREGATIONS", "ALIGNMENTS", "ALIGN_CHOICES", "DTYPE_NAMES", "FAITHFULNESS_ABLATIONS",
           "LEVELS", "MASK_ABLATIONS", "NODE_KINDS", "NodeKind", "PRUNERS", "TASKS", "VOCABULARIES", "WINDOWS",
           "default_first"]
