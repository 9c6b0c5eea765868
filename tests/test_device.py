"""Device and dtype resolution."""

from __future__ import annotations

import pytest
import torch

from featcirc.models.device import DeviceError, resolve_device, resolve_dtype


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cuda_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_index_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="has 2 GPU"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match="cuda:N"):
        resolve_device("cuda:x")


def test_unknown_device_and_dtypes():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    with pytest.raises(DeviceError, match="float32, bfloat16, float16"):
        resolve_dtype("int8")


@pytest.mark.parametrize("level", [["--saes", "tiny"], ["--level", "component"]])
def test_discover_runs_in_bfloat16(tmp_path, level):
    """A bfloat16 model end to end (the edge pass projects its bfloat16 records in the scores' float32; the
    mean ablation sums in float32): the circuit's faithfulness is finite and close to the float32 run's."""
    import json

    from featcirc.cli import main

    f = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["-q", "--threads", "1", "discover", "--model", "tiny", *level, "--task", "sva-nounpp",
                     "--pairs", "8", "--dtype", dtype, "--ablations", "mean", "--out", str(out)]) == 0
        f[dtype] = json.loads((out / "summary.json").read_text())["faithfulness"]["mean"]["faithfulness"]["value"]
    assert f["bfloat16"] == pytest.approx(f["float32"], abs=0.15), f
