"""Seeded, deterministic generators of prompt pairs (docs/design.md §2) for indirect-object identification
(IOI) and subject-verb agreement (SVA), in the format of Marks et al.'s feature-circuits JSONL.

Every generator returns ``list[PromptPair]`` where ``clean_answer`` is the correct next word of
``clean_prefix`` and ``patch_answer`` the correct next word of ``patch_prefix``; answers carry a
leading space (``" Mary"``, ``" is"``). The same ``(n, seed, vocabulary)`` always gives the same
list (``random.Random(seed)``, no global state).

IOI convention
--------------
Templates use ``{A}`` for the indirect object (the answer, named once) and ``{B}`` for the subject
(named twice; its second mention S2 comes right before the action). ``ABBA`` templates name A
first, ``BABA`` templates name B first. The *patch* prompt is the clean prompt with S2 replaced by
the other name, so the repeated name changes and the answer flips::

    clean  "When Mary and John went to the store, John gave a drink to"  -> " Mary"
    patch  "When Mary and John went to the store, Mary gave a drink to"  -> " John"

Clean and patch differ in exactly one word (S2); whenever both answers are single tokens, S2 is a
single token in both prompts, so the two prompts have equal token length. ``case`` is the clean
prompt's kind (``"ABBA"`` / ``"BABA"``).

SVA convention (Marks et al.)
-----------------------------
Clean and patch differ only in the grammatical number of one noun: the main subject for
``simple`` ("The author" / "The authors"), ``nounpp`` ("The author near the desks" / "The authors
near the desks") and ``rc`` (across a relative clause: "The author that the guards like" / "The
authors that the guards like"); the relative-clause subject for ``within_rc`` ("The athlete that
the chefs" / "The athlete that the chef", answer agreeing with the RC subject). ``case`` is the
clean prompt's numbers: ``"singular"``/``"plural"`` for simple, ``"<subject>_<pp noun>"`` for
nounpp, ``"<main subject>_<rc subject>"`` for rc and within_rc. Cases are balanced: the i-th pair
takes case ``i mod #cases`` (order ``singular_singular, plural_plural, singular_plural,
plural_singular``) before a seeded shuffle, so for even n exactly half the clean prompts have a
singular agreeing noun.
"""

from __future__ import annotations

import random
import string
from typing import Any, Callable, Sequence

from featcirc.data.pairs import PromptPair
from featcirc.vocabulary import TASKS  # task names accepted by make_task (and load_pairs(task=...))

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Anna", "Paul", "Mark", "Lisa",
    "Kate", "Laura", "Sarah", "David", "Michael", "Robert", "Richard", "Charles", "Thomas", "Daniel",
    "Matthew", "George", "Steven", "Kevin", "Brian", "Edward", "Ryan", "Jacob", "Eric", "Adam",
    "Emma", "Alice", "Grace", "Rose", "Helen", "Jane", "Emily", "Susan", "Karen", "Nancy", "Peter",
    "Jack", "Henry", "Sam", "Max", "Lucy",
)
"""Common single-word first names (distinct, capitalised)."""

PLACES: tuple[str, ...] = (
    "store", "park", "school", "office", "hospital", "restaurant", "library", "station", "beach",
    "garden", "house", "market", "museum", "church", "bank", "cafe", "farm", "zoo", "river", "hotel",
)
"""Places, used as "the {PLACE}"."""

OBJECTS: tuple[str, ...] = (
    "drink", "book", "ring", "bone", "kiss", "ball", "letter", "gift", "key", "card", "pen", "bag",
    "hat", "basket", "necklace", "computer", "snack", "flower", "ticket", "cake",
)
"""Objects, used as "a {OBJECT}" (all begin with a consonant sound, so "a" is correct)."""

NOUNS: tuple[tuple[str, str], ...] = (
    ("author", "authors"), ("athlete", "athletes"), ("aunt", "aunts"), ("boy", "boys"),
    ("carpenter", "carpenters"), ("doctor", "doctors"), ("farmer", "farmers"), ("father", "fathers"),
    ("friend", "friends"), ("girl", "girls"), ("guy", "guys"), ("kid", "kids"), ("lawyer", "lawyers"),
    ("man", "men"), ("mother", "mothers"), ("poet", "poets"), ("singer", "singers"),
    ("teacher", "teachers"), ("uncle", "uncles"), ("victim", "victims"), ("woman", "women"),
    ("architect", "architects"), ("assistant", "assistants"), ("chef", "chefs"),
    ("dancer", "dancers"), ("driver", "drivers"), ("executive", "executives"), ("guard", "guards"),
    ("minister", "ministers"), ("parent", "parents"), ("skater", "skaters"), ("pilot", "pilots"),
    ("student", "students"), ("nurse", "nurses"), ("senator", "senators"), ("surgeon", "surgeons"),
    ("manager", "managers"), ("officer", "officers"), ("painter", "painters"), ("writer", "writers"),
    ("player", "players"), ("soldier", "soldiers"), ("judge", "judges"), ("actor", "actors"),
)
"""(singular, plural) animate nouns for SVA subjects (includes all of Marks et al.'s)."""

