"""Alignment of per-position scores over pairs of several lengths / templates (docs/design.md §14)."""

from __future__ import annotations

import pytest
import torch

from featcirc.attribution import AttributionSettings, attribute
from featcirc.data import make_task, tokenize_pairs
from featcirc.data.align import align, describe, make_alignment
from featcirc.data.pairs import END
from featcirc.evaluate.faithfulness import Ablator

T1 = "When {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to"
T2 = "Then, {A} and {B} had a long day at the {PLACE}. {B} gave a {OBJECT} to"


@pytest.fixture(scope="module")
def tiny():
    from featcirc.models.loading import load_model

    return load_model("tiny")


def pairs_of(template: str, n: int, seed: int):
    return make_task("ioi", n, seed, templates={"ABBA": (template,)}, kinds=("ABBA",))


@pytest.fixture(scope="module")
def two(tiny):
    p1, p2 = pairs_of(T1, 12, 0), pairs_of(T2, 8, 1)
    return tokenize_pairs(tiny, p1 + p2, batch_size=5), tokenize_pairs(tiny, p1), tokenize_pairs(tiny, p2)


def test_start_alignment_mixes_tokens_role_alignment_does_not(tiny, two):
    mixed, _, _ = two
    assert mixed.lengths == [15, 19] and describe(mixed) and describe(two[1]) is None
    for mode in ("start", "role"):
        al = make_alignment(mixed, mode)
        at_slot: dict[int, set[str]] = {}  # slot -> the kinds of word found there
        for b in align(mixed, al).batches:
            idx = al.index(b)
            for j, p in enumerate(b.pairs):
                inv = {i: r for r, i in b.positions[j].items()}
                for t in range(b.clean.shape[1]):
                    at_slot.setdefault(int(idx[t]), set()).add(inv.get(t, "other"))
        s2 = [s for s, kinds in at_slot.items() if "S2" in kinds]
        if mode == "start":  # the S2 of one template is another word of the other
            assert any(len(at_slot[s]) > 1 for s in s2)
        else:
            assert len(s2) == 1 and at_slot[s2[0]] == {"S2"} and al.slots[s2[0]] == "S2"
            for role in ("IO", "S1", END):
                assert at_slot[al.slots.index(role)] == {role}


def test_per_template_runs_combine_to_the_role_aligned_scores(tiny, two):
    mixed, d1, d2 = two
    settings = AttributionSettings(level="component", progress=False)
    al = make_alignment(mixed, "role")
    nodes, edges = attribute(tiny, mixed, "atp", settings=settings, alignment=al)
    assert nodes.info["align"]["slots"] == al.slots
    expect = {s: torch.zeros(al.n_slots) for s in nodes.sites}
    for d in (d1, d2):
        one, _ = attribute(tiny, d, "atp", settings=settings, edges=False)  # one template: from the start
        labels = make_alignment(d, "role").labels(d.batches[0])
        for s in nodes.sites:
            for t, label in enumerate(labels):
                expect[s][al.slots.index(label)] += one.vectors[s][t] * d.n_pairs / mixed.n_pairs
    for s in nodes.sites:
        torch.testing.assert_close(nodes.vectors[s], expect[s], rtol=1e-5, atol=1e-6)
    assert edges is not None and len(edges) > 0
    s2 = al.slots.index("S2")
    assert any(u.endswith(f"@{s2}") for u, _ in edges.as_dict())


def test_end_alignment_lines_up_the_last_token(tiny, two):
    mixed, d1, d2 = two
    settings = AttributionSettings(level="component", progress=False)
    al = make_alignment(mixed, "end")
    assert al.slots[-1] == END and al.n_slots == 19
    nodes, _ = attribute(tiny, mixed, "atp", settings=settings, alignment=al, edges=False)
    ones = [attribute(tiny, d, "atp", settings=settings, edges=False)[0] for d in (d1, d2)]
    for s in nodes.sites:
        last = sum(o.vectors[s][-1] * d.n_pairs for o, d in zip(ones, (d1, d2))) / mixed.n_pairs
        torch.testing.assert_close(nodes.vectors[s][-1], last, rtol=1e-5, atol=1e-6)


