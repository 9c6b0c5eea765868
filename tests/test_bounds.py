"""Sizes are bounded and damaged or contradictory inputs are refused up front (issue: run directories
you can share and trust, items 7, 9 and 10): a truncated SAE weights file, huge --threads / --pairs /
--bootstrap / --width / --ig-steps, negative seeds, --saes with --level component are one-line errors
(exit 2) before torch is imported; a dataset's drop summary is logged once; the public API
(``attribute``, ``Ablator``, ``load_saes``) says what its arguments must be."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featcirc.cli import main
from featcirc.commands.checks import (MAX_BOOTSTRAP, MAX_IG_STEPS, MAX_SAE_WIDTH, check_train_size, max_threads,
                                      safetensors_shapes)
from featcirc.data import PromptPair, write_pairs
from featcirc.data.tasks import MAX_PAIRS, MAX_TASK_PAIRS, make_task

TINY_SAES = Path(__file__).resolve().parents[1] / "saes" / "tiny"


def _truncated_sae_set(tmp_path: Path, cut: int = 7) -> Path:
    """A copy of two bundled tiny SAEs whose resid.0 weights lose their last ``cut`` bytes (the header,
    and so the shapes, stay intact)."""
    root = tmp_path / "saes"
    for site in ("resid.0", "mlp.1"):
        shutil.copytree(TINY_SAES / site, root / site)
    weights = root / "resid.0" / "sae_weights.safetensors"
    os.truncate(weights, weights.stat().st_size - cut)
    return root


def _fresh(cases: list[list[str]]) -> tuple[list[int], list[str], float, str]:
    """Run ``featcirc`` on each argv in one fresh process: exit codes, heavy modules imported, seconds
    spent in ``main`` (import time excluded), stderr."""
    code = ("import sys, time\n"
            "from featcirc.cli import main\n"
            "t0 = time.perf_counter()\n"
            f"rcs = [main(['-q', *argv]) for argv in {cases!r}]\n"
            "dt = time.perf_counter() - t0\n"
            "print(rcs, sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules), dt)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = res.stdout.strip()
    assert out, res.stderr
    rcs, rest = out.split("] ", 1)[0] + "]", out.split("] ", 1)[1]
    heavy, dt = rest.rsplit(" ", 1)
    return eval(rcs), eval(heavy), float(dt), res.stderr  # noqa: S307 (our own repr)


# ----------------------------------------------------------------------------- truncated weights
def test_truncated_safetensors_is_caught_by_the_pre_check(tmp_path):
    root = _truncated_sae_set(tmp_path)
    weights = root / "resid.0" / "sae_weights.safetensors"
    with pytest.raises(ValueError, match="truncated: its header needs"):
        safetensors_shapes(weights)
    rcs, heavy, dt, err = _fresh([["discover", "--model", "tiny", "--saes", str(root), "--task", "ioi",
                                   "--out", str(tmp_path / "o")]])
    assert rcs == [2] and heavy == [], err
    assert dt < 1.0, f"the pre-check took {dt:.2f} s"
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{weights} is truncated" in err and "7 bytes" not in err
    assert not (tmp_path / "o").exists()


def test_intact_safetensors_pass_the_length_check():
    for d in TINY_SAES.iterdir():
        if (d / "sae_weights.safetensors").is_file():
            assert "W_enc" in safetensors_shapes(d / "sae_weights.safetensors")


def test_a_truncated_file_met_at_load_is_one_clear_error(tmp_path):
    """Past the pre-check (the library's own load_saes), safetensors' SafetensorError becomes a
    ValueError naming the file, not a raw traceback from the Rust extension."""
    from conftest import make_model

    from featcirc.saes.loading import load_saes

    root = _truncated_sae_set(tmp_path)
    with pytest.raises(ValueError) as e:
        load_saes(make_model(), root)
    assert type(e.value).__name__ != "SafetensorError"
    assert str(root / "resid.0" / "sae_weights.safetensors") in str(e.value) and "truncated" in str(e.value)


# ----------------------------------------------------------------------------- unbounded sizes
def _limit_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    out = str(tmp_path / "o")
    return [
        (["--threads", "100000", "discover", "--model", "tiny", "--task", "ioi", "--out", out],
         f"--threads must be at most {max_threads():,}"),
        (["discover", "--model", "tiny", "--task", "ioi", "--pairs", "1000000000", "--out", out],
         f"--pairs must be at most {MAX_PAIRS:,}"),
        (["discover", "--model", "tiny", "--task", "ioi", "--pairs", str(MAX_PAIRS), "--eval-fraction", "0.9",
          "--out", out], f"at most {MAX_TASK_PAIRS:,} are generated"),
        (["discover", "--model", "tiny", "--task", "ioi", "--method", "ig", "--ig-steps", "100000", "--out", out],
         f"--ig-steps must be at most {MAX_IG_STEPS:,}"),
        (["compare", "--model", "tiny", "--task", "ioi", "--ig-steps", "100000", "--out", out],
         f"--ig-steps must be at most {MAX_IG_STEPS:,}"),
        (["compare", "--model", "tiny", "--task", "ioi", "--bootstrap", "100000000", "--out", out],
         f"--bootstrap must be at most {MAX_BOOTSTRAP:,}"),
        (["evaluate", str(tmp_path), "--bootstrap", "100000000"], f"--bootstrap must be at most {MAX_BOOTSTRAP:,}"),
        (["train-saes", "--model", "tiny", "--sites", "resid.0", "--width", "100000000", "--out", str(tmp_path / "s")],
         f"--width must be at most {MAX_SAE_WIDTH:,}"),
        (["demo", "--pairs", "1000000000", "--out", out], f"--pairs must be at most {MAX_PAIRS:,}"),
    ]


def test_huge_sizes_are_refused_at_once_without_torch(tmp_path):
    cases = _limit_cases(tmp_path)
    rcs, heavy, dt, err = _fresh([argv for argv, _ in cases])
    assert rcs == [2] * len(cases) and heavy == [], err
    lines = err.strip().splitlines()
    assert len(lines) == len(cases) and "Traceback" not in err
    for (argv, fragment), line in zip(cases, lines):
        assert fragment in line and "(" in line, (argv, line)  # the limit, and why
    assert dt < 3.0, f"{len(cases)} refusals took {dt:.1f} s"
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_limits_leave_room_for_real_runs():
    assert max_threads() >= os.cpu_count() and MAX_PAIRS >= 10_000 and MAX_BOOTSTRAP >= 10_000
    assert MAX_IG_STEPS >= 300 and MAX_SAE_WIDTH >= 1 << 20
    check_train_size({"width": 768, "batch_tokens": 256}, "all", {"d_model": 128, "n_layers": 4})  # the tiny recipe
    check_train_size({"width": 16384, "batch_tokens": 4096}, "all-resid", {"d_model": 640, "n_layers": 18})


def test_sae_width_that_cannot_fit_in_memory_is_refused(tmp_path, capsys, monkeypatch):
    import featcirc.commands.checks as checks

    monkeypatch.setattr(checks, "physical_memory_bytes", lambda: 8 * 2**30)
    assert main(["-q", "train-saes", "--model", "tiny", "--sites", "all", "--width", "1000000",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--width 1,000,000 at 13 site(s) needs at least" in err and "this machine has 8.0 GiB" in err
    assert not (tmp_path / "s").exists()


def test_task_generation_is_bounded():
    with pytest.raises(ValueError, match=f"at most {MAX_TASK_PAIRS:,} pairs"):
        make_task("sva-simple", MAX_TASK_PAIRS + 1)


# --------------------------------------------------------------------- contradictions and seeds
def test_negative_seeds_and_saes_at_component_level_are_refused(tmp_path):
    out = str(tmp_path / "o")
    cases = [
        (["evaluate", str(tmp_path), "--seed", "-1"], "--seed must be a whole number >= 0"),
        (["evaluate", str(tmp_path), "--bootstrap-seed", "-1"], "--bootstrap-seed must be a whole number >= 0"),
        (["train-saes", "--model", "tiny", "--sites", "resid.0", "--seed", "-1", "--out", str(tmp_path / "s")],
         "--seed must be a whole number >= 0"),
        (["discover", "--model", "tiny", "--saes", "tiny", "--level", "component", "--task", "ioi", "--out", out],
         "--saes tiny and --level component contradict each other"),
        (["compare", "--model", "tiny", "--saes", "tiny", "--task", "ioi", "--out", out],
         "--saes tiny and --level component contradict each other"),
    ]
    rcs, heavy, _, err = _fresh([argv for argv, _ in cases])
    assert rcs == [2] * len(cases) and heavy == [], err
    lines = err.strip().splitlines()
    assert len(lines) == len(cases)
    for (argv, fragment), line in zip(cases, lines):
        assert fragment in line, (argv, line)


# ----------------------------------------------------------------------------- drop summary
def test_a_dataset_with_drops_logs_its_summary_once(tmp_path, caplog):
    from featcirc.data import load_pairs
    from featcirc.models.tiny import load_tiny_model

    pairs = make_task("sva-nounpp", 6) + [PromptPair("The author near the desk", "The authors near the desk",
                                                     " is", " is")]  # same answer: dropped
    data = write_pairs(tmp_path / "p.jsonl", pairs)
    model = load_tiny_model()
    with caplog.at_level(logging.INFO):
        ds = load_pairs(model, data=data, n=None)
    assert ds.dropped.get("same answer") == 1
    summaries = [r for r in caplog.records if "dropped:" in r.getMessage()]
    assert len(summaries) == 1 and summaries[0].levelno == logging.WARNING, [r.getMessage() for r in summaries]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_pairs(model, data=data, n=2)  # over --pairs only: the summary, once, at info
    assert len([r for r in caplog.records if "dropped:" in r.getMessage()]) == 1


# ----------------------------------------------------------------------------- the public API
def test_attribute_refuses_an_sae_of_another_site():
    from conftest import make_dataset, make_model, make_saes

    from featcirc.attribution import attribute
    from featcirc.evaluate.faithfulness import Ablator

    model = make_model()
    saes = make_saes(model, kinds=("resid", "mlp"))
    wrong = {"resid.0": saes["mlp.1"], "resid.1": saes["resid.1"]}
    for call in (lambda: attribute(model, make_dataset(), "atp", wrong),
                 lambda: Ablator(model, make_dataset(), saes=wrong, progress=False)):
        with pytest.raises(ValueError) as e:
            call()
        assert "site mlp.1" in str(e.value) and "site resid.0" in str(e.value)


def test_api_arguments_of_the_wrong_kind_say_what_is_expected():
    from conftest import make_dataset, make_model, make_saes

    from featcirc.attribution import attribute
    from featcirc.evaluate.faithfulness import Ablator
    from featcirc.saes.loading import load_saes

    model = make_model()
    data = make_dataset()
    pairs = make_task("ioi", 2)
    with pytest.raises(TypeError, match="data must be a featcirc.data.PairDataset.*tokenize_pairs.*got None"):
        attribute(model, None, "atp")
    with pytest.raises(TypeError, match="data must be a featcirc.data.PairDataset.*got a list of PromptPair"):
        attribute(model, pairs, "atp")
    with pytest.raises(TypeError, match="model must be a TransformerLens HookedTransformer.*got None"):
        attribute(None, data, "atp")
    with pytest.raises(TypeError, match="saes must be None or a dict"):
        attribute(model, data, "atp", "tiny")
    with pytest.raises(TypeError, match=r"Ablator\(\): model must be a TransformerLens HookedTransformer.*got None"):
        Ablator(None, data, level="component")
    with pytest.raises(TypeError, match=r"Ablator\(\): data must be a featcirc.data.PairDataset.*list of PromptPair"):
        Ablator(model, pairs, level="component")
    with pytest.raises(TypeError, match=r"load_saes\(\): model must be a TransformerLens HookedTransformer"):
        load_saes(None, "tiny")
    with pytest.raises(TypeError, match=r"load_saes\(\): model must be .*got list"):
        load_saes([model], make_saes(model))