PP_NOUNS: tuple[tuple[str, str], ...] = (
    ("desk", "desks"), ("table", "tables"), ("car", "cars"), ("bike", "bikes"), ("tree", "trees"),
    ("window", "windows"), ("chair", "chairs"), ("truck", "trucks"), ("dog", "dogs"), ("cat", "cats"),
    ("house", "houses"), ("door", "doors"), ("wall", "walls"), ("fence", "fences"), ("lamp", "lamps"),
    ("box", "boxes"), ("bench", "benches"), ("building", "buildings"),
)
"""(singular, plural) nouns for the prepositional phrase of ``nounpp`` (disjoint from NOUNS)."""

PREPOSITIONS: tuple[str, ...] = ("near", "behind", "beside", "above", "below", "under")
"""Single-word locative prepositions for ``nounpp``."""

RC_VERBS: tuple[tuple[str, str], ...] = (
    ("likes", "like"), ("hates", "hate"), ("admires", "admire"), ("loves", "love"),
    ("knows", "know"), ("sees", "see"), ("meets", "meet"), ("helps", "help"),
)
"""(singular, plural) transitive verbs inside the relative clause of ``rc``."""

VERB_PAIRS: tuple[tuple[str, str], ...] = (
    ("is", "are"), ("has", "have"), ("was", "were"), ("does", "do"), ("goes", "go"),
)
"""(singular, plural) answer verbs."""

IOI_TEMPLATES: dict[str, tuple[str, ...]] = {
    "ABBA": (
        "When {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
        "Then, {A} and {B} had a long day at the {PLACE}. {B} gave a {OBJECT} to",
        "After {A} and {B} arrived at the {PLACE}, {B} handed a {OBJECT} to",
        "While {A} and {B} were working at the {PLACE}, {B} passed a {OBJECT} to",
        "Yesterday {A} and {B} met at the {PLACE}, and {B} brought a {OBJECT} to",
        "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {B} gave it to",
    ),
    "BABA": (
        "When {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to",
        "Then, {B} and {A} had a long day at the {PLACE}. {B} gave a {OBJECT} to",
        "After {B} and {A} arrived at the {PLACE}, {B} handed a {OBJECT} to",
        "While {B} and {A} were working at the {PLACE}, {B} passed a {OBJECT} to",
        "Yesterday {B} and {A} met at the {PLACE}, and {B} brought a {OBJECT} to",
        "Friends {B} and {A} found a {OBJECT} at the {PLACE}. {B} gave it to",
    ),
}
"""IOI templates by kind. ``{A}``: indirect object (answer, once); ``{B}``: subject (twice, the
second mention last); each ends right before the answer name."""


SVA_STRUCTURES: tuple[str, ...] = ("simple", "nounpp", "rc", "within_rc")

_NUMBERS = ("singular", "plural")
_MAX_RETRIES = 50  # attempts to draw a pair not drawn before, before accepting a repeat


MAX_PAIRS = 100_000
"""The most prompt pairs a run takes (``--pairs``): every pair is tokenized and scored (a forward and
backward pass or more each), so even the tiny model needs hours for this many."""
MAX_TASK_PAIRS = 2 * MAX_PAIRS
"""The most pairs a task generates (``--pairs`` / (1 - ``--eval-fraction``) with a held-out share):
pure Python, about 10 microseconds a pair (100 once a task's distinct pairs run out: sva-simple has
440), so this many take seconds and some 100 MB."""


def _fill(template: str, values: dict[str, str], roles: dict[str, list[str]]) -> tuple[str, list[tuple[str, int, int]]]:
    """``template.format(**values)`` and the character span of each field occurrence named in ``roles``
    (``{field: [role of 1st occurrence, role of 2nd, ...]}``)."""
    out, spans, seen = "", [], {}
    for literal, name, _, _ in string.Formatter().parse(template):
        out += literal
        if name is None:
            continue
        k = seen.get(name, 0)
        seen[name] = k + 1
        start = len(out)
        out += values[name]
        if name in roles and k < len(roles[name]):
            spans.append((roles[name][k], start, len(out)))
    return out, sorted(spans, key=lambda x: x[1])


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer number of pairs, got {n!r}")
    if n > MAX_TASK_PAIRS:
        raise ValueError(f"a task generates at most {MAX_TASK_PAIRS:,} pairs (seconds of pure Python; more is "
                         f"a typo or could not be scored), asked for {n:,}")


