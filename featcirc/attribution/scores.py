"""Typed containers for attribution results: node scores and edge scores over a dataset.

They hold everything downstream stages need (circuit building, export, plots), so that no later
stage re-runs a model (docs/design.md §1). Saved with ``torch.save`` as plain dicts of tensors.

Sign convention (docs/design.md §5): a score is the effect of *removing* the node's clean value,
``score = m(clean) - m(clean with the node patched)``: positive scores support the clean answer.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from featcirc.attribution.cost import Cost  # noqa: F401  (re-exported: scores files hold a Cost)
from featcirc.io import atomic_path
from featcirc.sites import METRIC, NodeRef, node_id, sort_sites
from featcirc.vocabulary import AGGREGATIONS, LEVELS

SCORES_FORMAT = 2
"""Version of the saved score files (1: edges as a list of id triples; 2: compact edges)."""


class _Saved:
    """``save`` / ``load`` as a plain dict of tensors (``to_dict`` / ``from_dict``), written atomically."""

    _what = "scores"

    def save(self, path: "str | os.PathLike[str]") -> Path:
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return Path(path)

    _check = staticmethod(lambda d: None)

    @classmethod
    def load(cls, path: "str | os.PathLike[str]"):
        """Load a saved file (``weights_only``: tensors and plain data, never code), its structure checked;
        a foreign, damaged or other-version file is a ``ValueError`` naming the file."""
        path = Path(path)
        return cls.from_dict(_validated(_load(path, cls._what), path, cls._what, cls._check))


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
    _check = staticmethod(lambda d: _check_node_dict(d))
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
    _check = staticmethod(lambda d: _check_edge_dict(d))

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
    """A score file's dict, loaded with ``weights_only=True``: tensors and plain data only (a pickle
    that would build any other object, and so could run code, is refused without running it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} file; make a run directory with `featcirc discover ... --out DIR`")
    try:  # a run scored on a GPU opens on a machine without one
        d = torch.load(path, weights_only=True, map_location=None if torch.cuda.is_available() else "cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(f"{path} is not a safe featcirc {what} file: it holds a Python object "
                             f"({found.group(1)}) besides tensors and plain data, and loading it could run code, "
                             "so featcirc refuses to load it (featcirc never saves such objects; if this is a run "
                             "you made with an older featcirc, rerun `featcirc discover`)") from None
        raise ValueError(f"{path} is not a featcirc {what} file (not a torch.save file of tensors and plain data, "
                         "or damaged); rerun `featcirc discover`") from None
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path} is not a featcirc {what} file ({type(e).__name__}: {_first_line(e)}); "
                         "rerun `featcirc discover`") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a featcirc {what} file: it holds {type(d).__name__}, not a dict "
                         "of tensors; rerun `featcirc discover`")
    fmt = d.get("format", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ValueError(f"{path} is not a featcirc {what} file (format {fmt!r}); rerun `featcirc discover`")
    if fmt > SCORES_FORMAT:
        raise ValueError(f"{path} was written by a newer featcirc ({_origin(path, fmt)}); this one reads "
                         f"formats up to {SCORES_FORMAT}: upgrade featcirc")
    return d


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _origin(path: Path, fmt: Optional[int]) -> str:
    """``format N, featcirc X (run.json)``: what is known of the version that wrote a score file."""
    from featcirc.run_files import run_version

    parts = [] if fmt is None else [f"format {fmt}"]
    version = run_version(path.parent)
    if version:
        parts.append(f"featcirc {version} according to run.json")
    return ", ".join(parts) if parts else "written by an unknown featcirc version"


class _Invalid(ValueError):
    """A structural problem of a score file's dict (the message is completed by :func:`_check_keys`' caller)."""


def _check_keys(d: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    bad = [k for k in d if not isinstance(k, str)]
    if bad:
        raise _Invalid(f"non-text keys {bad[:5]!r}")
    missing = [k for k in required if k not in d]
    extra = sorted(k for k in d if k not in required and k not in optional)
    if missing or extra:
        what = "; ".join(s for s in (f"missing keys {missing}" if missing else "",
                                     f"unexpected keys {extra}" if extra else "") if s)
        raise _Invalid(f"{what}: written by another featcirc version")


def _need(ok: bool, problem: str) -> None:
    if not ok:
        raise _Invalid(problem)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_common(d: dict) -> None:
    from featcirc.attribution.methods import method_names

    _need(isinstance(d["method"], str) and d["method"] in method_names(),
          f"unknown method {d['method']!r} (known: {', '.join(method_names())})")
    _need(isinstance(d["aggregation"], str) and d["aggregation"] in AGGREGATIONS,
          f"unknown aggregation {d['aggregation']!r} (known: {', '.join(AGGREGATIONS)})")
    cost = d["cost"]
    _need(isinstance(cost, dict) and set(cost) == {"seconds", "forward_passes", "backward_passes"}
          and all(_is_number(v) for v in cost.values()),
          "'cost' is not {seconds, forward_passes, backward_passes} numbers")
    _need(isinstance(d.get("info", {}), dict), "'info' is not a dict")


def _tensor_dict(d: dict, key: str, sites: set, dims: int) -> dict:
    value = d.get(key, {})
    _need(isinstance(value, dict), f"{key!r} is not a dict of tensors by site")
    for site, t in value.items():
        _need(site in sites, f"{key!r} has site {site!r}, which is not among 'sites'")
        _need(isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == dims,
              f"{key}[{site!r}] is not a {dims}-dimensional float tensor")
    return value


def _check_node_dict(d: dict) -> None:
    from featcirc.sites import Site

    _check_keys(d, _NODE_KEYS, ("format", "pair_effects"))
    _check_common(d)
    _need(isinstance(d["level"], str) and d["level"] in LEVELS, f"unknown level {d['level']!r}")
    sites = d["sites"]
    _need(isinstance(sites, list) and sites and all(isinstance(s, str) for s in sites)
          and len(set(sites)) == len(sites), "'sites' is not a list of distinct site names")
    for s in sites:
        try:
            Site.parse(s)
        except ValueError as e:
            raise _Invalid(str(e)) from None
    names = set(sites)
    per_pos = d["aggregation"] == "none"
    vectors = _tensor_dict(d, "vectors", names, 1 if per_pos else 0)
    _need(set(vectors) == names, f"'vectors' lacks sites {sorted(names - set(vectors))}")
    features = _tensor_dict(d, "features", names, 2 if per_pos else 1)
    _need(d["level"] == "feature" or not features, "component-level scores with feature scores")
    for key, ref, dims in (("vector_acts", vectors, 1 if per_pos else 0), ("feature_acts", features, 2 if per_pos else 1)):
        for site, t in _tensor_dict(d, key, names, dims).items():
            _need(site in ref and t.shape == ref[site].shape, f"{key}[{site!r}] does not match the scores' shape")
    if per_pos:
        lengths = {int(t.shape[0]) for t in vectors.values()} | {int(t.shape[0]) for t in features.values()}
        _need(len(lengths) <= 1, f"sites have different numbers of positions {sorted(lengths)}")
    _need(isinstance(d["n_pairs"], int) and not isinstance(d["n_pairs"], bool) and d["n_pairs"] >= 0,
          "'n_pairs' is not a whole number")
    _need(_is_number(d["metric_clean"]) and _is_number(d["metric_patch"]), "'metric_clean' / 'metric_patch' are not numbers")
    pe = d.get("pair_effects")
    if pe is not None:
        _need(isinstance(pe, dict) and all(
            s in names and isinstance(v, (tuple, list)) and len(v) == 2
            and (v[0] is None or isinstance(v[0], torch.Tensor)) and isinstance(v[1], torch.Tensor)
            for s, v in pe.items()), "'pair_effects' is not {site: (features, vector)} tensors")


def _check_edge_dict(d: dict) -> None:
    if d.get("format", 1) == 1:
        _check_keys(d, ("method", "aggregation", "edges", "cost"), ("format", "info"))
        _check_common(d)
        _need(isinstance(d["edges"], (list, tuple)) and all(
            isinstance(e, (list, tuple)) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], str)
            and _is_number(e[2]) for e in d["edges"]), "'edges' is not a list of (upstream, downstream, weight)")
        return
    _check_keys(d, ("format", "method", "aggregation", "nodes", "upstream", "downstream", "weight", "cost"), ("info",))
    _check_common(d)
    nodes = d["nodes"]
    _need(isinstance(nodes, list) and all(isinstance(n, str) for n in nodes), "'nodes' is not a list of node ids")
    u, v, w = d["upstream"], d["downstream"], d["weight"]
    _need(all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in (u, v, w)) and len(u) == len(v) == len(w),
          "'upstream', 'downstream', 'weight' are not 1-dimensional tensors of one length")
    _need(not u.is_floating_point() and not v.is_floating_point() and w.is_floating_point(),
          "edge indices are not integers or weights not floats")
    if len(w):
        _need(int(torch.minimum(u.min(), v.min())) >= 0 and int(torch.maximum(u.max(), v.max())) < len(nodes),
              "edge indices out of range of 'nodes'")


def _validated(d: dict, path: Path, what: str, check) -> dict:
    try:
        check(d)
    except _Invalid as e:
        raise ValueError(f"{path} is not a featcirc {what} file this version reads ({_origin(path, d.get('format', 1))}): "
                         f"{e}; rerun `featcirc discover`") from None
    return d


_NODE_KEYS = ("method", "level", "aggregation", "sites", "features", "vectors", "feature_acts", "vector_acts",
              "n_pairs", "metric_clean", "metric_patch", "cost", "info")
"""Keys of every saved node score file (format 1 had no ``pair_effects``, format 2 adds it and ``format``)."""


__all__ = ["Cost", "NodeScores", "EdgeScores", "LEVELS", "AGGREGATIONS", "METRIC", "node_id"]
