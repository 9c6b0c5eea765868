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