def _check_words(name: str, words: Sequence[Any], minimum: int, pairs: bool = False) -> None:
    if len(words) < minimum:
        raise ValueError(f"{name} needs at least {minimum} entries, got {len(words)}")
    for w in words:
        items = w if pairs else (w,)
        if pairs and (not isinstance(w, (tuple, list)) or len(w) != 2):
            raise ValueError(f"{name} entries must be (singular, plural) pairs, got {w!r}")
        for s in items:
            if not isinstance(s, str) or not s or s != s.strip() or " " in s:
                raise ValueError(f"{name} entries must be single non-empty words, got {s!r}")


def _draw(n: int, rng: random.Random, cases: Sequence[str],
          make: Callable[[random.Random, str], PromptPair]) -> list[PromptPair]:
    """``n`` pairs with balanced cases (case ``i mod len(cases)``), avoiding repeats while the
    vocabulary allows, then shuffled with the same generator."""
    out: list[PromptPair] = []
    seen: set[PromptPair] = set()
    for i in range(n):
        case = cases[i % len(cases)]
        for _ in range(_MAX_RETRIES):
            pair = make(rng, case)
            if pair not in seen:
                break
        seen.add(pair)
        out.append(pair)
    rng.shuffle(out)
    return out


def ioi_pairs(n: int, seed: int = 0, *, names: Sequence[str] = NAMES, places: Sequence[str] = PLACES,
              objects: Sequence[str] = OBJECTS, templates: dict[str, Sequence[str]] = IOI_TEMPLATES,
              kinds: Sequence[str] = ("ABBA", "BABA")) -> list[PromptPair]:
    """``n`` IOI pairs, kinds balanced, answers ``" " + name``.

    Clean: template with IO = A, S = B (answer A). Patch: S2 replaced by A (answer B). The two names
    of a pair are distinct; place and object are drawn uniformly.
    """
    _check_n(n)
    _check_words("names", names, 2)
    if len(set(names)) != len(names):
        raise ValueError("names must be distinct")
    _check_words("places", places, 1)
    _check_words("objects", objects, 1)
    if not kinds:
        raise ValueError("kinds must name at least one template kind, e.g. ('ABBA', 'BABA')")
    for kind in kinds:
        if kind not in templates or not templates[kind]:
            raise ValueError(f"no IOI templates for kind {kind!r}; templates has {sorted(templates)}")
        for t in templates[kind]:
            if t.count("{A}") != 1 or t.count("{B}") != 2:
                raise ValueError(f"IOI template must contain {{A}} once and {{B}} twice: {t!r}")
            if t.rfind("{B}") < t.find("{A}") or t != t.rstrip():
                raise ValueError(f"IOI template must mention {{B}} last and end right before the "
                                 f"answer (no trailing space): {t!r}")
    names, places, objects = list(names), list(places), list(objects)
    kind_templates = {k: list(templates[k]) for k in kinds}

    def make(rng: random.Random, kind: str) -> PromptPair:
        template = rng.choice(kind_templates[kind])
        a, b = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        s2 = template.rfind("{B}")
        head = template[:s2].format(A=a, B=b, PLACE=place, OBJECT=obj)
        tail = template[s2 + 3:].format(A=a, B=b, PLACE=place, OBJECT=obj)
        clean, spans = _fill(template, dict(A=a, B=b, PLACE=place, OBJECT=obj), {"A": ["IO"], "B": ["S1", "S2"]})
        assert clean == head + b + tail
        return PromptPair(clean_prefix=clean, patch_prefix=head + a + tail,
                          clean_answer=" " + a, patch_answer=" " + b, case=kind, positions=tuple(spans))

    return _draw(n, random.Random(seed), list(kinds), make)


