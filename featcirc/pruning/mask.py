"""The learned-mask pruner: choose a circuit by optimising a binary mask over candidate nodes (docs/design.md §8).

Every candidate node ``i`` (features and error nodes: the ``n`` nodes of largest ``|score|``) has a
mask value ``mask_i``; every other node is always ablated. A node's value is mixed between its own and
its ablation value ``a`` (the :class:`~featcirc.evaluate.faithfulness.Ablator`'s: mean, patch, ...)::

    x_i' = a_i + mask_i (x_i - a_i)

The mask is binary and learned by descent over masks of a shrinking size, starting from every candidate
kept. At each step one forward and one backward pass give every pair's metric ``m_p`` and its gradient
with respect to the mask::

    G[p, i] = d m_p / d mask_i = (x_i - a_i) . d m_p / d x_i

(attribution patching in the circuit's own context, where threshold pruning uses the full model's), and
a share ``shrink`` of the kept nodes, those of least importance, is dropped::

    importance_i = rms_p(G[p, i]) ^ w * |score_i| ^ (1 - w)      (both scaled to unit RMS over the kept)

Per pair (rms), so effects of opposite sign on different pairs cannot cancel. ``w = context_weight``
blends the in-context effect with the attribution method's score (the warm start: ``w = 0`` is threshold
pruning). This passes through every size asked for. A size's circuit is returned only when its ``|1 - F|`` on the discovery pairs is
no larger than threshold pruning's at that size; else threshold pruning's is (``learned`` False).
Deterministic: no sampling, pairs in a fixed order.

Measured on tiny SVA before settling on this (docs/design.md §8): a continuous sigmoid mask (temperature
annealed, the size held by a per-step penalty, or an L1 penalty swept upwards) fitted the 64 discovery
pairs better but did worse on held-out pairs than thresholding; choosing drops jointly on the
linearised metric picked drops whose linear effects cancel (predicted per-pair loss 0.09, actual 1.70);
the in-context gradient alone (``w = 1``) ranks worse than RelP's scores below ~250 nodes under mean
ablation; a per-pair squared loss as the guard preferred circuits with lower F.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import networkx as nx
import numpy as np
import torch
from tqdm.auto import tqdm

from featcirc.circuit import magnitude
from featcirc.sites import METRIC


@dataclass(frozen=True)
class MaskSettings:
    """How the mask is learned: ``candidates``, the nodes of largest ``|score|`` that may be kept (None:
    every node of the graph with an edge score, else every node); ``shrink``, the share of kept nodes
    dropped per step (smaller: more steps, each one forward and one backward pass over the pairs);
    ``context_weight``, ``w`` of the importance (1: the in-context effect alone, 0: the scores alone)."""

    candidates: Optional[int] = None
    shrink: float = 0.2
    context_weight: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.context_weight <= 1):
            raise ValueError(f"mask context weight must be in [0, 1], got {self.context_weight!r}")
        if not (0 < self.shrink < 1):
            raise ValueError(f"mask shrink must be in (0, 1), got {self.shrink!r}")
        if self.candidates is not None and (isinstance(self.candidates, bool) or not isinstance(self.candidates, int)
                                            or self.candidates < 1):
            raise ValueError(f"mask candidates must be a positive integer, got {self.candidates!r}")


@dataclass
class MaskedCircuit:
    """One size's result: the kept node ids, ``|1 - F|`` on the discovery pairs (``loss``) and threshold
    pruning's at the same size (``warm_loss``)."""

    size: int
    nodes: list[str]
    loss: float
    warm_loss: float
    learned: bool  # False: threshold pruning fitted the discovery pairs at least as well, and is returned


@dataclass
class MaskResult:
    """The circuits of every size asked for, with what they cost."""

    candidates: list[str]
    circuits: dict[int, MaskedCircuit] = field(default_factory=dict)
    seconds: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0
    ablation: str = "mean"
    settings: Optional[MaskSettings] = None

    def to_json(self) -> dict:
        return dict(ablation=self.ablation, n_candidates=len(self.candidates), seconds=self.seconds,
                    forward_passes=self.forward_passes, backward_passes=self.backward_passes,
                    settings=None if self.settings is None else vars(self.settings),
                    sizes={str(k): dict(n_nodes=len(c.nodes), shortfall=c.loss, threshold_shortfall=c.warm_loss,
                                        learned=c.learned)
                           for k, c in sorted(self.circuits.items())})


def ranked_candidates(G: nx.DiGraph, n: Optional[int]) -> list[str]:
    """The ``n`` non-metric nodes of largest ``|score|`` (ties by id); ``n=None``: every node with an
    edge when the graph has edge scores, else every node."""
    nodes = [(nid, magnitude(d.get("score"))) for nid, d in G.nodes(data=True) if nid != METRIC]
    nodes.sort(key=lambda t: (-t[1], t[0]))
    if n is None:
        if G.number_of_edges():
            linked = {u for u, v in G.edges} | {v for u, v in G.edges}
            return [nid for nid, _ in nodes if nid in linked]
        return [nid for nid, _ in nodes]
    return [nid for nid, _ in nodes[:n]]


