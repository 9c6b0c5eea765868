"""Atomic writes: permissions follow the umask, a failed write leaves the old file, strict JSON copies."""

from __future__ import annotations

import math
import os
import stat

import pytest

from featcirc.io import atomic_path, current_umask, jsonable, new_file_mode, write_json, write_text


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_permissions(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    assert new_file_mode() == 0o666 & ~mask
    for writer, name in ((lambda p: write_text(p, "x"), "a.txt"), (lambda p: write_json(p, {"a": 1}), "b.json")):
        path = writer(tmp_path / name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, oct(path.stat().st_mode)
    # the same as a file opened directly
    direct = tmp_path / "direct.txt"
    direct.write_text("x")
    assert stat.S_IMODE(direct.stat().st_mode) == stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_creates_parent_directories(tmp_path):
    path = write_text(tmp_path / "a" / "b" / "c.txt", "deep")
    assert path.read_text() == "deep"


def test_jsonable_makes_strict_json():
    import numpy as np
    import torch

    out = jsonable({"nan": float("nan"), "inf": -math.inf, 1: (np.int64(3), np.float32(0.5)),
                    "t": torch.tensor([1.0]), "ok": [True, None, "s"]})
    assert out == {"nan": None, "inf": None, "1": [3, 0.5], "t": "tensor([1.])", "ok": [True, None, "s"]}
    assert type(out["1"][0]) is int and type(out["1"][1]) is float


# ----------------------------------------------------------------------------- whole run directories
from featcirc.io import OutputDirError, atomic_paths, check_out_dir, staged_dir  # noqa: E402


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_staged_dir_appears_only_when_complete(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "run"
    with staged_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".run.partial-")
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # nothing at --out while the run is being built
    assert (out / "a.txt").read_text() == "a"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # as a plain mkdir under umask 022
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("interrupt", [RuntimeError("crash"), KeyboardInterrupt()])
def test_failed_or_interrupted_run_leaves_out_absent(tmp_path, interrupt):
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(type(interrupt)):
        with staged_dir(out) as tmp:
            (tmp / "half.pt").write_text("x")
            raise interrupt
    assert not (tmp_path / "new").exists()  # parents made for the run go too: no empty --out behind
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_the_previous_run_only_at_the_end(tmp_path):
    out = tmp_path / "run"
    with staged_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--force"):
        with staged_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with staged_dir(out, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            assert (out / "old.txt").read_text() == "old"
            raise RuntimeError("crash")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # the previous complete run is intact
    with staged_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _hidden(tmp_path) == []


def test_an_empty_out_directory_is_filled_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with staged_dir(out) as tmp:
        (tmp / "a").write_text("a")
    assert (out / "a").exists()


def test_check_out_dir_refuses_files_and_unwritable_places(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        check_out_dir(f, force=True)
    with pytest.raises(OutputDirError, match="working directory"):
        check_out_dir(".", force=True)
    assert check_out_dir(tmp_path / "a" / "b", force=False) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking writes nothing
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OutputDirError, match="may write"):
            check_out_dir(ro / "run", force=False)


def test_atomic_paths_replace_all_files_or_none(tmp_path):
    a, b = write_text(tmp_path / "a.txt", "old a"), write_text(tmp_path / "b.txt", "old b")
    with pytest.raises(RuntimeError):
        with atomic_paths(a, b) as (ta, tb):
            ta.write_text("new a")
            raise RuntimeError("crash before b")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_partial_dirs_of_dead_runs_are_removed_by_the_next_run(tmp_path):
    import subprocess

    from featcirc.io import staged_dir

    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    stale = tmp_path / f".run.partial-{proc.pid}-abc"  # a run killed with SIGKILL: its PID is gone
    stale.mkdir()
    (stale / "nodes.pt").write_text("half")
    alive = tmp_path / f".run.partial-{os.getpid()}-xyz"  # a run in progress: left alone
    alive.mkdir()
    with staged_dir(tmp_path / "run") as out:
        (out / "summary.json").write_text("{}")
    assert not stale.exists() and alive.exists() and (tmp_path / "run" / "summary.json").exists()


# ------------------------------------------------------- links, read-only places, dead runs' leftovers
import contextlib  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402


def _dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def read_only_dir(path):
    """A directory nobody may create files in, root included. As root the permission bits are no
    obstacle (root writes into a 0o555 directory), so a read-only tmpfs is mounted there (root may
    mount; skipped where it cannot); as another user ``chmod 0o555`` is enough."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("root, but cannot mount a read-only tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_force_through_a_link_replaces_the_run_it_points_to_and_keeps_the_link(tmp_path):
    real = tmp_path / "store" / "run-1"
    with staged_dir(real) as tmp:
        (tmp / "old.txt").write_text("old")
    link = tmp_path / "latest"
    link.symlink_to(real)
    with pytest.raises(FileExistsError, match="--force"):
        check_out_dir(link, force=False)
    with staged_dir(link, force=True) as tmp:
        assert tmp.parent == real.parent  # built beside the target: renamed onto it on the same file system
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and link.resolve() == real.resolve()  # the link is still a link, to the same place
    assert sorted(p.name for p in real.iterdir()) == ["new.txt"]  # the run behind it was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "store"]
    assert _hidden(real.parent) == []


def test_a_stale_partial_directory_of_the_old_train_saes_form_is_removed(tmp_path):
    stale = tmp_path / f".saes.partial-{_dead_pid()}"  # train-saes's former name: no suffix
    stale.mkdir()
    (stale / "cfg.json").write_text("{}")
    with staged_dir(tmp_path / "saes") as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert not stale.exists() and _hidden(tmp_path) == []


def test_replace_is_for_the_callers_own_directories(tmp_path, monkeypatch, umask):
    """``replace=True`` (a cache entry, one SAE of a saved set): an existing directory is replaced
    without --force and without check_out_dir's refusals, at the last moment, with the same stale-partial
    cleanup, permissions and clean-up on failure as a run."""
    import featcirc.io as fio

    umask(0o022)
    out = tmp_path / "cache" / "tokenizer"
    with staged_dir(out, replace=True) as tmp:
        (tmp / "old.json").write_text("old")
    stale = tmp_path / "cache" / f".tokenizer.partial-{_dead_pid()}-abc"
    stale.mkdir()
    monkeypatch.setattr(fio, "check_out_dir", lambda *a, **k: pytest.fail("a cache is no --out"))
    with pytest.raises(RuntimeError):
        with staged_dir(out, replace=True) as tmp:
            (tmp / "new.json").write_text("new")
            raise RuntimeError("crash")
    assert sorted(p.name for p in out.iterdir()) == ["old.json"]
    with staged_dir(out, replace=True) as tmp:
        (tmp / "new.json").write_text("new")
        assert (out / "old.json").exists()  # replaced only at the end
    assert sorted(p.name for p in out.iterdir()) == ["new.json"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert not stale.exists() and _hidden(out.parent) == []


def test_read_only_places_are_refused_before_any_work_even_for_root(tmp_path):
    from featcirc.io import check_writable_file, writable_dir_problem

    with read_only_dir(tmp_path / "ro") as ro:
        assert writable_dir_problem(ro) is not None
        with pytest.raises(OutputDirError, match="cannot write --out"):
            check_out_dir(ro / "run", force=False)
        with pytest.raises(OutputDirError, match=str(ro)):
            check_writable_file(ro / "x" / "circuit.html")
        assert list(ro.iterdir()) == []
    assert writable_dir_problem(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]  # the probe left nothing


def test_a_full_disk_in_a_staged_run_names_the_cause_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import featcirc.io as fio

    out = tmp_path / "run"
    with pytest.raises(fio.WriteFailed) as e:
        with staged_dir(out) as tmp:
            (tmp / "a").write_text("a")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "nodes.pt"))
    assert e.value.errno == errno.ENOSPC and str(out) in str(e.value) and "no space left" in str(e.value)
    # torch's own words for a file that did not fit ("unexpected pos"), told apart by the free space left
    monkeypatch.setattr(fio, "free_bytes", lambda path: 1024)
    with pytest.raises(fio.WriteFailed, match="no space left"):
        with staged_dir(out) as tmp:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 22464 vs 22352")
    with pytest.raises(RuntimeError, match="a bug"):  # not a write failure: left as it is
        with staged_dir(out):
            raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_a_command_go_and_a_killed_ones_are_removed(tmp_path, monkeypatch):
    from featcirc.io import TMP_PREFIX, process_tempdir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{TMP_PREFIX}{_dead_pid()}-abc"  # left by a process killed outright
    (dead / "tmpxyzwandb-media").mkdir(parents=True)
    mine = tmp_path / f"{TMP_PREFIX}{os.getpid()}-alive"  # a process still running: left alone
    mine.mkdir()
    with process_tempdir() as d:
        assert d.parent == tmp_path and tempfile.gettempdir() == str(d)
        tempfile.mkdtemp(suffix="wandb-media")  # what importing SAELens (wandb) does
    assert tempfile.gettempdir() == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]
