"""Prompt-pair IO and tokenization (docs/design.md §2): the real feature-circuits files, the JSONL round
trip, error messages with file and line, and drop counting with a small offline HookedTransformer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from featcirc.data import tasks
from featcirc.data import (DataError, PairDataset, PromptPair, load_pairs, read_pairs, tokenize_pairs,
                           write_pairs)
from featcirc.data.load import run_pairs
from featcirc.data.pairs import DROP_LIMIT
from featcirc.metric import logit_diff, logit_diff_full

SVA_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "sva"
BOS = "<|endoftext|>"
UNK = "[UNK]"


def _real_files() -> list[Path]:
    if not SVA_DIR.is_dir():
        pytest.skip(f"real SVA data directory {SVA_DIR} is absent (it ships beside the repo in ../shared)")
    files = sorted(SVA_DIR.glob("*.json"))
    assert files, f"{SVA_DIR} holds no .json files"
    return files


def _all_texts() -> list[str]:
    """Every prompt and answer the tests tokenize: all generator vocabulary plus the real files."""
    texts = []
    for task in tasks.TASKS:
        for p in tasks.make_task(task, 400, seed=0):
            texts += [p.clean_prefix, p.patch_prefix, p.clean_answer, p.patch_answer]
    words = ([" " + n for n in tasks.NAMES] + [" " + w for w in tasks.PLACES + tasks.OBJECTS + tasks.PREPOSITIONS]
             + [" " + w for pair in tasks.NOUNS + tasks.PP_NOUNS + tasks.RC_VERBS + tasks.VERB_PAIRS for w in pair])
    texts += words
    for tmpl in sum(tasks.IOI_TEMPLATES.values(), ()):
        texts.append(tmpl.format(A="Mary", B="John", PLACE="store", OBJECT="drink"))
    if SVA_DIR.is_dir():
        for f in SVA_DIR.glob("*.json"):
            for line in f.read_text().splitlines():
                d = json.loads(line)
                texts += [d["clean_prefix"], d["patch_prefix"], d["clean_answer"], d["patch_answer"]]
    return texts


def make_tokenizer(exclude: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer behind GPT-2's byte-level pre-tokenizer: " is" is one token "Ġis";
    built offline from the texts above (``exclude``: byte-level pieces left out of the vocabulary)."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pieces = sorted({piece for t in set(_all_texts()) for piece, _ in pre.pre_tokenize_str(t)} - set(exclude))
    vocab = {BOS: 0, UNK: 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=BOS, unk_token=UNK)


def make_model(n_ctx: int = 32, exclude: tuple[str, ...] = ()) -> HookedTransformer:
    tok = make_tokenizer(exclude)
    cfg = HookedTransformerConfig(n_layers=1, d_model=32, n_ctx=n_ctx, d_head=8, n_heads=4, d_mlp=64,
                                  act_fn="gelu", d_vocab=len(tok), seed=0)
    return HookedTransformer(cfg, tokenizer=tok).eval()


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return make_model()


# ----------------------------------------------------------------------------- reading and writing

def test_read_every_real_file():
    for f in _real_files():
        pairs = read_pairs(f)
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        assert len(pairs) == len(lines) > 0
        for p, d in zip(pairs, lines):
            assert p == PromptPair(**d)
            assert p.clean_answer.startswith(" ") and p.patch_answer.startswith(" ")
            assert p.clean_answer != p.patch_answer
            assert p.case is not None


def test_write_read_round_trip(tmp_path):
    pairs = [PromptPair("The author", "The authors", " is", " are", "singular"),
             PromptPair("Zoë and Jürgen", "Zoë and Zoë", " Zoë", " Jürgen"),  # case None, non-ASCII
             PromptPair('He said "hi"\\', "She said 'no'", " x", " y", "quoted")]
    out = write_pairs(tmp_path / "sub" / "pairs.json", pairs)
    assert out == tmp_path / "sub" / "pairs.json"
    assert read_pairs(out) == pairs
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert list(json.loads(lines[0])) == ["clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "case"]
    assert "case" not in json.loads(lines[1])
    assert [p.name for p in out.parent.iterdir()] == ["pairs.json"]  # no temporary file left behind


def test_round_trip_of_real_file_is_identical(tmp_path):
    f = next(f for f in _real_files() if f.name.startswith("simple"))
    out = write_pairs(tmp_path / f.name, read_pairs(f))
    assert [json.loads(x) for x in out.read_text().splitlines()] == [json.loads(x) for x in f.read_text().splitlines()]


GOOD = '{"clean_prefix": "The author", "patch_prefix": "The authors", "clean_answer": " is", "patch_answer": " are"}'


@pytest.mark.parametrize("bad, line, fragment", [
    ("{not json", 3, "not valid JSON"),
    ('{"clean_prefix": "a", "patch_prefix": "b", "clean_answer": " c"}', 3, "patch_answer"),
    ('{"clean_prefix": "a", "patch_prefix": "b", "clean_answer": 7, "patch_answer": " d"}', 3, "must be a string"),
    ('{"clean_prefix": "a", "patch_prefix": "b", "clean_answer": " c", "patch_answer": " d", "case": 1}', 3, "'case'"),
    ('["a", "b", " c", " d"]', 3, "JSON object"),
    ('{"clean_prefix": "", "patch_prefix": "b", "clean_answer": " c", "patch_answer": " d"}', 3, "empty"),
])
def test_read_errors_name_file_and_line(tmp_path, bad, line, fragment):
    f = tmp_path / "bad.json"
    f.write_text("\n".join([GOOD, "", bad, GOOD]) + "\n")  # the blank line 2 still counts
    with pytest.raises(DataError) as e:
        read_pairs(f)
    msg = str(e.value)
    assert str(f) in msg and f"line {line}" in msg and fragment in msg
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    f = tmp_path / "empty.json"
    f.write_text(content)
    with pytest.raises(DataError, match="empty file") as e:
        read_pairs(f)
    assert str(f) in str(e.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- tokenization

def test_tokenizer_is_word_level(model):
    assert model.to_str_tokens(" is", prepend_bos=False) == [" is"]
    assert model.tokenizer.convert_ids_to_tokens(model.to_single_token(" is")) == "Ġis"
    assert model.to_str_tokens("The author near the desks") == [BOS, "The", " author", " near", " the", " desks"]


def test_tokenize_keeps_good_pairs_and_counts_drops(model, caplog):
    good = [PromptPair("The author", "The authors", " is", " are", "singular"),
            PromptPair("The author near the desk", "The authors near the desk", " is", " are", "s_s"),
            PromptPair("The boys", "The boy", " have", " has", "plural"),
            PromptPair("The girl behind the car", "The girls behind the car", " does", " do", "s_s")]
    multi = PromptPair("The author", "The authors", " is the", " are", "multi")
    unequal = PromptPair("The author near the desk", "The authors", " is", " are", "unequal")
    same = PromptPair("The author", "The authors", " is", " is", "same")
    unk_answer = PromptPair("The author", "The authors", " zzyzx", " are", "unk")
    identical = PromptPair("The author", "The author", " is", " are", "identical")
    pairs = [good[0], multi, good[1], unequal, good[2], same, unk_answer, identical, good[3]]
    with caplog.at_level(logging.WARNING, logger="featcirc.data"):
        ds = tokenize_pairs(model, pairs, batch_size=1, source="mem")
    assert ds.dropped == {"multi-token answer": 1, "unequal clean/patch length": 1, "same answer": 1,
                          "unknown-token answer": 1, "identical clean/patch tokens": 1}
    assert ds.n_pairs == 4
    assert ds.summary() == ("kept 4 of 9 pairs from mem; dropped: 1 multi-token answer, "
                            "1 unequal clean/patch length, 1 same answer, 1 unknown-token answer, "
                            "1 identical clean/patch tokens; unknown words: 'zzyzx'")
    assert "kept 4 of 9" in caplog.text and "multi-token answer" in caplog.text
    # grouped by length (ascending), input order within a length, batch_size respected
    assert [b.pairs for b in ds.batches] == [[good[0]], [good[2]], [good[1]], [good[3]]]
    assert [b.clean.shape[1] for b in ds.batches] == [3, 3, 6, 6]
    assert ds.max_len == 6


def test_tokens_match_the_model(model):
    pairs = tasks.make_task("sva-nounpp", 20, seed=3) + tasks.make_task("sva-simple", 13, seed=3)
    ds = tokenize_pairs(model, pairs, batch_size=8)
    assert ds.n_pairs == 33 and ds.dropped == {}
    assert [b.clean.shape for b in ds.batches] == [(8, 3), (5, 3), (8, 6), (8, 6), (4, 6)]
    seen = []
    for b in ds.batches:
        assert b.clean.dtype == b.patch.dtype == b.clean_answer.dtype == torch.long
        assert b.clean.shape == b.patch.shape and b.clean_answer.shape == (len(b.pairs),)
        assert (b.clean[:, 0] == model.tokenizer.bos_token_id).all()
        for i, p in enumerate(b.pairs):
            assert b.clean[i].tolist() == model.to_tokens(p.clean_prefix)[0].tolist()
            assert b.patch[i].tolist() == model.to_tokens(p.patch_prefix)[0].tolist()
            assert b.clean_answer[i] == model.to_single_token(p.clean_answer)
            assert b.patch_answer[i] == model.to_single_token(p.patch_answer)
        # the batch feeds the metric (docs/design.md §2) and agrees with the full-logit reference
        got = logit_diff(model, b.clean, b.clean_answer, b.patch_answer)
        torch.testing.assert_close(got, logit_diff_full(model, b.clean, b.clean_answer, b.patch_answer),
                                   rtol=1e-4, atol=1e-5)
        seen += b.pairs
    assert sorted(seen, key=pairs.index) == pairs


def test_hf_tokenizer_gives_the_same_batches(model):
    pairs = tasks.make_task("ioi", 12, seed=1)
    a = tokenize_pairs(model, pairs, batch_size=4)
    b = tokenize_pairs(model.tokenizer, pairs, batch_size=4)
    assert a.n_pairs == b.n_pairs == 12
    for x, y in zip(a.batches, b.batches, strict=True):
        assert x.pairs == y.pairs
        for k in ("clean", "patch", "clean_answer", "patch_answer"):
            assert torch.equal(getattr(x, k), getattr(y, k)), k
    nobos = tokenize_pairs(model.tokenizer, pairs, batch_size=4, prepend_bos=False)
    assert [x.clean.shape[1] - 1 for x in a.batches] == [x.clean.shape[1] for x in nobos.batches]
    assert torch.equal(nobos.batches[0].clean, a.batches[0].clean[:, 1:])


def test_too_long_prompts_are_dropped():
    short = make_model(n_ctx=4)
    pairs = [PromptPair("The author", "The authors", " is", " are"),
             PromptPair("The author near the desk", "The authors near the desk", " is", " are")]
    ds = tokenize_pairs(short, pairs)
    assert ds.n_pairs == 1 and ds.dropped == {"longer than n_ctx": 1}


def test_unknown_word_in_prompt_is_dropped():
    m = make_model(exclude=("Ġdesk",))
    pairs = [PromptPair("The author", "The authors", " is", " are"),
             PromptPair("The author near the desk", "The authors near the desk", " is", " are")]
    ds = tokenize_pairs(m, pairs)
    assert ds.n_pairs == 1 and ds.dropped == {"unknown token in prompt": 1}


def test_nothing_survives_is_an_error_with_counts(model):
    pairs = [PromptPair("The author", "The authors", " is not", " are")] * 3 + \
            [PromptPair("The author near", "The authors", " is", " are")]
    with pytest.raises(DataError) as e:
        tokenize_pairs(model, pairs, source="f.json")
    msg = str(e.value)
    assert "f.json" in msg and "all 4 dropped" in msg and "3 multi-token answer" in msg
    assert "1 unequal clean/patch length" in msg and "single token" in msg


def test_empty_input_is_an_error(model):
    with pytest.raises(DataError, match="no prompt pairs"):
        tokenize_pairs(model, [])


def test_tokenization_is_deterministic(model):
    pairs = tasks.make_task("sva-rc", 30, seed=5)
    a, b = tokenize_pairs(model, pairs, batch_size=7), tokenize_pairs(model, pairs, batch_size=7)
    assert [x.pairs for x in a.batches] == [x.pairs for x in b.batches]
    assert all(torch.equal(x.clean, y.clean) for x, y in zip(a.batches, b.batches))


def test_real_files_tokenize_completely(model):
    for f in _real_files():
        pairs = read_pairs(f)[:200]
        ds = tokenize_pairs(model, pairs, batch_size=64, source=str(f))
        assert ds.n_pairs == len(pairs) and ds.dropped == {}, (f, ds.summary())
        n_words = len(pairs[0].clean_prefix.split())
        assert [b.clean.shape[1] for b in ds.batches] == [n_words + 1] * len(ds.batches)


# ----------------------------------------------------------------------------- load_pairs

@pytest.mark.parametrize("task", tasks.TASKS)
def test_load_pairs_generates_each_task(model, task, caplog):
    with caplog.at_level(logging.INFO, logger="featcirc.data"):
        ds = load_pairs(model, task=task, n=24, seed=2, batch_size=8)
    assert isinstance(ds, PairDataset)
    assert ds.n_pairs == 24 and ds.dropped == {}  # equal token lengths and single-token answers
    assert f"kept 24 of 24 pairs from task {task}" in caplog.text
    assert [p for b in ds.batches for p in b.pairs] != []
    assert sorted(p.clean_prefix for b in ds.batches for p in b.pairs) == \
        sorted(p.clean_prefix for p in tasks.make_task(task, 24, seed=2))


def test_load_pairs_from_file(model, tmp_path):
    pairs = tasks.make_task("sva-simple", 10, seed=0)
    bad = PromptPair("The author", "The authors", " is not", " are")
    f = write_pairs(tmp_path / "p.json", [bad] + pairs)
    ds = load_pairs(model, data=f, n=None)
    assert ds.n_pairs == 10 and ds.dropped == {"multi-token answer": 1} and ds.source == str(f)
    ds = load_pairs(model, data=str(f), n=4)
    assert ds.n_pairs == 4 and ds.dropped == {"multi-token answer": 1, DROP_LIMIT: 6}
    assert [p for b in ds.batches for p in b.pairs] == pairs[:4]
    assert "6 over max_pairs (--pairs)" in ds.summary()  # the message names the option that caps the pairs
    held = tokenize_pairs(model, pairs, max_pairs=7, limit_option="--eval-pairs")
    assert held.dropped == {"over max_pairs (--eval-pairs)": 3}


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_a_pair_limit_below_one_is_an_error_that_names_the_option(model, bad):
    pairs = tasks.make_task("sva-simple", 4, seed=0)
    with pytest.raises(ValueError, match="--pairs"):
        tokenize_pairs(model, pairs, max_pairs=bad)
    with pytest.raises(ValueError, match="--pairs"):
        load_pairs(model, task="ioi", n=bad)


def test_pairs_differing_only_in_unknown_words_name_those_words():
    """Two different words that both map to the unknown token make equal token lists: the pair is
    dropped for its unknown words (not as "identical"), and when nothing survives the error lists them."""
    m = make_model(exclude=("Ġdesk", "Ġdesks"))
    pair = PromptPair("The author near the desk", "The author near the desks", " is", " are")
    ok = PromptPair("The author", "The authors", " is", " are")
    ds = tokenize_pairs(m, [ok, pair])
    assert ds.dropped == {"unknown token in prompt": 1} and ds.unknown_words == ["desk", "desks"]
    assert "unknown words: 'desk', 'desks'" in ds.summary()
    with pytest.raises(DataError) as e:
        tokenize_pairs(m, [pair], source="f.jsonl")
    msg = str(e.value)
    assert "not in the vocabulary of" in msg and "'desk', 'desks'" in msg and "identical" not in msg


def test_reading_and_splitting_pairs_imports_no_torch(tmp_path):
    """A command checks its data before torch is imported (docs/design.md §12)."""
    import subprocess
    import sys

    f = write_pairs(tmp_path / "p.jsonl", tasks.make_task("sva-nounpp", 10, seed=0))
    code = (f"import sys; from featcirc.data.load import run_pairs; r = run_pairs(data={str(f)!r}, n=4); "
            "print(len(r.discovery), len(r.evaluation), r.split, "
            "sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "5 5 {'eval_fraction': 0.5, 'seed': 0} []"


def test_run_pairs_splits_generated_pairs_for_about_n_discovery_pairs(tmp_path):
    r = run_pairs(task="sva-nounpp", n=10, seed=3, eval_fraction=0.5)
    assert (len(r.discovery), len(r.evaluation)) == (10, 10) and not set(r.discovery) & set(r.evaluation)
    assert r.split == {"eval_fraction": 0.5, "seed": 3} and "n=20" in r.source
    assert run_pairs(task="sva-nounpp", n=10, seed=3, eval_fraction=0.5).discovery == r.discovery  # seeded
    none = run_pairs(task="ioi", n=6, eval_fraction=0)
    assert len(none.discovery) == 6 and none.evaluation is None
    f = write_pairs(tmp_path / "ev.jsonl", tasks.make_task("ioi", 3, seed=9))
    given = run_pairs(task="ioi", n=6, eval_data=f)
    assert len(given.discovery) == 6 and len(given.evaluation) == 3 and given.split == {"source": str(f)}
    for bad in (1.0, -0.1, "half"):
        with pytest.raises(DataError, match="--eval-fraction"):
            run_pairs(task="ioi", n=6, eval_fraction=bad)
    with pytest.raises(DataError, match="--pairs"):
        run_pairs(task="ioi", n=0)
    with pytest.raises(DataError, match="no such file"):
        run_pairs(data=tmp_path / "missing.jsonl")


def test_load_pairs_needs_exactly_one_source(model, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_pairs(model)
    with pytest.raises(ValueError, match="exactly one"):
        load_pairs(model, data=tmp_path / "x.json", task="ioi")
    with pytest.raises(ValueError, match="sva-within-rc"):
        load_pairs(model, task="nope")
