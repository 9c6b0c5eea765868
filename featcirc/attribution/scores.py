"""Typed containers for attribution results: node scores and edge scores over a dataset.

They hold everything downstream stages need (circuit building, export, plots), so that no later
stage re-runs a model (docs/design.md §1). Saved with ``torch.save`` as plain dicts of tensors.

Sign convention (docs/design.md §5): a score is the effect of *removing* the node's clean value,
``score = m(clean) - m(clean with the node patched)``: positive scores support the clean answer.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from featcirc.io import atomic_path
from featcirc.sites import METRIC, NodeRef, node_id, sort_sites

LEVELS = ("component", "feature")
AGGREGATIONS = ("none", "sum")
SCORES_FORMAT = 2
"""Version of the saved score files (1: edges as a list of id triples; 2: compact edges)."""


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


class _Saved:
    """``save`` / ``load`` as a plain dict of tensors (``to_dict`` / ``from_dict``), written atomically."""

    _what = "scores"

    def save(self, path: "str | os.PathLike[str]") -> Path:
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return Path(path)

    @classmethod
    def load(cls, path: "str | os.PathLike[str]"):
        return cls.from_dict(_load(path, cls._what))


@dataclass
class NodeScores(_Saved):
    """Effects of every node, averaged over the dataset's pairs (positive: supports the clean answer).

    ``features[site]``: ``[T, F]`` (``aggregation="none"``) or ``[F]`` (``"sum"``), feature level only.
    ``vectors[site]``: ``[T]`` or ``[]``: the error node (feature level) or the component node
    (component level). ``feature_acts`` / ``vector_acts``: mean clean activation (vector: L2 norm),
    same shapes. Positions where a pair is shorter than ``T`` count as zero effect, so summing the
    per-position scores gives the aggregated ones. ``pair_effects`` (only when asked for): every
    pair's per-position effects, ``{site: (features [P, T, F] | None, vector [P, T])}``, pairs in
    dataset order, for comparing methods cell by cell.
    """

    _what = "node scores"
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
    pair_effects: Optional[dict[str, tuple[Optional[torch.Tensor], torch.Tensor]]] = None

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
        """Yield ``(node id, attributes)`` for every node (``NodeRef.attributes``); features with a zero
        score are skipped."""
        for ref, score, act in self.iter_refs():
            yield ref.id, ref.attributes(score, act)

    def iter_refs(self) -> Iterator[tuple[NodeRef, float, float]]:
        """Yield ``(node, score, activation)`` for every node; features with a zero score are skipped."""
        for site in sort_sites(self.sites):
            positions = [None] if self.aggregation == "sum" else range(self.vectors[site].shape[0])
            acts_v = self.vector_acts.get(site)
            acts_f = self.feature_acts.get(site)
            feats = self.features.get(site)
            for pos in positions:
                idx = () if pos is None else (pos,)
                yield (NodeRef(site, self.vector_kind, None, pos), float(self.vectors[site][idx]),
                       float(acts_v[idx]) if acts_v is not None else float("nan"))
                if feats is None:
                    continue
                scores = feats[idx]
                nz = torch.nonzero(scores).flatten()
                vals = scores[nz].tolist()
                acts = acts_f[idx][nz].tolist() if acts_f is not None else [float("nan")] * len(vals)
                for f, v, a in zip(nz.tolist(), vals, acts):
                    yield NodeRef(site, "feature", f, pos), v, a

    def cell_groups(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every pair's per-position effects (needs ``pair_effects``), flattened and grouped by site kind
        and node kind: ``{"resid/feature": (values, pair index), "resid/error": ..., "attn/component": ...}``.
        Cells come in the same order for every method run on the same data, so groups correlate cell
        by cell; the pair index lets a bootstrap resample pairs."""
        if self.pair_effects is None:
            raise ValueError("these scores were computed without pair_effects=True")
        groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for site in sort_sites(self.pair_effects):
            feats, vec = self.pair_effects[site.name]
            for kind, values in (("feature", feats), (self.vector_kind, vec)):
                if values is None:
                    continue
                pair = torch.arange(values.shape[0]).view(-1, *([1] * (values.dim() - 1))).expand_as(values)
                groups.setdefault(f"{site.kind}/{kind}", []).append((values.flatten(), pair.flatten()))
        return {k: (torch.cat([v for v, _ in xs]), torch.cat([p for _, p in xs])) for k, xs in groups.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cost"] = asdict(self.cost)
        d["format"] = SCORES_FORMAT
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NodeScores":
        d = dict(d)
        d.pop("format", None)
        d["cost"] = Cost(**d["cost"])
        return cls(**d)



class EdgeScores(_Saved):
    """Edge weights ``e(u -> d)`` (docs/design.md §7), stored compactly: the node ids once, then
    ``(upstream, downstream, weight)`` as index and weight tensors. Only computed, nonzero edges
    are kept; the output node is ``metric``. Same sign convention as the node scores.

    ``EdgeScores(method, aggregation, edges={(u, d): w})`` builds one from a mapping, and
    :attr:`edges` gives that mapping back (a copy).
    """

    _what = "edge scores"

    def __init__(self, method: str, aggregation: str, nodes: Optional[list[str]] = None,
                 upstream: Optional[torch.Tensor] = None, downstream: Optional[torch.Tensor] = None,
                 weight: Optional[torch.Tensor] = None, cost: Optional[Cost] = None,
                 info: Optional[dict] = None, *, edges: Optional[dict[tuple[str, str], float]] = None) -> None:
        if edges is not None:
            ids = sorted({n for pair in edges for n in pair} - {METRIC}) + [METRIC]
            index = {n: i for i, n in enumerate(ids)}
            nodes = ids
            upstream = torch.tensor([index[u] for u, _ in edges], dtype=torch.long)
            downstream = torch.tensor([index[d] for _, d in edges], dtype=torch.long)
            weight = torch.tensor([float(w) for w in edges.values()], dtype=torch.float32)
        if nodes is None or upstream is None or downstream is None or weight is None:
            raise TypeError("EdgeScores needs nodes, upstream, downstream and weight (or edges={...})")
        self.method, self.aggregation, self.nodes = method, aggregation, list(nodes)
        self.upstream, self.downstream, self.weight = upstream, downstream, weight
        self.cost = cost if cost is not None else Cost()
        self.info = info if info is not None else {}

    @property
    def edges(self) -> dict[tuple[str, str], float]:
        """``{(upstream id, downstream id): weight}`` (a copy)."""
        return self.as_dict()

    def __len__(self) -> int:
        return int(self.weight.numel())

    def items(self) -> Iterator[tuple[str, str, float]]:
        """``(upstream id, downstream id, weight)`` for every edge."""
        for u, d, w in zip(self.upstream.tolist(), self.downstream.tolist(), self.weight.tolist()):
            yield self.nodes[u], self.nodes[d], w

    def as_dict(self) -> dict[tuple[str, str], float]:
        """``{(upstream id, downstream id): weight}`` (convenient for small graphs and tests)."""
        return {(u, d): w for u, d, w in self.items()}

    def to_dict(self) -> dict:
        return dict(format=SCORES_FORMAT, method=self.method, aggregation=self.aggregation, nodes=self.nodes,
                    upstream=self.upstream, downstream=self.downstream, weight=self.weight,
                    cost=asdict(self.cost), info=self.info)

    @classmethod
    def from_dict(cls, d: dict) -> "EdgeScores":
        cost = Cost(**d["cost"])
        if d.get("format", 1) == 1:  # featcirc 0.1: edges as (upstream id, downstream id, weight)
            return cls(d["method"], d["aggregation"], cost=cost, info=d.get("info", {}),
                       edges={(u, v): w for u, v, w in d["edges"]})
        return cls(d["method"], d["aggregation"], list(d["nodes"]), d["upstream"], d["downstream"],
                   d["weight"], cost, d.get("info", {}))



def _load(path: "str | os.PathLike[str]", what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} file; make a run directory with `featcirc discover ... --out DIR`")
    try:
        d = torch.load(path, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path} is not a featcirc {what} file ({type(e).__name__}: {e}); "
                         "rerun `featcirc discover`") from None
    if not isinstance(d, dict) or d.get("format", 1) > SCORES_FORMAT:
        raise ValueError(f"{path} was written by a newer featcirc (format {d.get('format')}); upgrade featcirc")
    return d


__all__ = ["Cost", "NodeScores", "EdgeScores", "LEVELS", "AGGREGATIONS", "METRIC", "node_id"]
