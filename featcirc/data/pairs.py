"""Prompt pairs (docs/design.md §2): reading and writing Marks et al.'s feature-circuits JSONL, and
tokenizing pairs into batches of equal token length.

A pair is (clean prompt, patch prompt, clean answer, patch answer); the metric is
``m = logit(clean_answer) - logit(patch_answer)`` at the last position. A pair is usable only if both
answers are single tokens and both prompts have the same token length; other pairs are dropped with
a count per reason (logged and kept in :attr:`PairDataset.dropped`), never silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from featcirc.io import atomic_path

if TYPE_CHECKING:  # torch is imported where tensors are made: reading pairs must not need it
    import torch

logger = logging.getLogger(__name__)

KEYS: tuple[str, ...] = ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer")
"""Required keys of one JSONL line (``case`` is optional)."""

DROP_MULTI_TOKEN = "multi-token answer"
DROP_SAME_ANSWER = "same answer"
DROP_UNK_ANSWER = "unknown-token answer"
DROP_UNK_PROMPT = "unknown token in prompt"
DROP_IDENTICAL = "identical clean/patch tokens"
DROP_UNEQUAL = "unequal clean/patch length"
DROP_TOO_LONG = "longer than n_ctx"
DROP_LIMIT = "over max_pairs (--pairs)"
END = "END"
"""The role of a pair's last prompt token (where the metric is read): always present, never named in a file."""
SPAN_BAD = "span not [start, end) inside clean_prefix"
SPAN_RESERVED = "role named END (reserved: the last token)"
SPAN_OVERLAP = "span overlaps another role's"
SPAN_BOUNDARY = "span does not end on a token boundary"
SPAN_SAME_TOKEN = "two roles in one token"
SPAN_AT_END = "span in the last token (END)"
"""Reasons a named position is dropped at tokenization (counted in :attr:`PairDataset.dropped_positions`)."""
"""The drop reason of pairs beyond ``max_pairs`` (``limit_option`` names the option: ``--pairs`` by default)."""


class DataError(ValueError):
    """Invalid or unusable prompt-pair data (the message names the file and line where known)."""


@dataclass(frozen=True)
class PromptPair:
    """One clean/patch prompt pair with the correct next token of each (answers keep their leading
    space, e.g. ``" is"``); ``case`` is an optional label such as ``"singular_plural"``."""

    clean_prefix: str
    patch_prefix: str
    clean_answer: str
    patch_answer: str
    case: str | None = None
    positions: tuple[tuple[str, int, int], ...] | None = None
    """Named positions (docs/design.md §2): ``(role, start, end)`` character spans ``[start, end)`` of
    ``clean_prefix``, in the order given; each names the token that holds the span's last character.
    The patch prompt has the same token positions. ``END`` (the last token) is implicit."""

    def to_json(self) -> dict[str, Any]:
        """The feature-circuits JSON object (``case`` and ``positions`` left out when None)."""
        d: dict[str, Any] = {k: getattr(self, k) for k in KEYS}
        if self.case is not None:
            d["case"] = self.case
        if self.positions is not None:
            d["positions"] = {r: [a, b] for r, a, b in self.positions}
        return d

    @property
    def roles(self) -> tuple[str, ...]:
        """The named roles, in the order given (``()`` when none)."""
        return tuple(r for r, _, _ in self.positions or ())


def parse_positions(value: Any, where: str) -> tuple[tuple[str, int, int], ...] | None:
    """The ``positions`` field of a JSONL line: ``{"IO": [start, end], ...}`` (character offsets into
    ``clean_prefix``). A value of the wrong shape is a :class:`DataError`; spans that are out of range,
    overlapping or reserved are kept here and dropped, counted, at tokenization."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DataError(f"{where}: 'positions' must be an object {{role: [start, end]}} of character offsets "
                        f"into clean_prefix, got {type(value).__name__}")
    out = []
    for role, span in value.items():
        if not role or not isinstance(role, str) or any(c in role for c in "@/ \t\n"):
            raise DataError(f"{where}: 'positions' role {role!r} must be a non-empty name without '@', '/' or spaces")
        if (not isinstance(span, (list, tuple)) or len(span) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
            raise DataError(f"{where}: positions[{role!r}] must be [start, end], two integer character offsets "
                            f"into clean_prefix, got {span!r}")
        out.append((role, int(span[0]), int(span[1])))
    return tuple(out)


def _parse_line(obj: Any, where: str) -> PromptPair:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with keys {list(KEYS)}, got {type(obj).__name__}")
    missing = [k for k in KEYS if k not in obj]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; each line needs {list(KEYS)} (and optionally 'case')")
    for k in KEYS:
        v = obj[k]
        if not isinstance(v, str):
            raise DataError(f"{where}: {k!r} must be a string, got {type(v).__name__} {v!r}")
        if not v:
            raise DataError(f"{where}: {k!r} is empty")
    case = obj.get("case")
    if case is not None and not isinstance(case, str):
        raise DataError(f"{where}: 'case' must be a string or null, got {type(case).__name__} {case!r}")
    return PromptPair(obj["clean_prefix"], obj["patch_prefix"], obj["clean_answer"], obj["patch_answer"], case,
                      parse_positions(obj.get("positions"), where))


def read_pairs(path: "str | os.PathLike[str]") -> list[PromptPair]:
    """Read a feature-circuits JSONL file (one JSON object per line; blank lines are skipped).

    Raises :class:`DataError` naming the file and the 1-based line for a line that is not JSON, not
    an object, lacks a key or has a value of the wrong type, and for a file with no pairs.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; pass a feature-circuits JSONL file of prompt pairs") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); expected a JSONL file of prompt pairs") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    pairs: list[PromptPair] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); expected one JSON object "
                            "per line (JSONL), as in feature-circuits' data files") from None
        pairs.append(_parse_line(obj, where))
    if not pairs:
        raise DataError(f"{path}: empty file, no prompt pairs; expected one JSON object per line with keys {list(KEYS)}")
    return pairs


