"""How to attribute: the settings every estimator and the edge pass share, validated up front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from featcirc.attribution import DEFAULT_MAX_NODES
from featcirc.vocabulary import AGGREGATIONS, LEVELS


@dataclass(frozen=True)
class AttributionSettings:
    """Settings of :func:`featcirc.attribution.attribute`.

    ``level``: ``feature`` (SAE features and error nodes) or ``component`` (whole site vectors).
    ``aggregation``: ``none`` (a node per position) or ``sum`` (positions summed).
    ``sites``: restrict to these sites (default: every site with an SAE, or every component site).
    ``ig_steps``: interpolation steps of integrated gradients.
    ``max_nodes``: edges are scored among the ``max_nodes`` nodes of largest ``|score|`` (None: all).
    ``max_rows``: rows per batched forward (exact variants, IG steps) and per batched backward (edges).
    ``pair_effects``: keep every pair's per-position node effects in ``NodeScores.pair_effects``.
    ``record_bytes``: the node pass keeps its per-batch states for the edge pass while they fit in this
    many bytes; beyond it the edge pass recomputes them batch by batch (memory stays flat).
    """

    level: str = "feature"
    aggregation: str = "none"
    sites: Optional[tuple[str, ...]] = None
    ig_steps: int = 10
    max_nodes: Optional[int] = DEFAULT_MAX_NODES
    max_rows: int = 256
    pair_effects: bool = False
    record_bytes: int = 1 << 28
    progress: bool = True

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; choose one of {', '.join(LEVELS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        if not isinstance(self.ig_steps, int) or self.ig_steps < 1:
            raise ValueError(f"ig_steps must be an integer >= 1 (--ig-steps), got {self.ig_steps!r}")
        if self.max_nodes is not None and (not isinstance(self.max_nodes, int) or self.max_nodes < 1):
            raise ValueError(f"max_nodes must be an integer >= 1 (--max-nodes), got {self.max_nodes!r}")
        if not isinstance(self.max_rows, int) or self.max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {self.max_rows!r}")