def test_ablation_under_role_alignment_matches_each_template(tiny, two):
    mixed, d1, d2 = two
    al = make_alignment(mixed, "role")
    s2 = "S2"  # under role alignment a node id names its slot by label (docs/design.md §3)
    keep = {"resid.1@S2", "resid.2@IO", "mlp.0@S2"}
    ab = Ablator(tiny, mixed, level="component", ablation="patch", progress=False, alignment=al)
    got = dict(zip(ab.pairs, ab.metric_values(keep)))
    for d in (d1, d2):
        pos = d.batches[0].positions[0]
        one = Ablator(tiny, d, level="component", ablation="patch", progress=False)
        want = one.metric_values({f"resid.1@{pos['S2']}", f"resid.2@{pos['IO']}", f"mlp.0@{pos['S2']}"})
        for p, v in zip(one.pairs, want):
            assert got[p] == pytest.approx(v, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="no slot 'S9'"):  # a label the run's alignment lacks
        ab.metric_values({"resid.1@S9"})
    with pytest.raises(ValueError, match="slot label"):  # labels need the run's alignment
        one.metric_values({"resid.1@S2"})
    mean = Ablator(tiny, mixed, level="component", ablation="mean", progress=False, alignment=al)
    every = {f"{site}@{s}" for site in mean.splice.site_names for s in al.slots}  # ids carry slot labels
    assert mean.faithfulness(every) == pytest.approx(1.0, abs=1e-5)
    assert mean.faithfulness(every - {f"{site}@{s2}" for site in mean.splice.site_names}) < 0.9


def _run(tmp_path, name, *extra, task="ioi"):
    import json

    from featcirc.cli import main

    out = tmp_path / name
    rc = main(["-q", "discover", "--model", "tiny", "--task", task, "--pairs", "24", "--level", "component",
               "--max-nodes", "200", "--top-k", "30", "--out", str(out), *extra])
    assert rc == 0
    return (json.loads((out / "run.json").read_text()), json.loads((out / "summary.json").read_text()),
            json.loads((out / "circuit.json").read_text()))


def test_discover_aligns_multi_template_ioi_by_role(tmp_path):
    run, summ, circ = _run(tmp_path, "role")
    assert run["alignment"]["mode"] == summ["alignment"]["mode"] == "role" and run["align"] == "auto"
    slots = summ["alignment"]["slots"]
    assert len(summ["prompt_tokens"]) == len(slots)
    assert all(t.startswith(f"[{s}]") for s, t in zip(slots, summ["prompt_tokens"]))
    top = sorted((n for n in circ["nodes"] if n["id"] != "metric"), key=lambda n: -abs(n["score"]))[:5]
    assert {slots[n["position"]] for n in top} <= {"S2", "IO", "S1", "END"}
    # ids carry the slot's label, the slot attribute names it, position stays its index (docs/design.md §3)
    assert all(n["id"].endswith(f"@{n['slot']}") and slots[n["position"]] == n["slot"] for n in top)
    assert any(n["id"].endswith(("@S2", "@END")) for n in top)
    assert all(n["id"] == "metric" or "@" in n["id"] for n in circ["nodes"])
    html = (tmp_path / "role" / "circuit.html").read_text(encoding="utf-8")
    assert "positions aligned by role" in html and "[S2]" in html
    from featcirc.cli import main

    run_dir = tmp_path / "role"  # evaluate and view read the role ids back through the run's alignment
    assert main(["-q", "evaluate", str(run_dir), "--fractions", "0.1,0.5,1", "--bootstrap", "200"]) == 0
    assert main(["-q", "view", str(run_dir), "--out", str(tmp_path / "v.html")]) == 0
    assert main(["-q", "export", str(run_dir), "--format", "graphml"]) == 0
    assert "@S2" in (run_dir / "circuit.graphml").read_text(encoding="utf-8") or \
        "@END" in (run_dir / "circuit.graphml").read_text(encoding="utf-8")