def sva_pairs(structure: str, n: int, seed: int = 0, *, nouns: Sequence[tuple[str, str]] = NOUNS,
              pp_nouns: Sequence[tuple[str, str]] = PP_NOUNS, prepositions: Sequence[str] = PREPOSITIONS,
              rc_verbs: Sequence[tuple[str, str]] = RC_VERBS,
              verb_pairs: Sequence[tuple[str, str]] = VERB_PAIRS) -> list[PromptPair]:
    """``n`` subject-verb-agreement pairs for ``structure`` in ``simple | nounpp | rc | within_rc``.

    The agreeing noun (main subject, or the RC subject for ``within_rc``) is singular in the clean
    prompt and plural in the patch prompt or vice versa; the answer verb (drawn from
    ``verb_pairs``) agrees with it: clean_answer = " " + verb[clean number].
    """
    _check_n(n)
    if structure not in SVA_STRUCTURES:
        raise ValueError(f"unknown SVA structure {structure!r}; choose one of {SVA_STRUCTURES}")
    two_nouns = structure in ("rc", "within_rc")
    _check_words("nouns", nouns, 2 if two_nouns else 1, pairs=True)
    _check_words("verb_pairs", verb_pairs, 1, pairs=True)
    if structure == "nounpp":
        _check_words("pp_nouns", pp_nouns, 1, pairs=True)
        _check_words("prepositions", prepositions, 1)
    if structure == "rc":
        _check_words("rc_verbs", rc_verbs, 1, pairs=True)
    nouns, pp_nouns, verb_pairs = list(nouns), list(pp_nouns), list(verb_pairs)
    prepositions, rc_verbs = list(prepositions), list(rc_verbs)

    if structure == "simple":
        cases = list(_NUMBERS)
    else:
        # ordered so that every prefix of two is balanced in the agreeing noun's number
        cases = ["singular_singular", "plural_plural", "singular_plural", "plural_singular"]

    def num(name: str) -> int:
        return _NUMBERS.index(name)

    def make(rng: random.Random, case: str) -> PromptPair:
        verb = rng.choice(verb_pairs)
        if structure == "simple":
            noun = rng.choice(nouns)
            c = num(case)
            clean, patch = f"The {noun[c]}", f"The {noun[1 - c]}"
            agree = c
        elif structure == "nounpp":
            c, p = (num(x) for x in case.split("_"))
            noun, pp, prep = rng.choice(nouns), rng.choice(pp_nouns), rng.choice(prepositions)
            rest = f" {prep} the {pp[p]}"
            clean, patch = f"The {noun[c]}{rest}", f"The {noun[1 - c]}{rest}"
            agree = c
        else:
            c, r = (num(x) for x in case.split("_"))
            main, sub = rng.sample(nouns, 2)
            if structure == "rc":
                rest = f" that the {sub[r]} {rng.choice(rc_verbs)[r]}"
                clean, patch = f"The {main[c]}{rest}", f"The {main[1 - c]}{rest}"
                agree = c
            else:  # within_rc: the RC subject flips, the answer agrees with it
                head = f"The {main[c]} that the "
                clean, patch = head + sub[r], head + sub[1 - r]
                agree = r
        return PromptPair(clean_prefix=clean, patch_prefix=patch, clean_answer=" " + verb[agree],
                          patch_answer=" " + verb[1 - agree], case=case, positions=_sva_spans(clean, structure))

    return _draw(n, random.Random(seed), cases, make)


def _sva_spans(clean: str, structure: str) -> tuple[tuple[str, int, int], ...] | None:
    """Named positions of an SVA clean prompt: ``subject`` (the noun the answer agrees with) and, but
    for ``simple``, ``attractor`` (the other noun: the PP noun, the RC subject, or for ``within_rc`` the
    main subject). A noun that ends the prompt is the ``END`` token and not named (the subject of
``simple``, the PP noun of ``nounpp``, the RC subject of ``within_rc``). Words are found by their place in the prompt ("The N ...", "... the N ...")."""
    words, spans, at = clean.split(" "), [], 0
    starts = []
    for w in words:
        starts.append((at, at + len(w)))
        at += len(w) + 1
    first = starts[1]  # "The {noun}"
    the = [i for i, w in enumerate(words) if w == "the" and i > 1]
    second = starts[the[0] + 1] if the else None
    if structure == "simple":
        spans = [("subject", *first)]
    elif structure == "within_rc":  # the agreeing RC subject is the last token: END
        spans = [("attractor", *first)]
    else:
        spans = [("subject", *first), ("attractor", *second)]
    kept = tuple(x for x in spans if x[2] < len(clean))  # a word ending the prompt is END
    return kept or None


def make_task(task: str, n: int, seed: int = 0, **vocab: Any) -> list[PromptPair]:
    """Generate ``n`` pairs of a named task (one of :data:`TASKS`); ``vocab`` overrides word lists
    (keyword arguments of :func:`ioi_pairs` or :func:`sva_pairs`)."""
    if task == "ioi":
        allowed: tuple[str, ...] = ("names", "places", "objects", "templates", "kinds")
    elif task in TASKS:
        allowed = ("nouns", "pp_nouns", "prepositions", "rc_verbs", "verb_pairs")
    else:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    bad = sorted(set(vocab) - set(allowed))
    if bad:
        raise TypeError(f"task {task!r} does not take {bad}; its vocabulary options are {allowed}")
    if task == "ioi":
        return ioi_pairs(n, seed, **vocab)
    structure = task[len("sva-"):].replace("-", "_")
    return sva_pairs(structure, n, seed, **vocab)
