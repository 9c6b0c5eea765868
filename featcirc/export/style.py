"""Colours and captions shared by every drawing and the viewer: one sign convention everywhere, and
one wording for the example prompt's metric and the exported circuit's faithfulness."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Optional

POSITIVE_COLOUR = "#2166ac"  # blue: score or weight > 0
NEGATIVE_COLOUR = "#b2182b"  # red: score or weight < 0
NEUTRAL_COLOUR = "#888888"   # zero or unknown (NaN)
METRIC_COLOUR = "#f6b93b"

SITE_COLOURS: dict[str, tuple[str, str]] = {  # (band fill, label ink) of a site kind's rows
    "embed": ("#eef0f7", "#44507a"), "attn": ("#e8f3e8", "#2f6f2f"), "z": ("#e8f3e8", "#2f6f2f"),
    "mlp": ("#fbeedd", "#a35a12"), "resid": ("#eef0f7", "#44507a"), "metric": ("#fff5d6", "#7a5a00"),
}
"""Row colours of a site kind in drawings and the viewer (``z``, the heads' outputs, as ``attn``)."""

SIGN_LEGEND = ("blue: supports the clean answer (score / weight > 0)", "red: opposes it (score / weight < 0)")
"""The sign legend of every drawing and the viewer."""


def sign_colour(x: float) -> str:
    """Hex colour of a score or weight by its sign (blue > 0, red < 0, grey for 0 or NaN)."""
    if not math.isfinite(x) or x == 0:
        return NEUTRAL_COLOUR
    return POSITIVE_COLOUR if x > 0 else NEGATIVE_COLOUR


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


def faithfulness_info(faithfulness: Optional[Mapping]) -> Optional[dict]:
    """summary.json's ``faithfulness`` (the exported circuit's; ``commands.discover.exported_faithfulness``)
    reduced to what a drawing shows: ablation, split, pairs, the node count it was measured for,
    ``faithfulness`` and ``completeness`` as ``{value, lo, hi}`` (None where unknown), the
    interval's ``confidence`` (``"95%"``, read off ``intervals``). No data path. None without one."""
    if faithfulness is None:
        return None
    if not isinstance(faithfulness, Mapping):
        raise ValueError(f"faithfulness must be a dict (summary.json's 'faithfulness'), got "
                         f"{type(faithfulness).__name__}")

    def interval(x: Any) -> dict:
        x = x if isinstance(x, Mapping) else {}
        return {k: number(x.get(k)) for k in ("value", "lo", "hi")}

    intervals = _text(faithfulness.get("intervals"))
    m = _CONFIDENCE.match(intervals or "")
    return {"ablation": _text(faithfulness.get("ablation")), "split": _text(faithfulness.get("split")),
            "pairs": count(faithfulness.get("pairs")), "n_nodes": count(faithfulness.get("n_nodes")),
            "faithfulness": interval(faithfulness.get("faithfulness")),
            "completeness": interval(faithfulness.get("completeness")),
            "confidence": f"{m.group(1)}%" if m else None, "intervals": intervals}


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


def faithfulness_caption(info: Optional[dict], n_drawn: Optional[int] = None) -> Optional[str]:
    """One line on the exported circuit's faithfulness (:func:`faithfulness_info`'s dict), e.g.
    ``F = 0.357 [0.313, 0.404] (95% interval; mean ablation, held-out, 32 pairs) for these 100 nodes``;
    when ``n_drawn`` differs from the node count F was measured for, it says F is the other
    circuit's. None without ``info``."""
    if info is None:
        return None
    f = info["faithfulness"]
    text = f"F = {_g(f['value'])}"
    if f["value"] is not None and f["lo"] is not None and f["hi"] is not None:
        text += f" [{_g(f['lo'])}, {_g(f['hi'])}]"
    how = [f"{info['confidence']} interval"] if info.get("confidence") and f["lo"] is not None else []
    how += [f"{info['ablation']} ablation"] if info.get("ablation") else []
    where = ", ".join(x for x in (info.get("split") or "",
                                  f"{info['pairs']} pairs" if info.get("pairs") is not None else "") if x)
    how += [where] if where else []
    if how:
        text += f" ({'; '.join(how)})"
    n = info.get("n_nodes")
    if n is None:
        return text + ", for the run's exported circuit"
    if n_drawn is None:
        return text + f", for the exported circuit ({n} nodes)"
    if n_drawn == n:
        return text + f" for these {n} nodes"
    return text + f", measured for the exported circuit ({n} nodes), not the {n_drawn} nodes drawn"


__all__ = ["POSITIVE_COLOUR", "NEGATIVE_COLOUR", "NEUTRAL_COLOUR", "METRIC_COLOUR", "SITE_COLOURS", "SIGN_LEGEND",
           "sign_colour", "number", "count", "example_info", "faithfulness_info", "quoted", "metric_caption",
           "faithfulness_caption"]