def write_pairs(path: "str | os.PathLike[str]", pairs: Iterable[PromptPair]) -> Path:
    """Write pairs as feature-circuits JSONL, atomically; returns the path."""
    lines = [json.dumps(p.to_json(), ensure_ascii=False) for p in pairs]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Path(path)


@dataclass
class PairBatch:
    """``B`` pairs whose prompts all have token length ``T``."""

    clean: torch.Tensor  # [B, T] long
    patch: torch.Tensor  # [B, T] long
    clean_answer: torch.Tensor  # [B] long
    patch_answer: torch.Tensor  # [B] long
    pairs: list[PromptPair]
    positions: list[dict[str, int]] = field(default_factory=list)
    """Per pair, the token index of each named role that survived (always ``END`` = ``T - 1``)."""

    def __post_init__(self) -> None:
        if not self.positions:  # batches built by hand: END only
            self.positions = [{END: int(self.clean.shape[1]) - 1} for _ in range(int(self.clean.shape[0]))]


@dataclass
class PairDataset:
    """Tokenized pairs in batches of equal length, with counts of dropped pairs by reason."""

    batches: list[PairBatch]
    n_pairs: int
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = ""
    unknown_words: list[str] = field(default_factory=list)
    """Words of dropped prompts that the tokenizer maps to its unknown token (first few, sorted)."""
    dropped_positions: dict[str, int] = field(default_factory=dict)
    """Named positions (not pairs) dropped at tokenization, by reason."""

    @property
    def lengths(self) -> list[int]:
        """The distinct prompt lengths, ascending."""
        return sorted({int(b.clean.shape[1]) for b in self.batches})

    @property
    def named(self) -> bool:
        """Every pair names at least one position besides ``END``."""
        return bool(self.batches) and all(len(p) > 1 for b in self.batches for p in b.positions)

    @property
    def roles(self) -> list[str]:
        """Every role named by some pair, in the order of their mean token position (``END`` last)."""
        where: dict[str, list[float]] = {}
        for b in self.batches:
            T = int(b.clean.shape[1])
            for p in b.positions:
                for r, i in p.items():
                    where.setdefault(r, []).append(i / max(1, T - 1))
        where.pop(END, None)
        return sorted(where, key=lambda r: (sum(where[r]) / len(where[r]), r)) + ([END] if self.batches else [])

    @property
    def max_len(self) -> int:
        """Longest prompt length T over all batches (0 when empty)."""
        return max((b.clean.shape[1] for b in self.batches), default=0)

    def summary(self) -> str:
        """E.g. ``"kept 118 of 120 pairs from FILE; dropped: 2 multi-token answer"``."""
        total = self.n_pairs + sum(self.dropped.values())
        drops = ", ".join(f"{v} {k}" for k, v in self.dropped.items() if v) or "none"
        src = self.source or "input"
        unknown = f"; unknown words: {_quoted(self.unknown_words)}" if self.unknown_words else ""
        spans = ", ".join(f"{v} {k}" for k, v in self.dropped_positions.items() if v)
        spans = f"; named positions dropped: {spans}" if spans else ""
        return f"kept {self.n_pairs} of {total} pairs from {src}; dropped: {drops}{unknown}{spans}"


def _quoted(words: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(w) for w in list(words)[:limit])
    return shown + (f" and {len(words) - limit} more" if len(words) > limit else "")


