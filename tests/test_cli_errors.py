"""Bad input is a clear one-line error (exit 2) found before anything heavy happens (issue 10): each
case checks the message names the cause, and that the model was never loaded (``start_torch`` and the
loader are replaced by tripwires) or, in a fresh process, that torch was never imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featcirc.cli import main
from conftest import one_line_error, set_tripwires
from featcirc.data import PromptPair, write_pairs
from featcirc.data.tasks import make_task

TINY_SAES = Path(__file__).resolve().parents[1] / "saes" / "tiny"


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as importing torch for its work or loading a model."""
    set_tripwires(monkeypatch, "the command started loading although its input was bad")


def _discover(*extra: str, out: Path) -> int:
    return main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4",
                 *extra, "--out", str(out)])


@pytest.mark.parametrize("extra, fragment", [
    (["--max-nodes", "0"], "--max-nodes must be a whole number >= 1"),
    (["--ig-steps", "0"], "--ig-steps must be a whole number >= 1"),
    (["--top-k", "0"], "--top-k must be"),
    (["--batch-size", "0"], "--batch-size must be"),
    (["--eval-fraction", "1"], "--eval-fraction must be a number >= 0 and < 1"),
    (["--node-threshold", "-1"], "--node-threshold must be a number >= 0"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
    (["--cards", "--cards-tokens", "0"], "--cards-tokens must be"),
])
def test_options_out_of_range(tmp_path, capsys, no_model, extra, fragment):
    out = tmp_path / "o"
    assert _discover(*extra, out=out) == 2
    assert fragment in one_line_error(capsys)
    assert not out.exists()  # --ig-steps 0 used to write run.json before failing


@pytest.mark.parametrize("pairs", ["0", "-1"])
def test_pair_counts_below_one_name_the_option(tmp_path, capsys, no_model, pairs):
    data = write_pairs(tmp_path / "p.jsonl", make_task("sva-nounpp", 4))
    for source in (["--data", str(data)], ["--task", "ioi"]):
        rc = main(["-q", "discover", "--model", "tiny", "--saes", "tiny", *source, "--pairs", pairs,
                   "--out", str(tmp_path / "o")])
        assert rc == 2
        err = one_line_error(capsys)
        assert f"--pairs must be a whole number >= 1 (the prompt pairs to discover the circuit on), got {pairs}" in err


def test_threads_and_output_errors(tmp_path, capsys, no_model):
    assert main(["--threads", "-1", "-q", "discover", "--model", "tiny", "--task", "ioi", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--threads must be" in one_line_error(capsys)
    f = tmp_path / "file"
    f.write_text("x")
    assert _discover(out=f) == 2
    assert "is a file" in one_line_error(capsys)
    assert main(["-q", "discover", "--model", "tiny", "--data", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope.jsonl: no such file" in one_line_error(capsys)


def test_compare_unknown_method_fails_before_any_work(tmp_path, capsys, no_model):
    out = tmp_path / "cmp"
    assert main(["-q", "compare", "--model", "tiny", "--task", "ioi", "--methods", "exact,foo",
                 "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "unknown method 'foo'" in err and "relp" in err
    assert not out.exists()


def _sae_copy(tmp_path: Path) -> Path:
    root = tmp_path / "saes"
    shutil.copytree(TINY_SAES / "resid.0", root / "resid.0")
    shutil.copytree(TINY_SAES / "mlp.1", root / "mlp.1")
    return root


def _edit_cfg(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _other_model_sae(d: Path) -> None:
    """An SAE consistent in itself but made for a model of width 64."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"W_enc": np.zeros((64, 8), np.float32), "W_dec": np.zeros((8, 64), np.float32),
               "b_enc": np.zeros(8, np.float32), "b_dec": np.zeros(64, np.float32)}, str(d / "sae_weights.safetensors"))
    _edit_cfg(d / "cfg.json", d_in=64, d_sae=8)


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / "resid.0" / "cfg.json").write_text('{"d_in": 128, "d_sae": '),
     "resid.0/cfg.json is corrupt (not valid JSON"),
    (lambda d: _edit_cfg(d / "resid.0" / "cfg.json", d_sae=1000),
     "is inconsistent: cfg.json says d_in=128, d_sae=1000 but sae_weights.safetensors holds W_enc of shape [128, 768]"),
    (lambda d: _other_model_sae(d / "mlp.1"), "d_in=64, but the model's mlp.1 has width 128"),
    (lambda d: _edit_cfg(d / "mlp.1" / "cfg.json", metadata={"hook_name": "blocks.1.hook_mlp_in"}),
     "hook_name 'blocks.1.hook_mlp_in' is not a site featcirc can splice"),
    (lambda d: _edit_cfg(d / "mlp.1" / "cfg.json", metadata={"hook_name": "blocks.0.hook_resid_post"}),
     "two SAEs for site resid.0"),
    (lambda d: (d / "resid.0" / "sae_weights.safetensors").unlink(), "sae_weights.safetensors is missing"),
    (lambda d: (d / "resid.0" / "sae_weights.safetensors").write_bytes(b"\x00" * 3),
     "is not a readable safetensors file"),
    (lambda d: os.truncate(d / "mlp.1" / "sae_weights.safetensors", 790_000),  # header intact, data cut
     "mlp.1/sae_weights.safetensors is truncated: its header needs"),
])
def test_bad_sae_directories_are_named_before_loading(tmp_path, capsys, no_model, damage, fragment):
    root = _sae_copy(tmp_path)
    damage(root)
    assert main(["-q", "discover", "--model", "tiny", "--saes", str(root), "--task", "ioi",
                 "--out", str(tmp_path / "o")]) == 2
    assert fragment in one_line_error(capsys)


def test_a_good_sae_directory_passes_the_checks(tmp_path):
    from featcirc.commands.checks import check_sae_spec, tiny_model_config

    check_sae_spec(str(_sae_copy(tmp_path)), tiny_model_config())
    check_sae_spec(str(TINY_SAES), tiny_model_config())


def test_cuda_without_a_gpu_is_a_clear_error_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import torch

    import featcirc.commands.common as common

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(common, "load_model_and_saes",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    out = tmp_path / "o"
    assert _discover("--device", "cuda", out=out) == 2
    assert "CUDA is not available" in one_line_error(capsys) and not out.exists()


def test_unknown_words_are_named_and_leave_no_output(tmp_path, capsys):
    """Two different words that both map to the tiny model's unknown token: the error says so (it used
    to say "identical clean/patch tokens"), and the failed run leaves nothing behind."""
    pairs = [PromptPair("The zorblax near the desk", "The zorblaxes near the desk", " is", " are")] * 6
    data = write_pairs(tmp_path / "unknown.jsonl", pairs)
    out = tmp_path / "runs" / "o"
    assert main(["-q", "discover", "--model", "tiny", "--saes", "tiny", "--data", str(data), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "not in the vocabulary of featcirc-tiny" in err and "'zorblax', 'zorblaxes'" in err
    assert "identical" not in err
    assert not (tmp_path / "runs").exists()  # no empty --out, no staging directory, no parents made for it


def test_input_errors_come_fast_and_import_nothing_heavy(tmp_path):
    """In a fresh process: bad inputs fail in well under 3 s with torch, transformer_lens and sae_lens
    never imported (they take 5-25 s to import and load on a busy machine)."""
    bad_sae = _sae_copy(tmp_path)
    (bad_sae / "resid.0" / "cfg.json").write_text("{")
    truncated = _sae_copy(tmp_path / "t")
    weights = truncated / "resid.0" / "sae_weights.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    cases = [
        ["discover", "--model", "tiny", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x")],
        ["discover", "--model", "tiny", "--saes", str(bad_sae), "--task", "ioi", "--out", str(tmp_path / "x")],
        ["discover", "--model", "tiny", "--task", "ioi", "--pairs", "-1", "--out", str(tmp_path / "x")],
        ["discover", "--model", "tiny", "--task", "ioi", "--scan", "./features/x", "--out", str(tmp_path / "x")],
        ["discover", "--model", "tiny", "--task", "ioi", "--slug", "a b", "--out", str(tmp_path / "x")],
        ["compare", "--model", "tiny", "--task", "ioi", "--methods", "exact,foo", "--out", str(tmp_path / "x")],
        ["evaluate", str(tmp_path)],
        ["evaluate", str(tmp_path), "--bootstrap", "0"],
        ["export", str(tmp_path / "nope"), "--format", "dot"],
        ["export", str(tmp_path), "--format", "graphml"],
        ["features", str(tmp_path), "--feature", "resid.2"],
        ["features", str(tmp_path), "--max-tokens", "0"],
        ["view", str(tmp_path), "--max-nodes", "0"],
        ["demo", "--pairs", "0"],
        ["train-saes", "--model", "tiny", "--sites", "resid.9", "--out", str(tmp_path / "s")],
        ["discover", "--model", "tiny", "--saes", str(truncated), "--task", "ioi", "--out", str(tmp_path / "x")],
        ["--threads", "100000", "discover", "--model", "tiny", "--task", "ioi", "--out", str(tmp_path / "x")],
        ["discover", "--model", "tiny", "--task", "ioi", "--pairs", "1000000000", "--out", str(tmp_path / "x")],
        ["discover", "--model", "tiny", "--task", "ioi", "--ig-steps", "100000", "--out", str(tmp_path / "x")],
        ["discover", "--model", "tiny", "--saes", "tiny", "--level", "component", "--task", "ioi",
         "--out", str(tmp_path / "x")],
        ["evaluate", str(tmp_path), "--bootstrap", "100000000"],
        ["evaluate", str(tmp_path), "--seed", "-1"],
        ["evaluate", str(tmp_path), "--bootstrap-seed", "-1"],
        ["train-saes", "--model", "tiny", "--sites", "resid.0", "--width", "100000000", "--out", str(tmp_path / "s")],
        ["train-saes", "--model", "tiny", "--sites", "resid.0", "--seed", "-1", "--out", str(tmp_path / "s")],
    ]
    code = ("import sys, time\n"
            "from featcirc.cli import main\n"
            f"rcs = [main(['-q', *argv]) for argv in {cases!r}]\n"
            "print(rcs, sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules))\n")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert res.stdout.strip() == f"{[2] * len(cases)} []", res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == len(cases) and "Traceback" not in res.stderr
    assert elapsed < 3.0, f"{len(cases)} input errors took {elapsed:.1f} s"


def test_light_copies_agree_with_the_modules_they_stand_in_for():
    """The checks run before torch is imported, so they keep torch-free copies of a few names."""
    from featcirc.commands.checks import ABLATION_NAMES, DTYPE_NAMES, check_memory_size, named_sae_sets
    from featcirc.commands.demo import heldout_file
    from featcirc.commands.common import TASK_CHOICES
    from featcirc.data.tasks import TASKS
    from featcirc.evaluate.faithfulness import ABLATIONS
    from featcirc.memory import parse_bytes
    from featcirc.models.device import DTYPES
    from featcirc.models.tiny import heldout_path
    from featcirc.saes.loading import NAMED_SETS

    assert ABLATION_NAMES == ABLATIONS and DTYPE_NAMES == tuple(DTYPES) and named_sae_sets() == NAMED_SETS
    assert set(TASK_CHOICES) == set(TASKS)
    assert all(heldout_file(t) == heldout_path(t) for t in TASKS)
    for text in ("20GB", "1.5GiB", "800 mb", "123456", "0", "12 parsecs", "-3GB", "GB"):
        try:
            parse_bytes(text)
            ok = True
        except ValueError:
            ok = False
        if ok:
            check_memory_size(text)
        else:
            with pytest.raises(ValueError):
                check_memory_size(text)
