"""The colours of every drawing (export, the faithfulness figure) and the viewer: one sign convention
everywhere (docs/design.md §5: blue > 0, red < 0). Plain constants, below :mod:`featcirc.evaluate` and
:mod:`featcirc.export` alike, so that neither package imports the other for them
(:mod:`featcirc.export.style` re-exports them beside the captions)."""

from __future__ import annotations

import math

__all__ = ["METRIC_COLOUR", "NEGATIVE_COLOUR", "NEUTRAL_COLOUR", "POSITIVE_COLOUR", "SIGN_LEGEND", "SITE_COLOURS",
           "sign_colour"]

POSITIVE_COLOUR = "#2166ac"  # blue: score or weight > 0
NEGATIVE_COLOUR = "#b2182b"  # red: score or weight < 0
NEUTRAL_COLOUR = "#888888"   # zero or unknown (NaN)
METRIC_COLOUR = "#f6b93b"

SITE_COLOURS: dict[str, tuple[str, str]] = {  # (band fill, label ink) of a site kind's rows
    "embed": ("#eef0f7", "#44507a"), "attn": ("#e8f3e8", "#2f6f2f"), "z": ("#e8f3e8", "#2f6f2f"),
    "mlp": ("#fbeedd", "#a35a12"), "tc": ("#f5e6f3", "#8a2b7c"), "resid": ("#eef0f7", "#44507a"),
    "metric": ("#fff5d6", "#7a5a00"),
}
"""Row colours of a site kind in drawings and the viewer (``z``, the heads' outputs, as ``attn``; ``tc``,
a transcoder replacing the MLP, in its own colour beside ``mlp``'s so the two never look alike)."""

SIGN_LEGEND = ("blue: supports the clean answer (score / weight > 0)", "red: opposes it (score / weight < 0)")
"""The sign legend of every drawing and the viewer."""


def sign_colour(x: float) -> str:
    """Hex colour of a score or weight by its sign (blue > 0, red < 0, grey for 0 or NaN)."""
    if not math.isfinite(x) or x == 0:
        return NEUTRAL_COLOUR
    return POSITIVE_COLOUR if x > 0 else NEGATIVE_COLOUR
