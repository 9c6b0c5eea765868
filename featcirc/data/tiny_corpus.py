"""Sentences in the tiny model's training distribution (docs/design.md §10), generated deterministically.

The same generator as ``experiments/train_tiny.py`` (steps 1-2): IOI narratives and SVA sentences
from :mod:`featcirc.data.tasks` (prompt + its correct answer + a short continuation) plus filler
sentences, with the vocabulary split that the shipped bundle records in
``featcirc/resources/tiny/vocab_split.json``. ``build_corpus(split, seed, ...)`` returns exactly the
sentences the training script generates for the same arguments (a test checks this), so the tiny
model knows every word and the SAEs trained on it see in-distribution text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

from featcirc.data import tasks
from featcirc.data.pairs import PromptPair

__all__ = ["TINY_CORPUS_SIZES", "build_corpus", "filler_sentence", "load_vocab_split", "tiny_sentences"]

TAILS: dict[str, tuple[str, ...]] = {  # continuation after an SVA answer verb, by singular form
    "is": ("happy", "here", "tired", "late"), "has": ("left", "won", "eaten"),
    "was": ("happy", "here", "tired", "late"), "does": ("well", "not", "so"),
    "goes": ("home", "away", "out"),
}
ADJECTIVES: tuple[str, ...] = ("happy", "tired", "late", "busy", "quiet", "kind", "here", "there")

TINY_CORPUS_SIZES: dict[str, int] = {"n_ioi": 2000, "n_sva": 800, "n_filler": 10000}
"""Sizes of the ``"tiny"`` corpus of :func:`featcirc.data.corpus.load_corpus`: 2 * 2000 IOI,
8 * 800 SVA and 10000 filler sentences (20400 sentences, about 200k tokens)."""


def load_vocab_split(path: "Path | None" = None) -> dict[str, Any]:
    """The vocabulary split recorded in the tiny bundle (``vocab_split.json``)."""
    if path is None:
        from featcirc.models.tiny import TINY_DIR

        path = TINY_DIR / "vocab_split.json"
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the tiny model bundle is incomplete; rebuild it with "
            "`PYTHONPATH=. python experiments/train_tiny.py` (or reinstall featcirc)")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _tup(pairs: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in pairs]


def _sva_sentence(p: PromptPair, rng: random.Random, clean: bool) -> str:
    prefix, ans = (p.clean_prefix, p.clean_answer) if clean else (p.patch_prefix, p.patch_answer)
    verb = ans.strip()
    sing = {pl: s for s, pl in tasks.VERB_PAIRS}.get(verb, verb)
    return f"{prefix}{ans} {rng.choice(TAILS.get(sing, ADJECTIVES))}."


def filler_sentence(rng: random.Random, split: dict[str, Any]) -> str:
    """One filler sentence: names (all, held-out included), places, objects and nouns in simple
    sentences. Held-out nouns show their number only through a transitive verb (likes/like, ...),
    never with the SVA answer verbs (is/are, has/have, ...)."""
    names = list(tasks.NAMES)
    a, b = rng.sample(names, 2)
    place, obj, place2 = rng.choice(tasks.PLACES), rng.choice(tasks.OBJECTS), rng.choice(tasks.PLACES)
    noun = rng.choice(tasks.NOUNS)
    pp = rng.choice(tasks.PP_NOUNS)
    num = rng.randrange(2)
    rv, rv2 = rng.choice(tasks.RC_VERBS), rng.choice(tasks.RC_VERBS)
    vp = rng.choice(tasks.VERB_PAIRS)
    adj = rng.choice(ADJECTIVES)
    prep = rng.choice(tasks.PREPOSITIONS)
    train_noun = tuple(rng.choice(split["train_nouns"]))
    who = (a, b)[rng.randrange(2)]
    templates = [
        f"{a} went to the {place}.",
        f"{a} has a {obj}.",
        f"{a} and {b} went to the {place} together.",
        f"{a} likes the {place}.",
        f"{a} found a {obj} at the {place}.",
        f"{a} went to the {place}. Then {a} ate a {obj}.",
        f"{a} was at the {place}, and {a} was {adj}.",
        f"{a} and {b} are friends.",
        f"{a} saw {b} at the {place}.",
        f"{a} met {b} at the {place}. {a} was {adj}.",
        f"{a} {rv[0]} {b}.",
        f"The {noun[num]} {rv[num]} the {pp[rng.randrange(2)]}.",
        f"The {noun[num]} {rv[num]} {a}.",
        f"{a} {rv[0]} the {noun[num]}.",
        f"The {noun[num]} went to the {place}.",
        f"The {pp[num]} {vp[num]} {prep} the {place}.",
        f"The {obj} is on the {pp[0]}.",
        f"The {train_noun[num]} {vp[num]} {adj}.",
        f"{a} took the {obj} from the {place} to the {place2}.",
        f"The {noun[num]} and {a} went to the {place}.",
        f"{a} gave a {obj} to the {noun[num]}.",
        f"The {noun[num]} {prep} the {pp[rng.randrange(2)]} {rv[num]} the {place}.",
        f"{a} and {b} went to the {place}. {a} and {b} were {adj}.",
        f"{a} saw a {obj}. Then {a} took the {obj} home.",
        f"{a} gave a {obj} to {b}. {b} was {adj}.",
        f"{a} and {b} were at the {place}. Then {who} went home.",
        f"{a} {rv[0]} the {noun[num]} that {rv2[num]} the {pp[rng.randrange(2)]}.",
        f"{a} met the {noun[num]} that {rv2[num]} {b}.",
    ]
    return templates[rng.randrange(len(templates))]


def build_corpus(split: dict[str, Any], seed: int, n_ioi: int, n_sva: int, n_filler: int) -> list[str]:
    """``2 n_ioi`` IOI sentences (clean and patch prompt with their answers), ``2 n_sva`` sentences
    per SVA structure and ``n_filler`` filler sentences, shuffled; deterministic for ``seed``."""
    rng = random.Random(seed)
    out: list[str] = []
    ioi = tasks.ioi_pairs(n_ioi, seed + 1, names=split["train_names"], templates=split["train_templates"])
    for p in ioi:
        out.append(p.clean_prefix + p.clean_answer + ".")
        out.append(p.patch_prefix + p.patch_answer + ".")
    nouns = _tup(split["train_nouns"])
    for i, s in enumerate(tasks.SVA_STRUCTURES):
        for p in tasks.sva_pairs(s, n_sva, seed + 2 + i, nouns=nouns):
            out.append(_sva_sentence(p, rng, True))
            out.append(_sva_sentence(p, rng, False))
    out += [filler_sentence(rng, split) for _ in range(n_filler)]
    rng.shuffle(out)
    return out


def tiny_sentences(seed: int = 0) -> list[str]:
    """The ``"tiny"`` corpus: :func:`build_corpus` with the bundle's vocabulary split and
    :data:`TINY_CORPUS_SIZES`."""
    return build_corpus(load_vocab_split(), seed, **TINY_CORPUS_SIZES)