class MaskTrainer:
    """Per-pair metric and its gradient with respect to a binary mask over ``candidates``, against ``ab``
    (an Ablator on the discovery pairs, whose ablation is the one trained with)."""

    def __init__(self, ab, candidates: Sequence[str], *, progress: bool = True) -> None:
        self.ab, self.candidates, self.progress = ab, list(candidates), progress
        self.where = [ab.node_index(self.candidates, b.clean.shape[1], ab._index(b)) for b in ab.data.batches]
        full, empty = ab.m_full_values, ab.m_empty_values
        gap = float(full.mean() - empty.mean())  # F's denominator
        if not math.isfinite(gap) or gap == 0:
            raise ValueError(f"the {ab.ablation} ablation does not change the metric (m(M) = m(∅) = {full.mean():.4g}); "
                             "there is nothing for a mask to keep")
        self.forward_passes = self.backward_passes = 0

    def _masks(self, i: int, m: torch.Tensor) -> dict:
        """Site masks of batch ``i`` from ``m`` (``[B, n]``: one mask value per pair and candidate)."""
        from featcirc.attribution.splice import SiteState

        padded = torch.cat([m.new_zeros(m.shape[0], 1), m], dim=1)
        return {s: SiteState(None if w.features is None else padded[:, w.features], padded[:, w.vector])
                for s, w in self.where[i].items()}

    def metric_and_gradient(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(m [P], G [P, n])``: the per-pair metric with the candidates where ``keep`` is True kept (all
        other nodes ablated) and ``G[p, i] = d m_p / d mask_i`` there: removing node ``i`` changes pair
        ``p``'s metric by about ``-G[p, i]``. One forward and one backward pass per batch."""
        ms, gs = [], []
        base = torch.tensor(keep, dtype=torch.float32, device=self.ab.device)
        for i, b in enumerate(self.ab.data.batches):
            m = base.expand(b.clean.shape[0], -1).clone().requires_grad_(True)
            with torch.enable_grad():
                metric = self.ab.mixed_metric(i, b, self._masks(i, m))
                (g,) = torch.autograd.grad(metric.sum(), [m])
            ms.append(metric.detach().double().cpu().numpy())
            gs.append(g.detach().double().cpu().numpy())
        self.forward_passes += 1
        self.backward_passes += 1
        return np.concatenate(ms), np.concatenate(gs)

    def shortfall(self, nodes: Sequence[str]) -> float:
        """``|1 - F|`` of a binary circuit (nodes kept, the rest ablated) on the training pairs, from the
        Ablator's cached values: what the guard and the swaps compare (a lower per-pair loss can come with
        a lower F, when the errors shrink in spread but not in mean)."""
        return abs(1.0 - self.ab.faithfulness(set(nodes)))


def importance(grad: np.ndarray, prior: np.ndarray, kept: np.ndarray, w: float) -> np.ndarray:
    """``rms_p(G[p, i]) ^ w * prior_i ^ (1 - w)`` for every candidate, each factor at unit RMS over the kept."""
    effect = np.sqrt(np.mean(grad * grad, axis=0))
    effect = effect / max(float(np.sqrt(np.mean(effect[kept] ** 2))), 1e-300)
    prior = prior / max(float(np.sqrt(np.mean(prior[kept] ** 2))), 1e-300)
    return effect ** w * prior ** (1 - w)


def learn_masks(ab, G: nx.DiGraph, sizes: Sequence[int], settings: MaskSettings = MaskSettings(), *,
                progress: bool = True) -> MaskResult:
    """Circuits of each size in ``sizes`` chosen by the learned mask over the candidates of ``G`` (the
    scored graph), trained on ``ab``'s pairs under ``ab.ablation``. Sizes above the candidate count are
    capped at it."""
    t0 = time.perf_counter()
    evaluations0 = ab.n_evaluations  # the guard's forward sweeps count too
    candidates = ranked_candidates(G, settings.candidates)
    if not candidates:
        raise ValueError("the scored graph has no candidate nodes for a mask")
    n = len(candidates)
    wanted = sorted({min(int(k), n) for k in sizes if int(k) > 0}, reverse=True)
    trainer = MaskTrainer(ab, candidates, progress=progress)
    result = MaskResult(candidates=candidates, ablation=ab.ablation, settings=settings)
    prior = np.array([magnitude(G.nodes[c].get("score")) for c in candidates], dtype=np.float64)
    keep = np.ones(n, dtype=bool)
    size = n
    bar = tqdm(total=max(n - (wanted[-1] if wanted else n), 0), desc=f"mask ({ab.ablation} ablation)",
               disable=not progress, leave=False)
    for k in wanted:
        while size > k:
            _, grad = trainer.metric_and_gradient(keep)
            step = min(size - k, max(1, int(size * settings.shrink)))
            alive = np.flatnonzero(keep)
            imp = importance(grad, prior, keep, settings.context_weight)[alive]
            keep[alive[np.lexsort((-alive, imp))[:step]]] = False  # ties: the lower-scored candidate goes
            size -= step
            bar.update(step)
        learned = [candidates[i] for i in np.flatnonzero(keep)]
        warm = candidates[:k]
        loss, warm_loss = trainer.shortfall(learned), trainer.shortfall(warm)
        use = loss <= warm_loss
        result.circuits[k] = MaskedCircuit(k, learned if use else warm, min(loss, warm_loss), warm_loss, use)
    bar.close()
    result.seconds = time.perf_counter() - t0
    result.forward_passes = trainer.forward_passes + ab.n_evaluations - evaluations0
    result.backward_passes = trainer.backward_passes
    return result


__all__ = ["MaskSettings", "MaskResult", "MaskedCircuit", "MaskTrainer", "importance", "learn_masks",
           "ranked_candidates"]