def test_neuronpedia_export_of_a_role_aligned_run_uses_the_example_tokens(tmp_path):
    import json

    from featcirc.export.neuronpedia import validate_neuronpedia

    run, summ, circ = _run(tmp_path, "role", "--top-k", "200")
    own = summ["example_tokens"]  # the example prompt's own tokens and the slot of each
    assert len(own["tokens"]) == len(own["slots"]) and "S2" in own["slots"]
    s2 = own["slots"].index("S2")
    d = json.loads((tmp_path / "role" / "neuronpedia.json").read_text(encoding="utf-8"))
    validate_neuronpedia(d)
    md = d["metadata"]
    assert md["prompt_tokens"] == own["tokens"]
    at_s2 = [n for n in d["nodes"] if n.get("slot") == "S2"]
    assert at_s2 and all(n["ctx_idx"] == s2 and "[S2]" in n["clerp"] and n["node_id"].endswith("@S2")
                         for n in at_s2)
    in_circuit = {n["id"] for n in circ["nodes"]}
    exported = {n["node_id"] for n in d["nodes"]}
    missing = {n["id"] for n in circ["nodes"] if n.get("slot") is not None and n["slot"] not in own["slots"]}
    assert md["info"]["n_nodes_not_in_example"] == len(missing)
    assert (in_circuit - missing) <= exported and not (missing & exported)
    for n in d["nodes"]:
        if n.get("slot") is not None:
            assert own["slots"][n["ctx_idx"]] == n["slot"]
    graph = json.loads(next((tmp_path / "role" / "graph_files").glob("*.json")).read_text(encoding="utf-8"))
    assert [n["ctx_idx"] for n in graph["nodes"] if n.get("slot") == "S2"] == [s2] * len(at_s2)


def test_several_lengths_without_named_positions_warn_and_align_from_the_end(tmp_path, caplog):
    import logging

    from featcirc.cli import main

    pairs = [p.to_json() for p in pairs_of(T1, 16, 0) + pairs_of(T2, 16, 1)]
    import json

    f = tmp_path / "plain.jsonl"
    f.write_text("".join(json.dumps({k: v for k, v in d.items() if k != "positions"}) + "\n" for d in pairs))
    with caplog.at_level(logging.WARNING):
        assert main(["discover", "--model", "tiny", "--data", str(f), "--pairs", "12", "--level", "component",
                     "--max-nodes", "100", "--out", str(tmp_path / "end")]) == 0
    lines = [r.getMessage() for r in caplog.records if "aligned from the end" in r.getMessage()]
    assert len(lines) == 1 and "2 prompt lengths" in lines[0] and "\n" not in lines[0]
    summ = json.loads((tmp_path / "end" / "summary.json").read_text())
    assert summ["alignment"]["mode"] == "end" and summ["alignment"]["slots"][-1] == "END"
    assert summ["alignment"]["warning"] == lines[0]
    circ = json.loads((tmp_path / "end" / "circuit.json").read_text())  # ids name slots from the end (§3)
    assert all(n["id"] == "metric" or n["id"].split("@")[1].startswith("END") for n in circ["nodes"])
    assert main(["-q", "discover", "--model", "tiny", "--data", str(f), "--pairs", "12", "--level", "component",
                 "--align", "role", "--out", str(tmp_path / "x")]) == 2
    run, summ, _ = _run(tmp_path, "sum", "--align", "sum")
    assert summ["alignment"]["mode"] == "sum" and summ["aggregation"] == "sum"


def test_one_template_keeps_start_alignment(tmp_path):
    run, summ, circ = _run(tmp_path, "sva", task="sva-nounpp")
    assert summ["alignment"]["mode"] == "start" and summ["alignment"]["warning"] is None
    assert not any(t.startswith("[") for t in summ["prompt_tokens"])


def test_extending_an_alignment_covers_every_pair_of_an_unsplit_batch():
    """Held-out pairs whose batch mixes token layouts (align() has not split it yet): the extended alignment
    has a slot for every pair's labels, not only the first pair's (an IOI compare with 4 discovery pairs
    failed with "has no slot 'S1+7'" before)."""
    from featcirc.data import PairBatch, PairDataset, PromptPair

    toks = torch.arange(1, 11).view(2, 5)
    pos = [{"S1": 1, "IO": 2}, {"S1": 0, "IO": 3}]
    batch = PairBatch(clean=toks, patch=toks.clone(), clean_answer=torch.tensor([1, 2]),
                      patch_answer=torch.tensor([2, 1]), pairs=[PromptPair("a", "b", " x", " y")] * 2, positions=pos)
    held = PairDataset(batches=[batch], n_pairs=2, dropped={}, source="test")
    first = PairDataset(batches=[PairBatch(clean=toks[:1], patch=toks[:1].clone(), clean_answer=torch.tensor([1]),
                                           patch_answer=torch.tensor([2]), pairs=[batch.pairs[0]], positions=pos[:1])],
                        n_pairs=1, dropped={}, source="test")
    alignment = make_alignment(first, "role").extended(held)
    for b in align(held, alignment).batches:
        assert len(alignment.index(b)) == 5  # raised "has no slot" for the second pair's layout before
