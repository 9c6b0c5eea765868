"""Faults outside the program while writing (issue: "run directories you can share and trust"): a full
disk, a read-only target, and argparse's errors. Each is one line on stderr naming the cause and the
path, exit 2, with nothing half-written left; a read-only ``--out`` is found before any work.

How the faults are made: a full disk with a real 256 KiB tmpfs where this process may mount one (root),
and otherwise by making a write raise ``OSError(ENOSPC)`` / torch's ``RuntimeError ... unexpected pos``
in-process; a read-only directory with a read-only tmpfs as root (root ignores permission bits, so
``chmod 0o555`` proves nothing there) and ``chmod 0o555`` for other users (``test_io.read_only_dir``).
"""

from __future__ import annotations

import errno
import gc
import json
import shutil
import subprocess

import pytest

from conftest import one_line_error, set_tripwires
from featcirc.cli import main
from tests.test_io import read_only_dir

DISCOVER = ["-q", "discover", "--model", "tiny", "--saes", "tiny", "--task", "sva-nounpp", "--pairs", "4",
            "--max-nodes", "40", "--top-k", "10"]



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main([*DISCOVER, "--out", str(out)]) == 0
    return out


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped elsewhere)."""
    d = tmp_path / "disk"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield d
    gc.collect()  # torch's failed writer, kept alive by the traceback's frames, holds a file open there
    if subprocess.run(["umount", str(d)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(d)], check=True)


# ----------------------------------------------------------------------------------------- argparse
@pytest.mark.parametrize("argv, fragment", [
    (["discover", "--model", "tiny"], "featcirc discover: error: the following arguments are required: --out"),
    (["evaluate", "x", "--sizes", "ten"], "featcirc evaluate: error: argument --sizes: expected comma-separated"),
    (["nope"], "featcirc: error: argument COMMAND: invalid choice"),
])
def test_an_argparse_error_is_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = one_line_error(capsys)
    assert err.startswith(fragment) and err.endswith("--help)"), err


# ---------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("force", [False, True])
def test_discover_onto_a_full_disk(tmp_path, capsys, small_disk, force):
    out = small_disk / "run"
    if force:  # a previous run to replace: torch's "unexpected pos", which says nothing of the disk
        out.mkdir()
        (out / "summary.json").write_text('{"previous": true}')
    rc = main([*DISCOVER, "--out", str(out)] + (["--force"] if force else []))
    err = one_line_error(capsys)
    assert rc == 2 and err.startswith(f"featcirc discover: error: cannot write {out}: no space left on device"), err
    if force:
        assert sorted(p.name for p in small_disk.iterdir()) == ["run"]
        assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # the previous run, intact
    else:
        assert list(small_disk.iterdir()) == []  # nothing half-written, no partial directory


@pytest.mark.parametrize("fault", ["oserror", "torch"])
def test_discover_disk_full_simulated(tmp_path, capsys, monkeypatch, fault):
    """The same without a tmpfs: the first torch.save fails as a full disk makes it fail."""
    import torch

    import featcirc.io as fio

    def full(*args, **kwargs):
        if fault == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 22464 vs 22352")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(fio, "free_bytes", lambda path: 0)  # what the disk says when torch's write fails
    out = tmp_path / "runs" / "run"
    rc = main([*DISCOVER, "--out", str(out)])
    err = one_line_error(capsys)
    assert rc == 2 and f"cannot write {out}: no space left on device" in err, err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_disk_full_leaves_no_half_written_results(run_dir, tmp_path, capsys, monkeypatch):
    import featcirc.evaluate.figure as figure

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "faithfulness-mean.png"))

    monkeypatch.setattr(figure, "plot_report", full)
    rc = main(["-q", "evaluate", str(run), "--bootstrap", "10", "--sizes", "5,10"])
    err = one_line_error(capsys)
    assert rc == 2 and "no space left on device" in err and str(run) in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # summary.json untouched
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_train_saes_disk_full_leaves_nothing(tmp_path, capsys, monkeypatch):
    import featcirc.saes.training as training

    def full(directory, info):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metrics.json"))

    monkeypatch.setattr(training, "write_card", full)
    out = tmp_path / "sets" / "saes"
    rc = main(["-q", "train-saes", "--model", "tiny", "--sites", "resid.0", "--corpus", "tiny", "--width", "64",
               "--k", "4", "--tokens", "1024", "--batch-tokens", "256", "--context-size", "32", "--eval-tokens", "256",
               "--ce-eval-tokens", "64", "--out", str(out)])
    err = one_line_error(capsys)
    assert rc == 2 and err.startswith(f"featcirc train-saes: error: cannot write {out}: no space left"), err
    assert list(tmp_path.iterdir()) == []  # no --out, no partial directory, no parents made for it


# ------------------------------------------------------------------------------ read-only targets
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts its work (a model load, a viewer written)."""
    import featcirc.view as view

    set_tripwires(monkeypatch, "the command started its work although its --out cannot be written",
                  (view, "write_viewer"))


@pytest.mark.parametrize("command, name", [("evaluate", "results"), ("view", "circuit.html"),
                                           ("discover", "run"), ("train-saes", "saes")])
def test_a_read_only_out_is_refused_before_any_work(run_dir, tmp_path, capsys, no_work, command, name):
    with read_only_dir(tmp_path / "ro") as ro:
        out = ro / name
        argv = {"evaluate": ["evaluate", str(run_dir), "--out", str(out)],
                "view": ["view", str(run_dir), "--out", str(out)],
                "discover": DISCOVER[1:] + ["--out", str(out)],
                "train-saes": ["train-saes", "--model", "tiny", "--sites", "resid.0", "--out", str(out)]}[command]
        rc = main(["-q", *argv])
        err = one_line_error(capsys)
        assert rc == 2 and err.startswith(f"featcirc {command}: error: cannot write --out {out}: {ro} is "), err
        assert list(ro.iterdir()) == []
    assert json.loads((run_dir / "summary.json").read_text())  # the run read from is untouched
