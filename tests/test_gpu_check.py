"""experiments/gpu_check.py end to end on the CPU (its smallest configuration), so the GPU check
cannot rot on machines without a GPU.

Marked ``slow`` (left out of the default run by pyproject.toml's addopts): it starts eight featcirc,
torchrun and pytest processes and took 63-65 s on the shared 2-core machine. Run it with
``python -m pytest -m slow tests/test_gpu_check.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "gpu_check.py"
STAGES = ("tests", "discover", "compare", "torchrun", "cpu-reference", "agreement", "bfloat16")

pytestmark = pytest.mark.slow


def test_cpu_check_has_every_stage_and_cpu_scores_agree_exactly(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--tests", "tests/test_device.py",
         "--pairs", "4", "--max-nodes", "50", "--agree-pairs", "4", "--procs", "1", "--compare-methods", "relp"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "gpu_check.md").read_text()
    assert proc.stdout.strip() == table.strip(), "the table on stdout is the one in OUT/gpu_check.md"
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(STAGES) <= set(rows), f"missing rows: {set(STAGES) - set(rows)}\n{table}"
    assert "target: " in table and "not judged (run on cpu)" in table

    result = json.loads((out / "gpu_check.json").read_text())["rows"]
    tests = result["tests"]
    assert tests["result"] == "ok" and tests["tests"] >= 4 and tests["failures"] == tests["errors"] == 0, log
    for stage in ("discover", "torchrun", "cpu-reference", "agreement"):
        assert result[stage]["result"] == "ok", f"{stage}: {result[stage]['notes']}\n{log}"
        assert {"load", "nodes", "edges", "faithfulness"} <= set(result[stage]["seconds"]), stage
        assert result[stage]["max_rss_mib"] > 0
    assert result["compare"]["result"] == "ok" and result["compare"]["seconds"]["nodes"] > 0, log
    assert result["torchrun"]["smoke"] is True  # one process: the gloo smoke test of the collectives

    agree = result["agreement"]["agreement"]  # the same discover twice on the CPU: bit for bit
    assert agree["max_abs"] == 0.0 and agree["max_rel"] == 0.0 and agree["spearman"] == 1.0, agree
    assert agree["top_shared"] == agree["top"] and agree["same_edges"] and agree["edge_max_rel"] == 0.0
    assert "max abs 0," in rows["agreement"]

    assert result["bfloat16"]["result"] == "ok", f"bfloat16: {result['bfloat16']['notes']}\n{log}"
    assert proc.returncode == 0, log
