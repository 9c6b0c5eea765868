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
from featcirc.cli import main
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

    for module in (common, discover_cmd):
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
