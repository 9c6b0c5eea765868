"""featcirc's vocabularies are spelled once (:mod:`featcirc.vocabulary`): every command-line option's
``choices`` are a vocabulary's names (its default first), the modules that used to keep copies
re-export the same tuples, and the vocabulary and the input checks import no torch."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from featcirc import vocabulary as V
from featcirc.cli import COMMANDS, build_parser

EXPECTED = {
    # (command, option): the vocabulary's names, in the order the option lists them
    ("discover", "--task"): V.TASKS,
    ("discover", "--level"): V.LEVELS,
    ("discover", "--aggregation"): V.AGGREGATIONS,
    ("discover", "--align"): V.ALIGN_CHOICES,
    ("discover", "--prune"): V.PRUNERS,
    ("discover", "--mask-ablation"): V.MASK_ABLATIONS,
    ("discover", "--dtype"): V.DTYPE_NAMES,
    ("evaluate", "--task"): V.TASKS,
    ("evaluate", "--dtype"): V.DTYPE_NAMES,
    ("compare", "--task"): V.TASKS,
    ("compare", "--level"): V.default_first(V.LEVELS, "component"),
    ("compare", "--align"): V.ALIGN_CHOICES,
    ("compare", "--dtype"): V.DTYPE_NAMES,
    ("demo", "--task"): V.TASKS,
    ("demo", "--dtype"): V.DTYPE_NAMES,
    ("train-saes", "--windows"): V.WINDOWS,
    ("train-saes", "--sae-dtype"): V.DTYPE_NAMES,
    ("features", "--dtype"): V.DTYPE_NAMES,
}
"""Options whose choices come from a registry rather than a vocabulary (``--method``: the attribution
methods; ``export --format``: the exporters) are checked by their own tests."""
OTHER_REGISTRIES = {("discover", "--method"), ("demo", "--method"), ("export", "--format")}


def _options_with_choices() -> dict[tuple[str, str], argparse.Action]:
    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
    out = {}
    for a in ap._actions:  # the global options take no choices
        assert a.choices is None or a is sub, a.option_strings
    for name, parser in sub.choices.items():
        for a in parser._actions:
            if a.choices is not None:
                out[(name, a.option_strings[-1] if a.option_strings else a.dest)] = a
    return out


def test_every_option_with_choices_takes_a_vocabularys_names():
    options = _options_with_choices()
    assert set(options) == set(EXPECTED) | OTHER_REGISTRIES, sorted(set(options) ^ (set(EXPECTED) | OTHER_REGISTRIES))
    for key, names in EXPECTED.items():
        action = options[key]
        assert tuple(action.choices) == names, key
        if action.default is not None:  # one of the names; the first where the vocabulary has a default
            assert action.default in names, key
            assert action.default == names[0] or names is V.TASKS, key


def test_the_defaults_of_lists_of_ablations_are_the_vocabularys():
    ap = build_parser()
    got = {tuple(argv): ap.parse_args(argv) for argv in (["discover", "--model", "tiny", "--task", "ioi", "--out", "x"],
                                                         ["compare", "--model", "tiny", "--task", "ioi", "--out", "x"])}
    assert [a.ablations if a.command == "discover" else a.ablation for a in got.values()] == \
        [",".join(V.FAITHFULNESS_ABLATIONS)] * 2
    assert set(V.FAITHFULNESS_ABLATIONS) <= set(V.ABLATIONS) and set(V.MASK_ABLATIONS) <= set(V.ABLATIONS)


def test_the_old_names_are_the_vocabularys():
    """Where a name was defined before, it is now the vocabulary's tuple itself, not a copy."""
    from featcirc.attribution import scores, settings
    from featcirc.commands import checks, common, discover, evaluate
    from featcirc.data import align, tasks
    from featcirc import evaluate as evaluate_pkg, pruning, sites
    from featcirc.models.device import DTYPES

    assert scores.LEVELS is V.LEVELS and scores.AGGREGATIONS is V.AGGREGATIONS
    assert settings.LEVELS is V.LEVELS and settings.AGGREGATIONS is V.AGGREGATIONS
    assert checks.ABLATION_NAMES is V.ABLATIONS and checks.DTYPE_NAMES is V.DTYPE_NAMES
    assert common.LEVELS is V.LEVELS and common.AGGREGATIONS is V.AGGREGATIONS and common.TASK_CHOICES is V.TASKS
    assert discover.FAITHFULNESS_ABLATIONS is V.FAITHFULNESS_ABLATIONS and evaluate.EVAL_ABLATIONS is V.ABLATIONS
    assert align.ALIGNMENTS is V.ALIGNMENTS and align.ALIGN_CHOICES is V.ALIGN_CHOICES and tasks.TASKS is V.TASKS
    assert evaluate_pkg.ABLATIONS is V.ABLATIONS
    assert pruning.PRUNERS is V.PRUNERS and pruning.MASK_ABLATIONS is V.MASK_ABLATIONS
    assert sites.NodeKind is V.NodeKind and V.NODE_KINDS == ("feature", "error", "component", "metric")
    assert tuple(DTYPES) == V.DTYPE_NAMES


def test_every_vocabulary_is_a_tuple_of_distinct_names():
    for name, names in V.VOCABULARIES.items():
        assert isinstance(names, tuple) and names and all(isinstance(n, str) and n for n in names), name
        assert len(set(names)) == len(names), name
    assert V.ALIGN_CHOICES == ("auto",) + V.ALIGNMENTS
    assert V.default_first(V.LEVELS, V.LEVELS[-1])[0] == V.LEVELS[-1]
    assert sorted(V.default_first(V.ALIGN_CHOICES, "role")) == sorted(V.ALIGN_CHOICES)
    with pytest.raises(ValueError):
        V.default_first(V.LEVELS, "neuron")


def test_the_vocabulary_and_the_checks_import_no_torch():
    code = ("import sys\n"
            "import featcirc.vocabulary, featcirc.commands.checks\n"
            "print(sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
    code = ("import sys\nimport featcirc.vocabulary\n"
            "print(sorted(m for m in sys.modules if m.startswith('featcirc')))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "['featcirc', 'featcirc.vocabulary']", res.stdout + res.stderr
