"""Data-parallel attribution: shards are disjoint, balanced and of one length per batch; two gloo
processes (launched by torchrun, as a user would) give the single-process node scores, edge scores
to 1e-5 of each tensor's largest magnitude, and faithfulness / completeness to 1e-5 on their
own scale (F is the metric normalised by the range ``m_full - m_empty``, so its scale is 1: a
difference at float32 noise passes even when F is near 0, and a dropped or doubled pair fails).

Run as a script (``torchrun --nproc-per-node 2 tests/test_distributed.py OUT``) this file is the
worker of :func:`test_two_processes_match_one`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featcirc.data import PairBatch, PairDataset, PromptPair
from featcirc.distributed import Context, DistributedError, context, shard_dataset, shard_indices

TOL = 1e-5
TOP_K = 30


def _ragged(lengths=(5, 5, 5, 6, 6, 7, 7, 7, 7, 9, 9), batch_size=3) -> PairDataset:
    """Pairs whose clean tokens encode their index (token 0 = index), grouped by length as
    ``tokenize_pairs`` does."""
    rows = list(enumerate(lengths))
    batches = []
    for t in sorted(set(lengths)):
        same = [i for i, n in rows if n == t]
        for s in range(0, len(same), batch_size):
            idx = same[s:s + batch_size]
            clean = torch.tensor([[i] + [1] * (t - 1) for i in idx])
            batches.append(PairBatch(clean=clean, patch=clean + 100, clean_answer=torch.tensor(idx),
                                     patch_answer=torch.tensor(idx) + 1,
                                     pairs=[PromptPair(f"c{i}", f"p{i}", " a", " b") for i in idx]))
    return PairDataset(batches=batches, n_pairs=len(lengths), dropped={"same answer": 2}, source="ragged")


def _order(data: PairDataset) -> list[int]:
    return [int(b.clean[j, 0]) for b in data.batches for j in range(b.clean.shape[0])]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 11])
def test_shards_are_disjoint_balanced_ordered_and_of_one_length(world):
    data = _ragged()
    everything = _order(data)
    seen = []
    for rank in range(world):
        shard = shard_dataset(data, rank, world)
        mine = _order(shard)
        assert mine == [everything[i] for i in shard_indices(data.n_pairs, rank, world)]  # dataset order
        assert shard.n_pairs == len(mine) and len(mine) in (data.n_pairs // world, -(-data.n_pairs // world))
        for b in shard.batches:
            assert 1 <= b.clean.shape[0] <= 3
            assert torch.equal(b.patch, b.clean + 100)  # rows stay together
            assert [p.clean_prefix for p in b.pairs] == [f"c{int(i)}" for i in b.clean[:, 0]]
            assert torch.equal(b.clean_answer, b.clean[:, 0])
        lengths = [b.clean.shape[1] for b in shard.batches]
        assert lengths == sorted(lengths)
        # a length's pairs fill batches of batch_size before a smaller last one
        for t in set(lengths):
            sizes = [b.clean.shape[0] for b in shard.batches if b.clean.shape[1] == t]
            assert all(s == 3 for s in sizes[:-1])
        assert _order(shard_dataset(data, rank, world)) == mine  # deterministic
        seen += mine
    assert sorted(seen) == sorted(everything)  # disjoint and covering


def test_shard_batch_size_and_too_few_pairs():
    data = _ragged()
    assert max(b.clean.shape[0] for b in shard_dataset(data, 0, 2, batch_size=1).batches) == 1
    with pytest.raises(DistributedError, match="fewer processes"):
        shard_dataset(data, 0, 12)
    with pytest.raises(DistributedError, match="outside"):
        shard_dataset(data, 2, 2)


def test_every_featcirc_option_has_a_spelling_torchrun_passes_through():
    """``torchrun ... -m featcirc CMD --opt``: torchrun's parser reads the whole line and stops with
    "ambiguous option" on a prefix of two of its own options (``--n``: ``--nnodes``,
    ``--nproc-per-node``, ...). Every featcirc option needs a spelling that is neither a prefix of nor
    equal to a torchrun option (an old alias such as ``--n`` may stay beside it)."""
    from torch.distributed.run import get_args_parser

    from featcirc.cli import build_parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings if o.startswith("--")]
    clashes = lambda o: any(t.startswith(o) for t in theirs)  # noqa: E731

    def actions(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from actions(sub)
            elif action.option_strings and "--help" not in action.option_strings:
                yield action

    found = list(actions(build_parser()))
    assert any("--out" in a.option_strings for a in found)  # the subcommands' options were found
    unusable = sorted({"/".join(a.option_strings) for a in found
                       if all(clashes(o) for o in a.option_strings if o.startswith("--"))})
    if unusable == ["--n"]:
        pytest.xfail("--n is ambiguous under torchrun and has no other spelling yet (the lead adds --pairs)")
    assert unusable == [], f"options with no spelling torchrun passes through: {unusable}"


def test_one_process_context_is_the_identity(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = context("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed, ctx.backend) == (0, 1, True, False, None)
    sums = {"a": torch.ones(3)}
    assert ctx.reduce(sums) is sums and torch.equal(sums["a"], torch.ones(3))
    x = np.arange(4.0)
    assert ctx.gather(x) is x
    data = _ragged()
    assert ctx.shard(data) is data and ctx.all_true(True) and not ctx.all_true(False)
    rebatched = ctx.shard(data, batch_size=2)
    assert _order(rebatched) == _order(data) and max(b.clean.shape[0] for b in rebatched.batches) == 2
    with ctx:
        ctx.barrier()


def test_launch_environment_errors(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(DistributedError, match="LOCAL_RANK is not set"):
        context("cpu")
    monkeypatch.setenv("LOCAL_RANK", "zero")
    with pytest.raises(DistributedError, match="not an integer"):
        context("cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DistributedError, match="inconsistent"):
        context("cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistributedError, match="MASTER_ADDR"):
        context("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert not context("cpu").distributed  # torchrun with one process: nothing to initialise


# ---------------------------------------------------------------------------------------------
# two processes against one
def _run(ctx: Context) -> dict:
    """Feature-level RelP nodes + edges, a pruned circuit's faithfulness (mean ablation) and, on a
    ragged dataset, component-level scores with per-pair effects: what each test compares."""
    from featcirc.attribution import AttributionSettings
    from featcirc.circuit import PruneSettings, circuit_nodes, full_graph, prune
    from featcirc.data import load_pairs
    from featcirc.models import load_model
    from featcirc.saes import load_saes

    model = load_model("tiny")
    saes = load_saes(model, "tiny")
    data = load_pairs(model, task="sva-nounpp", n=8, seed=0, batch_size=4)
    nodes, edges = ctx.attribute(model, data, "relp", saes, settings=AttributionSettings(max_nodes=100, progress=False))
    circuit = circuit_nodes(prune(full_graph(nodes, edges, n_layers=model.cfg.n_layers), PruneSettings(top_k=TOP_K)))
    ab = ctx.ablator(model, data, saes=saes, ablation="mean", progress=False)
    ragged = load_pairs(model, task="ioi", n=8, seed=0, batch_size=4)
    comp, comp_edges = ctx.attribute(model, ragged, "relp", None, settings=AttributionSettings(
        level="component", max_nodes=40, pair_effects=True, progress=False))
    from featcirc.data.align import make_alignment  # by role (docs/design.md §14): slots from the FULL data

    al = make_alignment(ragged, "role")
    role, role_edges = ctx.attribute(model, ragged, "relp", None, alignment=al, settings=AttributionSettings(
        level="component", max_nodes=40, progress=False))
    rab = ctx.ablator(model, ragged, level="component", ablation="mean", progress=False, alignment=al)
    role_m = rab.metric_values({"resid.1@S2", "resid.2@S2", "resid.3@END", "attn.3@END"})  # ids name slots by label
    return dict(role=role.to_dict(), role_edges=role_edges.to_dict(), role_m=role_m,
                role_pairs=[p.clean_prefix for p in rab.pairs],nodes=nodes.to_dict(), edges=edges.to_dict(), circuit=sorted(circuit),
                m_full=ab.m_full_values, m_empty=ab.m_empty_values, F=ab.faithfulness(circuit),
                completeness=ab.completeness(circuit), holds_final=ab.holds_final_site(circuit),
                comp=comp.to_dict(), comp_edges=comp_edges.to_dict(),
                ragged_lengths=sorted({b.clean.shape[1] for b in ragged.batches}))


def _close(a, b, what: str) -> None:
    a, b = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).double(), \
        torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).double()
    assert a.shape == b.shape, what
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    assert diff <= TOL * max(scale, 1e-12), f"{what}: max |difference| {diff:.3g} > {TOL} x {scale:.3g}"


def _close_fraction(a: float, b: float, what: str) -> None:
    """F and completeness are fractions of the metric range ``m_full - m_empty``: compare them on
    that scale (1), not relative to their own value (which may be ~0)."""
    diff = abs(float(a) - float(b))
    assert diff <= TOL, f"{what}: |difference| {diff:.3g} > {TOL} of the metric range"


def _faithfulness(model, saes, data, circuit) -> tuple[float, float]:
    """Single-process F and completeness of ``circuit`` on ``data`` (mean ablation)."""
    from featcirc.distributed import Context

    ab = Context().ablator(model, data, saes=saes, ablation="mean", progress=False)
    return ab.faithfulness(circuit), ab.completeness(circuit)


def _compare_nodes(got: dict, want: dict, what: str) -> None:
    assert got["n_pairs"] == want["n_pairs"] and got["sites"] == want["sites"]
    for field in ("features", "vectors", "feature_acts", "vector_acts"):
        assert got[field].keys() == want[field].keys()
        for s in want[field]:
            _close(got[field][s], want[field][s], f"{what} {field}[{s}]")
    _close([got["metric_clean"], got["metric_patch"]], [want["metric_clean"], want["metric_patch"]], what)


def _compare_edges(got: dict, want: dict, what: str) -> None:
    assert got["nodes"] == want["nodes"], f"{what}: different edge candidates"
    key = lambda d: {(u, v): w for u, v, w in zip(d["upstream"].tolist(), d["downstream"].tolist(),  # noqa: E731
                                                   d["weight"].tolist())}
    g, w = key(got), key(want)
    assert g.keys() == w.keys(), f"{what}: different nonzero edges"
    order = sorted(w)
    _close([g[k] for k in order], [w[k] for k in order], f"{what} weights")


def test_two_processes_match_one(tmp_path):
    out = tmp_path / "ranks.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(Path(__file__)), str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = torch.load(out, weights_only=False)
    assert got["world_size"] == 2 and got["backend"] == "gloo"
    assert got["ranks_agree"], "rank 1 computed different results from rank 0"
    want = _run(Context())
    _compare_nodes(got["nodes"], want["nodes"], "feature nodes")
    _compare_edges(got["edges"], want["edges"], "feature edges")
    assert got["circuit"] == want["circuit"] and len(want["circuit"]) > 1
    for k in ("m_full", "m_empty"):
        _close(got[k], want[k], k)  # per-pair values, gathered into dataset order
    _close_fraction(got["F"], want["F"], "faithfulness")
    _close_fraction(got["completeness"], want["completeness"], "completeness")
    assert got["holds_final"] == want["holds_final"]
    assert 0.0 < want["F"] < 1.5
    # ragged data: the ranks' shards have different longest prompts (n_positions pads them)
    assert len(want["ragged_lengths"]) > 1
    _compare_nodes(got["comp"], want["comp"], "component nodes")
    _compare_edges(got["comp_edges"], want["comp_edges"], "component edges")
    for s, (_, vec) in want["comp"]["pair_effects"].items():
        _close(got["comp"]["pair_effects"][s][1], vec, f"pair effects {s}")
    # aligned by role: node sums, edges and the ablated metric (mean values per slot) match too
    _compare_nodes(got["role"], want["role"], "role-aligned nodes")
    _compare_edges(got["role_edges"], want["role_edges"], "role-aligned edges")
    assert got["role_pairs"] == want["role_pairs"]
    _close(got["role_m"], want["role_m"], "role-aligned ablated metric")
    # costs add the ranks' passes
    assert got["nodes"]["cost"]["forward_passes"] == want["nodes"]["cost"]["forward_passes"]  # 2 batches either way


def test_fraction_check_catches_a_dropped_or_doubled_pair():
    """The tolerance of :func:`_close_fraction` is tight enough that a sharding bug (one pair
    dropped and another counted twice) fails it, on the data and circuit of the test above."""
    import dataclasses

    from featcirc.attribution import AttributionSettings
    from featcirc.circuit import PruneSettings, circuit_nodes, full_graph, prune
    from featcirc.data import load_pairs
    from featcirc.models import load_model
    from featcirc.saes import load_saes

    model = load_model("tiny")
    saes = load_saes(model, "tiny")
    data = load_pairs(model, task="sva-nounpp", n=8, seed=0, batch_size=4)
    nodes, edges = Context().attribute(model, data, "relp", saes,
                                       settings=AttributionSettings(max_nodes=100, progress=False))
    circuit = circuit_nodes(prune(full_graph(nodes, edges, n_layers=model.cfg.n_layers), PruneSettings(top_k=TOP_K)))
    F, comp = _faithfulness(model, saes, data, circuit)
    _close_fraction(F, F, "same")
    b = data.batches[-1]  # the last pair dropped, the first pair of that batch counted twice
    clean, patch = b.clean.clone(), b.patch.clone()
    clean[-1], patch[-1] = clean[0], patch[0]
    ca, pa = b.clean_answer.clone(), b.patch_answer.clone()
    ca[-1], pa[-1] = ca[0], pa[0]
    buggy = dataclasses.replace(data, batches=data.batches[:-1] + [dataclasses.replace(
        b, clean=clean, patch=patch, clean_answer=ca, patch_answer=pa, pairs=b.pairs[:-1] + b.pairs[:1])])
    F_bug, comp_bug = _faithfulness(model, saes, buggy, circuit)
    with pytest.raises(AssertionError):
        _close_fraction(F_bug, F, "faithfulness")
    with pytest.raises(AssertionError):
        _close_fraction(comp_bug, comp, "completeness")


def test_cli_under_torchrun_logs_once(tmp_path):
    """``torchrun -m featcirc discover``: the run is written once, and each log line is printed by rank 0
    only (not once per process)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HOME=str(tmp_path))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "featcirc",
         "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4", "--max-nodes", "50", "--device", "cpu",
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logged = [line for line in proc.stderr.splitlines() if line.startswith("featcirc: ")]
    assert any("discovery pairs" in line for line in logged), proc.stderr[-2000:]
    assert len(logged) == len(set(logged)), f"repeated log lines: {logged}"
    assert proc.stdout.count("circuit: ") == 1 and (out / "summary.json").is_file()


def test_log_level_by_rank():
    import logging

    from featcirc.cli import log_level

    assert log_level(False, "0") == logging.INFO and log_level(True, "0") == logging.WARNING
    assert log_level(False, "") == logging.INFO
    assert log_level(False, "1") == logging.ERROR and log_level(True, "3") == logging.ERROR


def _worker(out: str) -> None:
    """One rank of :func:`test_two_processes_match_one`: rank 0 saves the results, with a check that
    rank 1 computed the same."""
    torch.set_num_threads(1)
    with context("cpu") as ctx:
        res = _run(ctx)
        flat = torch.cat([torch.as_tensor(res["m_full"]), torch.tensor([res["F"], res["completeness"]],
                                                                        dtype=torch.float64)])
        both = [torch.empty_like(flat) for _ in range(ctx.world_size)]
        torch.distributed.all_gather(both, flat)
        if ctx.is_main:
            res.update(world_size=ctx.world_size, backend=ctx.backend,
                       ranks_agree=all(torch.equal(both[0], b) for b in both))
            torch.save(res, out)
        ctx.barrier()


if __name__ == "__main__":
    _worker(sys.argv[1])
