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
