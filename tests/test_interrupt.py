"""A run interrupted at any phase leaves ``--out`` as it was (issue 10, docs/design.md §12).

The signal is sent at an exact phase of ``featcirc discover``: in this process (a real SIGINT / SIGTERM
to itself from the phase hook, :func:`featcirc.commands.common.phase`), and in a fresh process paused
by the test hook ``FEATCIRC_PAUSE_AT``. Each case checks: one line on stderr, exit 130 (SIGINT) or 143
(SIGTERM), ``--out`` absent or still the previous complete run, nothing else left beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import featcirc.commands.common as common
import featcirc.commands.discover as discover_cmd
from featcirc.cli import COMMANDS, _module, main
from featcirc.commands.common import PAUSE_ENV

ARGS = ["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4",
        "--max-nodes", "40", "--top-k", "10"]


def _previous_run(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"previous": true}')


def _check_left_as_it_was(out: Path, had_previous: bool) -> None:
    if had_previous:
        assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
        assert (out / "summary.json").read_text() == '{"previous": true}'
        assert [p.name for p in out.parent.iterdir()] == [out.name]  # no staging or set-aside directory
    else:
        assert list(out.parent.iterdir()) == []  # no --out, no staging directory


@pytest.mark.parametrize("at, sig, had_previous", [
    ("checked", signal.SIGINT, False),   # inputs checked, torch not used yet
    ("loaded", signal.SIGINT, True),     # model and SAEs loaded, the run's directory being built
    ("scored", signal.SIGTERM, False),   # run.json, eval_pairs.jsonl, nodes.pt, edges.pt written
    ("written", signal.SIGINT, True),    # every file written, just before the move into place
])
def test_a_signal_at_any_phase_leaves_out_as_it_was(tmp_path, capsys, monkeypatch, at, sig, had_previous):
    real_phase = common.phase

    def phase(name: str) -> None:
        real_phase(name)
        if name == at:
            os.kill(os.getpid(), sig)  # delivered here, as a user's Ctrl-C or a scheduler's SIGTERM would be

    # every command module imported now (main imports them all), and patched where it bound phase: one
    # first imported while phase is patched would keep the patched one for the rest of the session
    modules = [common, discover_cmd] + [_module(name) for name in COMMANDS]
    for module in modules:
        if getattr(module, "phase", None) is real_phase:
            monkeypatch.setattr(module, "phase", phase)
    out = tmp_path / "runs" / "run"
    if had_previous:
        _previous_run(out)
    else:
        out.parent.mkdir()
    before = signal.getsignal(signal.SIGTERM)
    rc = main([*ARGS, "--out", str(out)] + (["--force"] if had_previous else []))
    assert rc == 128 + sig
    err = capsys.readouterr().err.strip()
    assert err == f"featcirc discover: interrupted; nothing written to {out}"
    _check_left_as_it_was(out, had_previous)
    assert signal.getsignal(signal.SIGTERM) == before  # main put the SIGTERM handler back


def test_ctrl_c_in_a_real_process_prints_one_line_and_exits_130(tmp_path):
    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    env = dict(os.environ, **{PAUSE_ENV: "checked"})
    proc = subprocess.Popen([sys.executable, "-m", "featcirc", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().strip() == "featcirc: paused at checked"  # waits until it is there
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip() == f"featcirc discover: interrupted; nothing written to {out}" and stdout == ""
    _check_left_as_it_was(out, had_previous=False)


# ------------------------------------------------------------------------------------ train-saes
TRAIN = ["-q", "train-saes", "--model", "tiny", "--sites", "resid.0", "--corpus", "tiny", "--width", "64", "--k", "4",
         "--tokens", "4096", "--batch-tokens", "256", "--context-size", "32", "--eval-tokens", "256",
         "--ce-eval-tokens", "64"]
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_saes_interrupted_while_training_exits_cleanly(tmp_path, capsys, monkeypatch, sig):
    """The signal comes in the middle of SAELens's training loop, where SAELens used to have put its own
    handlers (a traceback and exit 1); and SAELens must not leave its handlers behind."""
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    real = MultiSAETrainer._checkpoint_if_needed
    steps = []

    def step_then_signal(self):
        real(self)
        steps.append(1)
        if len(steps) == 3:  # a few steps into training
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(MultiSAETrainer, "_checkpoint_if_needed", step_then_signal)
    out = tmp_path / "sets" / "saes"
    out.parent.mkdir()
    before = {s: signal.getsignal(s) for s in HANDLED}
    rc = main([*TRAIN, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 128 + sig and len(steps) == 3
    assert err == f"featcirc train-saes: interrupted; nothing written to {out}"
    assert list(out.parent.iterdir()) == []  # no --out, no .saes.partial-* directory
    assert {s: signal.getsignal(s) for s in HANDLED} == before


def _default_signals() -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def _start(argv, tmp_path, pause_at):
    tmpdir = tmp_path / "tmpdir"  # the process's $TMPDIR, to see what it leaves there
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, **{PAUSE_ENV: pause_at}, TMPDIR=str(tmpdir))
    # the signals at their defaults in the child, as from a terminal: a test runner started under nohup
    # (SIGHUP ignored) or in the background (SIGINT ignored) would pass that on, and featcirc rightly keeps it
    proc = subprocess.Popen([sys.executable, "-m", "featcirc", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    line = proc.stderr.readline().strip()  # waits until it is there
    assert line == f"featcirc: paused at {pause_at}", line + proc.stderr.read()
    return proc, tmpdir


def test_train_saes_sigterm_after_training_in_a_real_process(tmp_path):
    """Paused once SAELens has trained (it used to leave its handlers installed: a traceback, exit 1)."""
    out = tmp_path / "sets" / "saes"
    out.parent.mkdir()
    proc, tmpdir = _start([*TRAIN, "--out", str(out)], tmp_path, "trained")
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".saes.partial-")]  # being built
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip() == f"featcirc train-saes: interrupted; nothing written to {out}" and stdout == ""
    assert list(out.parent.iterdir()) == []
    assert list(tmpdir.iterdir()) == []  # no tmp*wandb-media / tmp*wandb-artifacts, no featcirc-tmp-*


def test_sighup_closes_discover_like_sigterm(tmp_path):
    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    proc, tmpdir = _start([*ARGS, "--out", str(out)], tmp_path, "loaded")
    proc.send_signal(signal.SIGHUP)  # the terminal was closed
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 129, stderr
    assert stderr.strip() == f"featcirc discover: interrupted; nothing written to {out}" and stdout == ""
    _check_left_as_it_was(out, had_previous=False)
    assert list(tmpdir.iterdir()) == []


def test_what_a_killed_train_saes_leaves_is_removed_by_the_next_run(tmp_path, monkeypatch):
    import tempfile

    out = tmp_path / "sets" / "saes"
    out.parent.mkdir()
    proc, tmpdir = _start([*TRAIN, "--out", str(out)], tmp_path, "written")
    proc.kill()  # SIGKILL: no cleanup at all
    proc.communicate(timeout=60)
    left = sorted(p.name for p in out.parent.iterdir())
    assert len(left) == 1 and left[0].startswith(f".saes.partial-{proc.pid}"), left
    assert [p.name.startswith(f"featcirc-tmp-{proc.pid}-") for p in tmpdir.iterdir()] == [True]  # wandb's inside
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # the next run, with the same $TMPDIR
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["saes"]
    assert list(tmpdir.iterdir()) == []
