"""IOI and subject-verb-agreement generators: determinism, correct answers, balanced cases, and the
same shape as Marks et al.'s files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from featcirc.data import tasks
from featcirc.data import PromptPair, read_pairs, write_pairs
from featcirc.data.tasks import (IOI_TEMPLATES, NAMES, NOUNS, OBJECTS, PLACES, PP_NOUNS, PREPOSITIONS, RC_VERBS,
                            TASKS, VERB_PAIRS, ioi_pairs, make_task, sva_pairs)

SVA_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "sva"
SING = {s: p for s, p in NOUNS}
PLUR = {p: s for s, p in NOUNS}
VERB_SING = {" " + s: " " + p for s, p in VERB_PAIRS}
VERB_PLUR = {" " + p: " " + s for s, p in VERB_PAIRS}


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


# ----------------------------------------------------------------------------- vocabulary

def test_vocabulary_sizes_and_form():
    assert len(NAMES) >= 40 and len(set(NAMES)) == len(NAMES)
    assert all(n.isalpha() and n[0].isupper() and n[1:].islower() for n in NAMES)
    assert len(PLACES) >= 15 and len(OBJECTS) >= 15 and len(NOUNS) >= 40 and len(PP_NOUNS) >= 15
    assert len(PREPOSITIONS) >= 3 and len(RC_VERBS) >= 3
    assert {("is", "are"), ("has", "have"), ("was", "were"), ("does", "do")} <= set(VERB_PAIRS)
    for w in PLACES + OBJECTS + PREPOSITIONS + tuple(x for pr in NOUNS + PP_NOUNS + RC_VERBS + VERB_PAIRS for x in pr):
        assert w.isalpha() and w.islower(), w
    assert len({s for s, _ in NOUNS}) == len(NOUNS) and not {s for s, _ in NOUNS} & {s for s, _ in PP_NOUNS}
    for kind in ("ABBA", "BABA"):
        assert len(IOI_TEMPLATES[kind]) >= 4
        for t in IOI_TEMPLATES[kind]:
            assert t.count("{A}") == 1 and t.count("{B}") == 2 and t.endswith(" to"), t
            first = "{A}" if kind == "ABBA" else "{B}"
            assert t.index(first) == min(t.index("{A}"), t.index("{B}")), t


def test_vocabulary_covers_marks_et_al():
    if not SVA_DIR.is_dir():
        pytest.skip(f"real SVA data directory {SVA_DIR} is absent")
    nouns = {w for pr in NOUNS for w in pr}
    pp = {w for pr in PP_NOUNS for w in pr}
    for f in SVA_DIR.glob("*.json"):
        for p in read_pairs(f)[:300]:
            w = p.clean_prefix.split()
            assert w[1] in nouns, (f, w)
            if f.name.startswith("nounpp"):
                assert w[2] in PREPOSITIONS[:3] and w[4] in pp, (f, w)
            if f.name.startswith("within_rc"):
                assert w[4] in nouns, (f, w)


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_pairs_distinct_seeds_differ(task):
    a = make_task(task, 50, seed=7)
    assert a == make_task(task, 50, seed=7)
    assert a != make_task(task, 50, seed=8)
    assert len(a) == 50 and all(isinstance(p, PromptPair) for p in a)
    assert len(set(a)) == 50  # no repeats while the vocabulary allows
    assert make_task(task, 0) == []


def test_cases_are_shuffled_not_cyclic():
    cases = [p.case for p in make_task("sva-nounpp", 40, seed=0)]
    assert cases != [cases[i % 4] for i in range(40)]


def test_independent_of_global_random_state():
    import random
    random.seed(123)
    a = make_task("ioi", 10, seed=1)
    random.seed(456)
    assert make_task("ioi", 10, seed=1) == a


def test_bad_arguments():
    with pytest.raises(ValueError) as e:
        make_task("sva", 3)
    assert all(t in str(e.value) for t in TASKS)
    with pytest.raises(TypeError, match="names"):
        make_task("sva-simple", 3, names=("Ann", "Bob"))
    with pytest.raises(ValueError, match="non-negative"):
        make_task("ioi", -1)
    with pytest.raises(ValueError, match="structure"):
        sva_pairs("across", 3)
    with pytest.raises(ValueError, match="at least 2"):
        ioi_pairs(3, names=("Ann",))
    with pytest.raises(ValueError, match="kind"):
        ioi_pairs(3, kinds=("ABC",))
    with pytest.raises(ValueError, match="twice"):
        ioi_pairs(3, templates={"ABBA": ("{A} and {B} saw a {OBJECT}. He gave it to",)}, kinds=("ABBA",))


# ----------------------------------------------------------------------------- IOI

def _ioi_answer(prompt: str, names: set[str]) -> tuple[str, str]:
    """(indirect object, subject) of an IOI prompt: the name said once, and the one said twice."""
    c = Counter(w for w in words(prompt) if w in names)
    assert sorted(c.values()) == [1, 2], prompt
    io = next(n for n, k in c.items() if k == 1)
    s = next(n for n, k in c.items() if k == 2)
    return io, s


def test_ioi_answers_are_correct_and_lengths_equal():
    pairs = ioi_pairs(200, seed=3)
    names = set(NAMES)
    for p in pairs:
        io, s = _ioi_answer(p.clean_prefix, names)
        assert p.clean_answer == " " + io
        io_p, s_p = _ioi_answer(p.patch_prefix, names)
        assert p.patch_answer == " " + io_p
        assert (io_p, s_p) == (s, io)  # the answer flips
        # the subject is the last name mentioned (right before the action)
        assert [w for w in words(p.clean_prefix) if w in names][-1] == s
        cw, pw = words(p.clean_prefix), words(p.patch_prefix)
        assert len(cw) == len(pw)
        assert sum(x != y for x, y in zip(cw, pw)) == 1  # only S2 differs
        assert len(p.clean_prefix.split()) == len(p.patch_prefix.split())
        first = [w for w in cw if w in names][0]
        assert p.case == ("ABBA" if first == io else "BABA")
        assert p.clean_prefix.endswith(" to") or p.clean_prefix.endswith(" it to")
        assert any(f"the {x}" in p.clean_prefix for x in PLACES) and any(o in cw for o in OBJECTS + ("it",))


def test_ioi_kinds_balanced_and_templates_used():
    pairs = ioi_pairs(101, seed=0)
    c = Counter(p.case for p in pairs)
    assert set(c) == {"ABBA", "BABA"} and abs(c["ABBA"] - c["BABA"]) <= 1
    openers = Counter(p.clean_prefix.split()[0] for p in pairs)
    assert len(openers) >= 4
    assert {p.case for p in ioi_pairs(10, kinds=("BABA",))} == {"BABA"}


def test_ioi_custom_vocabulary():
    pairs = ioi_pairs(6, seed=0, names=("Ann", "Bob"), places=("mall",), objects=("pen",),
                      templates={"ABBA": ("{A} met {B} at the {PLACE}; {B} gave a {OBJECT} to",)}, kinds=("ABBA",))
    assert {(p.clean_answer, p.patch_answer) for p in pairs} <= {(" Ann", " Bob"), (" Bob", " Ann")}
    for p in pairs:
        assert p.clean_prefix in ("Ann met Bob at the mall; Bob gave a pen to", "Bob met Ann at the mall; Ann gave a pen to")


# ----------------------------------------------------------------------------- SVA

SUBJECT_INDEX = {"simple": 1, "nounpp": 1, "rc": 1, "within_rc": 4}
N_WORDS = {"simple": 2, "nounpp": 5, "rc": 6, "within_rc": 5}


@pytest.mark.parametrize("structure", ["simple", "nounpp", "rc", "within_rc"])
def test_sva_pairs_differ_only_in_subject_number(structure):
    pairs = sva_pairs(structure, 200, seed=4)
    for p in pairs:
        cw, pw = p.clean_prefix.split(), p.patch_prefix.split()
        assert len(cw) == len(pw) == N_WORDS[structure] and cw[0] == "The"
        diff = [i for i, (x, y) in enumerate(zip(cw, pw)) if x != y]
        i = SUBJECT_INDEX[structure]
        assert diff == [i], p
        c, q = cw[i], pw[i]
        assert SING.get(c) == q or PLUR.get(c) == q, p
        clean_singular = c in SING
        if clean_singular:
            assert p.clean_answer in VERB_SING and VERB_SING[p.clean_answer] == p.patch_answer
        else:
            assert p.clean_answer in VERB_PLUR and VERB_PLUR[p.clean_answer] == p.patch_answer
        # case: the clean prompt's numbers, as in the real files
        num = {True: "singular", False: "plural"}
        if structure == "simple":
            assert p.case == num[clean_singular]
        elif structure == "nounpp":
            assert cw[2] in PREPOSITIONS and cw[3] == "the"
            pp_sing = cw[4] in dict(PP_NOUNS)
            assert cw[4] in dict(PP_NOUNS) or cw[4] in {pl for _, pl in PP_NOUNS}
            assert p.case == f"{num[clean_singular]}_{num[pp_sing]}"
        elif structure == "rc":
            assert cw[2:4] == ["that", "the"]
            rc_sing = cw[4] in SING
            verb = dict(RC_VERBS) if rc_sing else {pl: s for s, pl in RC_VERBS}
            assert cw[5] in verb, p  # the RC verb agrees with the RC subject
            assert cw[4] not in (SING.get(c), PLUR.get(c), c)  # two different nouns
            assert p.case == f"{num[clean_singular]}_{num[rc_sing]}"
        else:
            assert cw[2:4] == ["that", "the"]
            main_sing = cw[1] in SING
            assert cw[1] not in (c, q, SING.get(c), PLUR.get(c))
            assert p.case == f"{num[main_sing]}_{num[clean_singular]}"


@pytest.mark.parametrize("structure, n_cases", [("simple", 2), ("nounpp", 4), ("rc", 4), ("within_rc", 4)])
def test_sva_cases_balanced(structure, n_cases):
    pairs = sva_pairs(structure, 98, seed=1)
    c = Counter(p.case for p in pairs)
    assert len(c) == n_cases and max(c.values()) - min(c.values()) <= 1
    sing = sum(p.clean_prefix.split()[SUBJECT_INDEX[structure]] in SING for p in pairs)
    assert sing == 49  # half the clean prompts have a singular agreeing noun
    for n in (2, 6, 7, 9):
        sing = sum(p.clean_prefix.split()[SUBJECT_INDEX[structure]] in SING for p in sva_pairs(structure, n, 2))
        assert abs(2 * sing - n) <= 1, (n, sing)
    assert len({p.clean_answer for p in pairs}) == 2 * len(VERB_PAIRS)


def test_sva_custom_vocabulary():
    pairs = sva_pairs("nounpp", 8, seed=0, nouns=(("cook", "cooks"),), pp_nouns=(("pot", "pots"),),
                      prepositions=("by",), verb_pairs=(("sings", "sing"),))
    assert {p.clean_prefix for p in pairs} == {"The cook by the pot", "The cook by the pots",
                                               "The cooks by the pot", "The cooks by the pots"}
    assert {p.clean_answer for p in pairs} == {" sings", " sing"}


@pytest.mark.parametrize("name, task", [("simple", "sva-simple"), ("nounpp", "sva-nounpp"),
                                        ("within_rc", "sva-within-rc")])
def test_same_shape_as_marks_files(tmp_path, name, task):
    if not SVA_DIR.is_dir():
        pytest.skip(f"real SVA data directory {SVA_DIR} is absent")
    real_lines = (SVA_DIR / f"{name}_test.json").read_text().splitlines()
    real = [json.loads(x) for x in real_lines]
    ours = write_pairs(tmp_path / f"{name}.json", make_task(task, 40, seed=0)).read_text().splitlines()
    ours_d = [json.loads(x) for x in ours]
    # same keys, same order, plus the optional named positions (docs/design.md §2)
    assert [k for k in ours_d[0] if k != "positions"] == list(real[0])
    assert {d["case"] for d in ours_d} == {d["case"] for d in real}
    assert {len(d["clean_prefix"].split()) for d in ours_d} == {len(d["clean_prefix"].split()) for d in real}
    # the real files follow the same convention: the case names the clean prompt's numbers
    for d in real[:100]:
        w = d["clean_prefix"].split()
        agreeing = w[4] if name == "within_rc" else w[1]
        expect = "singular" if agreeing in SING else "plural"
        assert (d["case"].split("_")[1] if name == "within_rc" else d["case"].split("_")[0]) == expect