class _Tok:
    """Uniform tokenization over a HookedTransformer or a Hugging Face tokenizer (with caching)."""

    def __init__(self, model_or_tokenizer: Any, prepend_bos: bool) -> None:
        self.prepend_bos = prepend_bos
        self.cache: dict[tuple[str, bool], list[int]] = {}
        self.n_ctx: int | None = None
        self.device: torch.device | str = "cpu"
        obj = model_or_tokenizer
        self.unk: int | None = None
        self.vocabulary = "the tokenizer"
        if hasattr(obj, "to_tokens") and hasattr(obj, "cfg"):
            if getattr(obj, "tokenizer", None) is None:
                raise DataError("the model has no tokenizer; build it with HookedTransformer(cfg, tokenizer=...) "
                                "or pass a tokenizer to tokenize_pairs")
            self.model = obj
            self.n_ctx = int(obj.cfg.n_ctx)
            self.device = obj.cfg.device or "cpu"
            self.unk = self._unk_id(obj.tokenizer)
            self.vocabulary = f"the vocabulary of {getattr(obj.cfg, 'model_name', None) or 'the model'}"
        elif callable(obj) and hasattr(obj, "encode"):
            self.model = None
            self.tokenizer = obj
            bos = getattr(obj, "bos_token_id", None)
            if bos is None:
                bos = getattr(obj, "eos_token_id", None)  # as TransformerLens does for BOS-less tokenizers
            if prepend_bos and bos is None:
                raise DataError("prepend_bos=True but the tokenizer has neither a BOS nor an EOS token; "
                                "pass prepend_bos=False")
            self.bos = bos
            self.unk = self._unk_id(obj)
        else:
            raise TypeError(f"tokenize_pairs needs a HookedTransformer or a Hugging Face tokenizer, "
                            f"got {type(obj).__name__}")

    @staticmethod
    def _unk_id(tokenizer: Any) -> int | None:
        """The id of a genuine unknown token (word-level vocabularies), or None. GPT-2 style
        tokenizers whose unk token is also their BOS/EOS/pad token have none."""
        unk = getattr(tokenizer, "unk_token_id", None)
        special = {getattr(tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return None if unk is None or unk in special else int(unk)

    def unknown_words(self, text: str) -> list[str]:
        """The whitespace-separated words of ``text`` that contain the unknown token (word-level
        vocabularies; a word after the first is tokenized with its leading space)."""
        if self.unk is None:
            return []
        return [w for i, w in enumerate(text.split()) if self.unk in self(w if i == 0 else " " + w, False)]

    def __call__(self, text: str, bos: bool) -> list[int]:
        key = (text, bos)
        if key not in self.cache:
            if self.model is not None:
                ids = self.model.to_tokens(text, prepend_bos=bos, move_to_device=False,
                                           truncate=False)[0].tolist()
            else:
                ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                if bos:
                    ids = [self.bos] + ids
            self.cache[key] = ids
        return self.cache[key]


def _token_positions(tok: _Tok, p: PromptPair, ids: list[int], dropped: Counter) -> dict[str, int]:
    """The token index of each of ``p``'s named spans in its tokenized clean prompt ``ids`` (the token
    holding the span's last character: the prompt cut after the span must tokenize to a prefix of
    ``ids``), plus ``END``; bad spans are counted in ``dropped`` by reason."""
    out: dict[str, int] = {}
    last = len(ids) - 1
    spans = list(p.positions or ())
    n = len(p.clean_prefix)
    for k, (role, a, b) in enumerate(spans):
        if role == END:
            dropped[SPAN_RESERVED] += 1
            continue
        if not (0 <= a < b <= n):
            dropped[SPAN_BAD] += 1
            continue
        if any(r != role and a < b2 and a2 < b for r, a2, b2 in spans if 0 <= a2 < b2 <= n):
            dropped[SPAN_OVERLAP] += 1
            continue
        head = tok(p.clean_prefix[:b], tok.prepend_bos)
        if len(head) == 0 or head != ids[:len(head)]:
            dropped[SPAN_BOUNDARY] += 1
            continue
        i = len(head) - 1
        if i == last:
            dropped[SPAN_AT_END] += 1
            continue
        if i in out.values():
            dropped[SPAN_SAME_TOKEN] += 1
            continue
        out[role] = i
    out[END] = last
    return out


def tokenize_pairs(model_or_tokenizer: Any, pairs: Sequence[PromptPair], *, batch_size: int = 16,
                   prepend_bos: bool = True, source: str = "", max_pairs: int | None = None,
                   limit_option: str = "--pairs") -> PairDataset:
    """Tokenize pairs and group them into batches of equal token length.

    Drops, with a count per reason, in this order of checks: answers that are not exactly one token
    (``"multi-token answer"``), answers that are the tokenizer's unknown token (word-level
    vocabularies), pairs whose two answers are the same token (``"same answer"``: the metric would
    be 0), clean/patch prompts of different token length (``"unequal clean/patch length"``),
    prompts holding an unknown token (also when the two prompts differ only in words that both map to
    it), prompts with identical tokens (the patch would change nothing), and prompts longer than
    the model's ``n_ctx``. With ``max_pairs`` (>= 1), only the first ``max_pairs`` usable pairs
    are kept (the rest are counted as ``"over max_pairs (<limit_option>)"``, :data:`DROP_LIMIT` for
    ``--pairs``: the option that sets the cap). Kept pairs are grouped by length
    (ascending), in input order within a length, and split into batches of at most ``batch_size``.
    The unknown words of dropped prompts are listed in :attr:`PairDataset.unknown_words`.

    Raises :class:`DataError` for empty input or when no pair survives (with the counts, and the
    unknown words when there are some).
    """
    import torch

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (--batch-size), got {batch_size!r}")
    if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1):
        raise ValueError(f"max_pairs must be an integer >= 1 ({limit_option}), or None for every pair; "
                         f"got {max_pairs!r}")
    limit_reason = f"over max_pairs ({limit_option})"
    pairs = list(pairs)
    if not pairs:
        raise DataError(f"no prompt pairs to tokenize{f' in {source}' if source else ''}")
    tok = _Tok(model_or_tokenizer, prepend_bos)
    dropped: Counter[str] = Counter()
    span_drops: Counter[str] = Counter()
    unknown: set[str] = set()
    by_len: dict[int, list[tuple[PromptPair, list[int], list[int], int, int]]] = {}
    kept = 0
    for p in pairs:
        ca, pa = tok(p.clean_answer, False), tok(p.patch_answer, False)
        if len(ca) != 1 or len(pa) != 1:
            dropped[DROP_MULTI_TOKEN] += 1
            continue
        if tok.unk is not None and tok.unk in (ca[0], pa[0]):
            dropped[DROP_UNK_ANSWER] += 1
            unknown.update(a.strip() for a, ids in ((p.clean_answer, ca), (p.patch_answer, pa)) if tok.unk in ids)
            continue
        if ca[0] == pa[0]:
            dropped[DROP_SAME_ANSWER] += 1
            continue
        c, q = tok(p.clean_prefix, prepend_bos), tok(p.patch_prefix, prepend_bos)
        if len(c) != len(q):
            dropped[DROP_UNEQUAL] += 1
            continue
        if tok.unk is not None and (tok.unk in c or tok.unk in q):
            dropped[DROP_UNK_PROMPT] += 1  # before "identical": unknown words may be what makes them equal
            unknown.update(tok.unknown_words(p.clean_prefix) + tok.unknown_words(p.patch_prefix))
            continue
        if c == q:
            dropped[DROP_IDENTICAL] += 1
            continue
        if tok.n_ctx is not None and len(c) > tok.n_ctx:
            dropped[DROP_TOO_LONG] += 1
            continue
        if max_pairs is not None and kept >= max_pairs:
            dropped[limit_reason] += 1
            continue
        by_len.setdefault(len(c), []).append((p, c, q, ca[0], pa[0], _token_positions(tok, p, c, span_drops)))
        kept += 1
    dropped_d = dict(dropped)
    if kept == 0:
        counts = ", ".join(f"{v} {k}" for k, v in dropped_d.items())
        words = (f" The prompts hold words that are not in {tok.vocabulary}, which maps each of them to its "
                 f"unknown token: {_quoted(sorted(unknown))}; use words the model knows."
                 if unknown else "")
        raise DataError(
            f"no usable prompt pairs in {source or 'the input'}: all {len(pairs)} dropped ({counts}).{words} "
            "Each answer must be a single token of this model's tokenizer (with its leading space, "
            "e.g. ' is'), the two answers must differ, and the clean and patch prompts must tokenize "
            "to the same length: fix the data or choose words the tokenizer keeps whole.")
    batches: list[PairBatch] = []
    for t in sorted(by_len):
        rows = by_len[t]
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            batches.append(PairBatch(
                clean=torch.tensor([r[1] for r in chunk], dtype=torch.long, device=tok.device),
                patch=torch.tensor([r[2] for r in chunk], dtype=torch.long, device=tok.device),
                clean_answer=torch.tensor([r[3] for r in chunk], dtype=torch.long, device=tok.device),
                patch_answer=torch.tensor([r[4] for r in chunk], dtype=torch.long, device=tok.device),
                pairs=[r[0] for r in chunk], positions=[r[5] for r in chunk]))
    ds = PairDataset(batches=batches, n_pairs=kept, dropped=dropped_d, source=source,
                     unknown_words=sorted(unknown), dropped_positions=dict(span_drops))
    quality = {k: v for k, v in dropped_d.items() if k != limit_reason}
    if quality or span_drops:
        logger.warning("%s", ds.summary())
    return ds
