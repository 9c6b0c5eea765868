"""Memory estimate: weights from the config match the parameters; the estimated peak is within a
loose factor of the measured peak resident-memory growth of tiny-model runs; fit_to_budget fits,
is monotone in the budget and refuses a budget that nothing fits."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import make_model
from featcirc.memory import (RECORD_BYTES, MemoryBudgetError, estimate_peak_bytes, fit_to_budget, format_bytes,
                             model_weight_bytes, parse_bytes)


@pytest.fixture(scope="module")
def tiny():
    from featcirc.models import load_model
    from featcirc.saes import load_saes

    model = load_model("tiny")
    return model, load_saes(model, "tiny")


@pytest.mark.parametrize("arch", ["gpt2", "pythia", "gemma3"])
def test_weights_from_config_match_parameters(arch):
    model = make_model(arch)
    actual = sum(p.numel() * p.element_size() for p in model.parameters())
    assert abs(model_weight_bytes(model.cfg) - actual) <= 0.02 * actual


def test_parse_and_format_bytes():
    assert parse_bytes("20GB") == 20 * 10**9 and parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes("800m") == 800 * 10**6 and parse_bytes("4096") == 4096 and parse_bytes(7) == 7
    for bad in ("", "lots", "12 parsecs", "-1GB", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_bytes(bad)
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3.0 GiB"


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _peak_growth(run) -> int:
    """Peak resident memory reached while ``run()`` runs, above the resident memory before it (the
    allocator's free memory handed back and the high-water mark reset first)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError as e:
        pytest.skip(f"cannot reset the peak resident memory here ({e})")
    before = _status("VmRSS")
    run()
    return _status("VmHWM") - before


@pytest.mark.parametrize("case", [
    dict(task="sva-nounpp", n=96, batch_size=16, max_nodes=100, record_bytes=1 << 30),  # records kept
    dict(task="ioi", n=32, batch_size=16, max_nodes=300, record_bytes=0),  # records recomputed
])
def test_estimate_is_close_to_the_measured_peak(tiny, case):
    from featcirc.attribution import AttributionSettings, attribute
    from featcirc.data import load_pairs

    model, saes = tiny
    data = load_pairs(model, task=case["task"], n=case["n"], seed=0, batch_size=case["batch_size"])
    settings = AttributionSettings(max_nodes=case["max_nodes"], record_bytes=case["record_bytes"], progress=False)
    est = estimate_peak_bytes(model.cfg, saes, batch_size=case["batch_size"], n_positions=data.max_len,
                              max_nodes=case["max_nodes"], method="relp", n_pairs=data.n_pairs,
                              record_bytes=case["record_bytes"])
    measured = _peak_growth(lambda: attribute(model, data, "relp", saes, settings=settings))
    expected = est.total - est.model_weights - est.sae_weights  # already resident before the run
    assert 0.5 <= expected / measured <= 2.5, f"estimated {format_bytes(expected)}, measured {format_bytes(measured)}"
    assert (est.edge_pass_records > 0) == (case["record_bytes"] > 0)


def test_estimate_grows_with_the_work(tiny):
    model, saes = tiny
    kw = dict(n_positions=12, method="relp", n_pairs=64)
    totals = [estimate_peak_bytes(model.cfg, saes, batch_size=b, **kw).total for b in (1, 2, 4, 8, 16, 32, 64)]
    assert totals == sorted(totals) and totals[-1] > 2 * totals[0]
    with_edges = estimate_peak_bytes(model.cfg, saes, batch_size=16, **kw)
    nodes_only = estimate_peak_bytes(model.cfg, saes, batch_size=16, edges=False, **kw)
    assert nodes_only.edge_pass == 0 and nodes_only.total <= with_edges.total
    ig = estimate_peak_bytes(model.cfg, saes, batch_size=16, n_positions=12, method="ig", n_pairs=64)
    assert ig.edge_pass > with_edges.edge_pass  # 10 interpolation steps a pair
    comp = estimate_peak_bytes(model.cfg, None, batch_size=16, level="component", **kw)
    assert comp.sae_weights == 0 and comp.sae_directions == 0
    with pytest.raises(ValueError, match="SAEs"):
        estimate_peak_bytes(model.cfg, None, batch_size=16, **kw)


def test_fit_to_budget_is_monotone_and_fits(tiny):
    model, saes = tiny
    kw = dict(batch_size=64, n_positions=12, max_rows=256, method="relp", n_pairs=256, max_nodes=1000)
    smallest = estimate_peak_bytes(model.cfg, saes, **{**kw, "batch_size": 1, "max_rows": 1}, record_bytes=0).total
    with pytest.raises(MemoryBudgetError, match="too small"):
        fit_to_budget(smallest - 1, model.cfg, saes, **kw)
    previous = None
    for budget in np.geomspace(smallest, 40 * smallest, 25).astype(int):
        fit = fit_to_budget(int(budget), model.cfg, saes, **kw)
        assert fit.estimate.total <= budget
        assert 1 <= fit.batch_size <= 64 and 1 <= fit.max_rows <= 256 and 0 <= fit.record_bytes <= 1 << 30
        if fit.batch_size < 64:  # the next batch size does not fit, even with one row and no records
            more = estimate_peak_bytes(model.cfg, saes, **{**kw, "batch_size": fit.batch_size + 1, "max_rows": 1},
                                       record_bytes=0)
            assert more.total > budget
        if previous is not None:
            assert fit.batch_size >= previous.batch_size
            assert (fit.batch_size, fit.max_rows) >= (previous.batch_size, previous.max_rows)
        previous = fit
    assert (previous.batch_size, previous.max_rows) == (64, 256)  # a large budget changes nothing
    roomy = fit_to_budget("1TB", model.cfg, saes, **kw)
    assert (roomy.batch_size, roomy.max_rows, roomy.record_bytes) == (64, 256, RECORD_BYTES)
