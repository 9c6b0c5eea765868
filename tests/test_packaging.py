"""A built wheel (what `pip install .` installs) carries every subpackage and the package data: the
top-level saes/ as featcirc.saes.bundled, the tiny model bundle, the viewer's assets."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_every_package_and_the_bundled_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("featcirc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # every Python package of the source tree (a missing entry in pyproject's list would drop one)
    for init in (REPO / "featcirc").rglob("__init__.py"):
        assert init.relative_to(REPO).as_posix() in names, init
    for required in ("featcirc/saes/bundled/sets/gemma-3-270m.json", "featcirc/saes/bundled/sets/gpt2-small.json",
                     "featcirc/saes/bundled/recipes/gemma-3-270m.json",
                     "featcirc/saes/bundled/tiny/resid.0/cfg.json",
                     "featcirc/saes/bundled/tiny/resid.0/sae_weights.safetensors",
                     "featcirc/resources/tiny/model/model.safetensors",
                     "featcirc/resources/tiny/heldout_sva_nounpp.jsonl",
                     "featcirc/view/assets/viewer.js",
                     # Neuronpedia's graph schema that validate_neuronpedia checks the structure with, its source
                     "featcirc/export/schemas/neuronpedia-graph.schema.json",
                     "featcirc/export/schemas/README.md", "featcirc/export/schemas/LICENSE-Apache-2.0.txt"):
        assert required in names, required
    # ... and the wheel's copy is the one in the source tree, and a draft-07 schema
    schema = zipfile.ZipFile(wheel).read("featcirc/export/schemas/neuronpedia-graph.schema.json")
    assert schema == (REPO / "featcirc/export/schemas/neuronpedia-graph.schema.json").read_bytes()
    assert json.loads(schema)["$schema"] == "http://json-schema.org/draft-07/schema#"
    # jsonschema is a declared dependency (validate_neuronpedia imports it)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Requires-Dist: jsonschema" in zipfile.ZipFile(wheel).read(meta).decode()
    # the tiny SAEs come only from saes/ (no stale copy inside featcirc/resources)
    assert not any(n.startswith("featcirc/resources/tiny/saes/") for n in names)
