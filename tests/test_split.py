"""Held-out splits: disjoint, deterministic, stratified by case; written for the run directory."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from featcirc.data import DataError, PromptPair, read_pairs
from featcirc.data.split import EVAL_PAIRS_FILE, split_pairs, write_split


def _pairs(cases: dict) -> list[PromptPair]:
    out = []
    for case, n in cases.items():
        out += [PromptPair(f"clean {case} {i}", f"patch {case} {i}", " a", " b", case) for i in range(n)]
    return out


def test_split_is_disjoint_complete_and_keeps_order():
    pairs = _pairs({"ABBA": 30, "BABA": 20})
    disc, ev = split_pairs(pairs, 0.5, seed=0)
    assert len(ev) == 25 and len(disc) == 25
    assert not set(disc) & set(ev)
    assert Counter(disc) + Counter(ev) == Counter(pairs)
    assert disc == [p for p in pairs if p in set(disc)] and ev == [p for p in pairs if p in set(ev)]


def test_split_is_deterministic_and_depends_on_the_seed():
    pairs = _pairs({"x": 40})
    assert split_pairs(pairs, 0.3, seed=7) == split_pairs(pairs, 0.3, seed=7)
    assert split_pairs(pairs, 0.3, seed=7)[1] != split_pairs(pairs, 0.3, seed=8)[1]


def test_split_is_stratified_by_case():
    pairs = _pairs({"singular_singular": 40, "plural_plural": 40, "singular_plural": 12, "plural_singular": 8})
    pairs = pairs[::2] + pairs[1::2]  # interleave so order alone would not stratify
    _, ev = split_pairs(pairs, 0.25, seed=1)
    got = Counter(p.case for p in ev)
    assert got == {"singular_singular": 10, "plural_plural": 10, "singular_plural": 3, "plural_singular": 2}
    # pairs without a case form their own stratum
    mixed = _pairs({"a": 10}) + [PromptPair(f"c{i}", f"p{i}", " a", " b") for i in range(10)]
    _, ev = split_pairs(mixed, 0.5, seed=0)
    assert Counter(p.case for p in ev) == {"a": 5, None: 5}


def test_split_keeps_at_least_one_pair_on_each_side():
    disc, ev = split_pairs(_pairs({"x": 3}), 0.01, seed=0)
    assert len(ev) == 1 and len(disc) == 2
    disc, ev = split_pairs(_pairs({"x": 3}), 0.99, seed=0)
    assert len(ev) == 2 and len(disc) == 1


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, True, "0.5"])
def test_bad_fraction_is_a_clear_error(fraction):
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        split_pairs(_pairs({"x": 10}), fraction, seed=0)


def test_too_few_pairs_is_a_clear_error():
    with pytest.raises(DataError, match="at least 2 pairs"):
        split_pairs(_pairs({"x": 1}), 0.5, seed=0)


def test_write_split_writes_eval_pairs_and_the_record(tmp_path, caplog):
    pairs = _pairs({"ABBA": 6, "BABA": 4})
    disc, ev = split_pairs(pairs, 0.5, seed=0)
    rec = write_split(tmp_path, ev, discovery=disc, eval_fraction=0.5, seed=0)
    assert read_pairs(tmp_path / EVAL_PAIRS_FILE) == ev
    assert rec == dict(eval_fraction=0.5, split_seed=0, n_discovery=5, n_eval=5, eval_pairs=EVAL_PAIRS_FILE,
                       eval_source="split", n_overlap=0)
    json.dumps(rec)  # goes into run.json as is
    # an evaluation file that repeats discovery pairs is counted and warned about
    rec = write_split(tmp_path, ev + disc[:2], discovery=disc, source="given.jsonl")
    assert rec["n_overlap"] == 2 and rec["eval_source"] == "given.jsonl"
    assert "in-sample" in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))
