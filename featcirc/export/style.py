"""Colours shared by every drawing and export: one sign convention everywhere."""

from __future__ import annotations

import math

POSITIVE_COLOUR = "#2166ac"  # blue: score or weight > 0
NEGATIVE_COLOUR = "#b2182b"  # red: score or weight < 0
NEUTRAL_COLOUR = "#888888"   # zero or unknown (NaN)
METRIC_COLOUR = "#f6b93b"


def sign_colour(x: float) -> str:
    """Hex colour of a score or weight by its sign (blue > 0, red < 0, grey for 0 or NaN)."""
    if not math.isfinite(x) or x == 0:
        return NEUTRAL_COLOUR
    return POSITIVE_COLOUR if x > 0 else NEGATIVE_COLOUR
