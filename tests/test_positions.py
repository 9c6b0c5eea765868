"""Named positions (docs/design.md §2, §14): the JSONL field, the generators, tokenization."""

from __future__ import annotations

import json

import pytest

from featcirc.data import DataError, PromptPair, make_task, read_pairs, tokenize_pairs, write_pairs
from featcirc.data.pairs import END, SPAN_AT_END, SPAN_BAD, SPAN_BOUNDARY, SPAN_OVERLAP, SPAN_RESERVED


@pytest.fixture(scope="module")
def tiny():
    from featcirc.models.loading import load_model

    return load_model("tiny")


def test_generators_name_their_words():
    for task, roles in (("ioi", {"IO", "S1", "S2"}), ("sva-nounpp", {"subject"}),
                        ("sva-rc", {"subject", "attractor"}), ("sva-within-rc", {"attractor"})):
        for p in make_task(task, 20, 3):
            assert set(p.roles) == roles
            for _, a, b in p.positions:
                word = p.clean_prefix[a:b]
                assert word and " " not in word and b < len(p.clean_prefix)
    for p in make_task("ioi", 30, 1):
        spans = dict((r, p.clean_prefix[a:b]) for r, a, b in p.positions)
        assert spans["S1"] == spans["S2"] == p.patch_answer.strip()
        assert spans["IO"] == p.clean_answer.strip()
        s2 = next(a for r, a, _ in p.positions if r == "S2")
        assert p.clean_prefix[:s2] == p.patch_prefix[:s2]  # S2 is where clean and patch differ


def test_jsonl_round_trip_and_bad_shapes(tmp_path):
    pairs = make_task("ioi", 5, 0)
    path = write_pairs(tmp_path / "p.jsonl", pairs)
    assert read_pairs(path) == pairs
    assert "positions" in json.loads(path.read_text().splitlines()[0])
    base = pairs[0].to_json()
    for bad in ([1, 2], {"IO": 3}, {"IO": [1, "x"]}, {"a@b": [0, 1]}, {"": [0, 1]}):
        f = tmp_path / "bad.jsonl"
        f.write_text(json.dumps(dict(base, positions=bad)) + "\n")
        with pytest.raises(DataError, match="positions"):
            read_pairs(f)
    plain = {k: v for k, v in base.items() if k != "positions"}
    f = tmp_path / "plain.jsonl"
    f.write_text(json.dumps(plain) + "\n")
    assert read_pairs(f)[0].positions is None


def test_tokenization_maps_spans_to_tokens(tiny):
    ds = tokenize_pairs(tiny, make_task("ioi", 60, 0))
    assert ds.lengths == [15, 16, 19] and ds.named and ds.dropped_positions == {}
    assert ds.roles[-1] == END and set(ds.roles) == {"IO", "S1", "S2", END}
    for b in ds.batches:
        T = b.clean.shape[1]
        for j, (p, pos) in enumerate(zip(b.pairs, b.positions)):
            toks = tiny.to_str_tokens(b.clean[j])
            assert pos[END] == T - 1
            assert toks[pos["S2"]].strip() == toks[pos["S1"]].strip() == p.patch_answer.strip()
            assert toks[pos["IO"]].strip() == p.clean_answer.strip()
            assert b.clean[j, pos["S2"]] != b.patch[j, pos["S2"]]


def test_bad_spans_are_dropped_and_counted(tiny):
    p = make_task("ioi", 1, 0)[0]
    n = len(p.clean_prefix)
    s2 = next(x for x in p.positions if x[0] == "S2")
    spans = (s2, ("far", n, n + 4), ("END", 0, 2), ("clash", s2[1] + 1, s2[2]), ("mid", s2[1], s2[1] + 2),
             ("last", n - 2, n), ("io", *next(x for x in p.positions if x[0] == "IO")[1:]))
    q = PromptPair(p.clean_prefix, p.patch_prefix, p.clean_answer, p.patch_answer, p.case, spans)
    ds = tokenize_pairs(tiny, [q])
    assert ds.batches[0].positions[0].keys() == {"io", END}
    assert ds.dropped_positions == {SPAN_BAD: 1, SPAN_RESERVED: 1, SPAN_OVERLAP: 3, SPAN_AT_END: 1}
    assert "named positions dropped" in ds.summary()
    r = PromptPair(p.clean_prefix, p.patch_prefix, p.clean_answer, p.patch_answer, p.case,
                   (("half", s2[1], s2[1] + 2),))
    assert tokenize_pairs(tiny, [r]).dropped_positions == {SPAN_BOUNDARY: 1}
    assert not tokenize_pairs(tiny, [r]).named
