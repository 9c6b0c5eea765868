"""Colours and captions shared by every drawing and the viewer: one sign convention everywhere (the
colours of :mod:`featcirc.colours`, re-exported here), and one wording for the example prompt's metric
and the exported circuit's faithfulness."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Optional

from featcirc.colours import (METRIC_COLOUR, NEGATIVE_COLOUR, NEUTRAL_COLOUR, POSITIVE_COLOUR,  # noqa: F401
                              SIGN_LEGEND, SITE_COLOURS, sign_colour)


# ------------------------------------------------------------------ summary.json's example / faithfulness
def number(x: Any) -> Optional[float]:
    """A finite float, or None for NaN, infinite, missing or non-numeric values."""
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def count(x: Any) -> Optional[int]:
    """A whole number >= 0, or None."""
    v = number(x)
    return int(v) if v is not None and v >= 0 and v == int(v) else None


def _text(x: Any) -> Optional[str]:
    return None if x is None else str(x)


def example_info(example: Optional[Mapping]) -> Optional[dict]:
    """summary.json's ``example`` (the example prompt's own metric, answers and probabilities) with
    strings as strings and numbers finite or None; None without one."""
    if example is None:
        return None
    if not isinstance(example, Mapping):
        raise ValueError(f"example must be a dict (summary.json's 'example'), got {type(example).__name__}")
    out: dict = {k: _text(example.get(k)) for k in ("prompt", "patch_prompt", "clean_answer", "patch_answer")}
    out.update({k: number(example.get(k)) for k in ("metric_clean", "metric_patch", "p_clean_answer",
                                                    "p_patch_answer")})
    out["n_pairs_mean"] = count(example.get("n_pairs_mean"))
    return out


_CONFIDENCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%")


def faithfulness_record_info(record: Mapping, ablation: Optional[str] = None) -> dict:
    """One ablation's record of summary.json's ``faithfulness`` (``commands.discover.exported_faithfulness``)
    reduced to what a drawing shows: ablation (the record's own, else ``ablation``), split, pairs, the
    node count it was measured for, ``faithfulness`` and ``completeness`` as ``{value, lo, hi}`` (None
    where unknown), the interval's ``confidence`` (``"95%"``, read off ``intervals``). No data path."""

    def interval(x: Any) -> dict:
        x = x if isinstance(x, Mapping) else {}
        return {k: number(x.get(k)) for k in ("value", "lo", "hi")}

    intervals = _text(record.get("intervals"))
    m = _CONFIDENCE.match(intervals or "")
    named = record.get("ablation", ablation if ablation != "unknown" else None)
    return {"ablation": _text(named), "split": _text(record.get("split")),
            "pairs": count(record.get("pairs")), "n_nodes": count(record.get("n_nodes")),
            "faithfulness": interval(record.get("faithfulness")),
            "completeness": interval(record.get("completeness")),
            "confidence": f"{m.group(1)}%" if m else None, "intervals": intervals}


def faithfulness_info(faithfulness: Optional[Mapping]) -> Optional[list[dict]]:
    """summary.json's ``faithfulness`` (the exported circuit's, one record per ablation; an older run's
    single record is read too: :func:`featcirc.run_files.faithfulness_by_ablation`) as a list of
    :func:`faithfulness_record_info` dicts, one per ablation in the order measured. None without one."""
    from featcirc.run_files import faithfulness_by_ablation

    by = faithfulness_by_ablation(faithfulness)
    if by is None:
        return None
    return [faithfulness_record_info(record, name) for name, record in by.items()]


def _g(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def quoted(token: str) -> str:
    """A token or answer as a JSON string (``" has"``): its spaces stay visible."""
    return json.dumps(token, ensure_ascii=False)


def metric_caption(example: Optional[dict], mean: Any, n_pairs: Optional[int], *, narrow: bool = False) -> list[str]:
    """The metric node's label, one string per line: the example prompt's own ``m`` and answers
    (from :func:`example_info`'s dict) when known, then the mean over the pairs, called a mean.
    ``narrow``: the patch prompt's ``m`` on a line of its own."""
    lines = []
    ex = example or {}
    if ex.get("metric_clean") is not None:
        answers = (f": {quoted(ex['clean_answer'])} vs {quoted(ex['patch_answer'])}"
                   if ex.get("clean_answer") is not None and ex.get("patch_answer") is not None else "")
        lines.append(f"m = {_g(ex['metric_clean'])} on this prompt{answers}")
        if ex.get("metric_patch") is not None:
            patch = f"(patch prompt: {_g(ex['metric_patch'])})"
            if narrow:
                lines.append(patch)
            else:
                lines[-1] += " " + patch
    if number(mean) is not None:
        lines.append(f"mean m over {n_pairs} pairs: {_g(number(mean))}" if n_pairs else
                     f"mean m over the pairs: {_g(number(mean))}")
    return lines or ["metric"]


def _f3(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{round(x, 3) + 0.0:.3f}"  # + 0.0: -0.0001 is 0.000, not -0.000


def _iv_text(f: dict) -> str:
    """``0.690 [0.633, 0.743]``: F and its interval to 3 decimals (a share of the metric: 0.000449
    is 0.000, not a long number beside 0.69)."""
    text = _f3(f["value"])
    if f["value"] is not None and f["lo"] is not None and f["hi"] is not None:
        text += f" [{_f3(f['lo'])}, {_f3(f['hi'])}]"
    return text


def faithfulness_caption(info: "Optional[list[dict] | dict]", n_drawn: Optional[int] = None) -> Optional[str]:
    """One line on the exported circuit's faithfulness (:func:`faithfulness_info`'s list, or one
    :func:`faithfulness_record_info` dict), each ``F`` with its ablation named, e.g.
    ``F = 0.690 [0.633, 0.743] under mean ablation, 0.000 [0.000, 0.001] under patch ablation (95%
    intervals; held-out, 64 pairs) for these 100 nodes``; when ``n_drawn`` differs from the node count F was
    measured for, it says F is the other circuit's. None without ``info``."""
    if info is None:
        return None
    infos = [info] if isinstance(info, Mapping) else list(info)
    if not infos:
        return None
    where = lambda i: ", ".join(x for x in (i.get("split") or "",  # noqa: E731
                                            f"{i['pairs']} pairs" if i.get("pairs") is not None else "") if x)
    shared = len({where(i) for i in infos}) == 1  # the same pairs for every ablation (as discover measures)
    parts = []
    for i in infos:
        part = _iv_text(i["faithfulness"]) + (f" under {i['ablation']} ablation" if i.get("ablation") else "")
        if not shared and where(i):
            part += f" ({where(i)})"
        parts.append(part)
    text = "F = " + ", ".join(parts)
    with_ci = [i for i in infos if i.get("confidence") and i["faithfulness"]["lo"] is not None]
    how = [f"{with_ci[0]['confidence']} interval" + ("s" if len(with_ci) > 1 else "")] if with_ci else []
    how += [where(infos[0])] if shared and where(infos[0]) else []
    if how:
        text += f" ({'; '.join(how)})"
    n = next((i["n_nodes"] for i in infos if i.get("n_nodes") is not None), None)
    if n is None:
        return text + ", for the run's exported circuit"
    if n_drawn is None:
        return text + f", for the exported circuit ({n} nodes)"
    if n_drawn == n:
        return text + f" for these {n} nodes"
    return text + f", measured for the exported circuit ({n} nodes), not the {n_drawn} nodes drawn"


__all__ = ["POSITIVE_COLOUR", "NEGATIVE_COLOUR", "NEUTRAL_COLOUR", "METRIC_COLOUR", "SITE_COLOURS", "SIGN_LEGEND",
           "sign_colour", "number", "count", "example_info", "faithfulness_info", "faithfulness_record_info", "quoted",
           "metric_caption", "faithfulness_caption"]
