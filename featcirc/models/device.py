"""Device and dtype names as the command line takes them: ``auto | cpu | cuda | cuda:N`` and
``float32 | bfloat16 | float16``."""

from __future__ import annotations

import torch

from featcirc.vocabulary import DTYPE_NAMES

__all__ = ["DTYPES", "DeviceError", "resolve_device", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
"""Accepted dtype names (:data:`featcirc.vocabulary.DTYPE_NAMES`) and their torch dtypes."""


class DeviceError(ValueError):
    """A device or dtype name that this machine cannot provide."""


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"``: ``cuda`` when a GPU is visible, else ``cpu``; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``
    (checked: CUDA must be available and ``N`` below the number of GPUs)."""
    s = str(spec).strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} asked for, but CUDA is not available on this machine "
                              "(no GPU, or a CPU-only torch build); use --device cpu or --device auto")
        idx = s[len("cuda:"):] if ":" in s else "0"
        if not idx.isdigit():
            raise DeviceError(f"bad device {spec!r}: write cuda:N with N a GPU index")
        n = torch.cuda.device_count()
        if int(idx) >= n:
            raise DeviceError(f"device {spec!r} does not exist: this machine has {n} GPU(s), "
                              f"cuda:0 to cuda:{n - 1}")
        return torch.device(f"cuda:{int(idx)}")
    raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def resolve_dtype(name: str) -> torch.dtype:
    """``float32 | bfloat16 | float16`` (also ``fp32``, ``bf16``, ``fp16``) as a ``torch.dtype``."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    key = aliases.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[key]
