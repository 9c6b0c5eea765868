"""Typed containers for attribution results: node scores and edge scores over a dataset.

They hold everything downstream stages need (circuit building, export, plots), so that no later
stage re-runs a model (DESIGN §1). Saved with ``torch.save`` as plain dicts of tensors.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from featcirc.io import atomic_path
from featcirc.sites import METRIC, Site, node_id, sort_sites

METHODS = ("exact", "atp", "relp", "ig")
LEVELS = ("component", "feature")
AGGREGATIONS = ("none", "sum")


@dataclass
class Cost:
    """What a scoring run cost: wall seconds and model passes (one batched call = one pass)."""

    seconds: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0

    def __iadd__(self, other: "Cost") -> "Cost":
        self.seconds += other.seconds
        self.forward_passes += other.forward_passes
        self.backward_passes += other.backward_passes
        return self


@dataclass
class NodeScores:
    """Indirect-effect estimates of every node, averaged over the dataset's pairs.

    ``features[site]``: ``[T, F]`` (``aggregation="none"``) or ``[F]`` (``"sum"``), feature level only.
    ``vectors[site]``: ``[T]`` or ``[]``: the error node (feature level) or the component node
    (component level). ``feature_acts`` / ``vector_acts``: mean clean activation (vector: L2 norm),
    same shapes. Positions where a pair is shorter than ``T`` count as zero effect, so summing the
    per-position scores gives the aggregated ones.
    """

    method: str
    level: str
    aggregation: str
    sites: list[str]
    features: dict[str, torch.Tensor]
    vectors: dict[str, torch.Tensor]
    feature_acts: dict[str, torch.Tensor] = field(default_factory=dict)
    vector_acts: dict[str, torch.Tensor] = field(default_factory=dict)
    n_pairs: int = 0
    metric_clean: float = float("nan")
    metric_patch: float = float("nan")
    cost: Cost = field(default_factory=Cost)
    info: dict = field(default_factory=dict)

    @property
    def vector_kind(self) -> str:
        return "error" if self.level == "feature" else "component"

    @property
    def n_positions(self) -> Optional[int]:
        if self.aggregation == "sum":
            return None
        any_t = next(iter(self.vectors.values()))
        return int(any_t.shape[0])

    def iter_nodes(self) -> Iterator[tuple[str, dict]]:
        """Yield ``(node_id, attributes)`` for every node (DESIGN §8 attributes)."""
        for name in (s.name for s in sort_sites(self.sites)):
            site = Site.parse(name)
            positions = [None] if self.aggregation == "sum" else range(self.vectors[name].shape[0])
            for pos in positions:
                idx = () if pos is None else (pos,)
                vec = self.vectors[name][idx]
                act = self.vector_acts.get(name)
                yield node_id(site, self.vector_kind, None, pos), dict(
                    site=name, layer=site.layer, kind=self.vector_kind, feature=-1,
                    position=-1 if pos is None else pos, score=float(vec),
                    activation=float(act[idx]) if act is not None else float("nan"),
                )
                if name in self.features:
                    scores = self.features[name][idx]
                    acts = self.feature_acts.get(name)
                    for f in torch.nonzero(scores).flatten().tolist():
                        yield node_id(site, "feature", f, pos), dict(
                            site=name, layer=site.layer, kind="feature", feature=f,
                            position=-1 if pos is None else pos, score=float(scores[f]),
                            activation=float(acts[idx][f]) if acts is not None else float("nan"),
                        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cost"] = asdict(self.cost)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NodeScores":
        d = dict(d)
        d["cost"] = Cost(**d["cost"])
        return cls(**d)

    def save(self, path: "str | os.PathLike[str]") -> Path:
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return Path(path)

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "NodeScores":
        return cls.from_dict(torch.load(path, weights_only=False))


@dataclass
class EdgeScores:
    """Edge weights ``e(u -> d)`` (DESIGN §7), sparse: only edges that were computed and nonzero.

    ``edges[(upstream_id, downstream_id)] = weight``; the output node is ``metric``.
    """

    method: str
    aggregation: str
    edges: dict[tuple[str, str], float]
    cost: Cost = field(default_factory=Cost)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(method=self.method, aggregation=self.aggregation,
                    edges=[(u, d, w) for (u, d), w in self.edges.items()],
                    cost=asdict(self.cost), info=self.info)

    @classmethod
    def from_dict(cls, d: dict) -> "EdgeScores":
        return cls(method=d["method"], aggregation=d["aggregation"],
                   edges={(u, v): float(w) for u, v, w in d["edges"]},
                   cost=Cost(**d["cost"]), info=d.get("info", {}))

    def save(self, path: "str | os.PathLike[str]") -> Path:
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return Path(path)

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "EdgeScores":
        return cls.from_dict(torch.load(path, weights_only=False))


__all__ = ["Cost", "NodeScores", "EdgeScores", "METHODS", "LEVELS", "AGGREGATIONS", "METRIC"]
