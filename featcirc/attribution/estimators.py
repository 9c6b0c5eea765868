"""Estimators of node effects (docs/design.md §5): what each registry entry carries and runs.

Everything that differs between estimators lives on the estimator object, and nothing outside this
module branches on which estimator a method has: the node pass asks it for a batch's states, gradients
and effects (:meth:`Estimator.node_effects`), the edge pass and the reference oracle for the
interpolation points per pair (:meth:`Estimator.path_steps`) and where a downstream feature's encoder
passes gradient (:meth:`Estimator.active_features`), ``featcirc.memory`` for the node pass's working
memory (:meth:`Estimator.node_transient_elements`), the registry for whether edges exist
(:attr:`Estimator.has_edges`). A new estimator is one subclass here (or anywhere) and one
:func:`featcirc.attribution.methods.register` call.

- :class:`Exact` (``exact``): activation patching, node by node; no gradients, no edges.
- :class:`Gradient` (``gradient``, AtP and RelP): ``grad m|clean . (a_c - a_p)``.
- :class:`Integrated` (``integrated``, IG): path-averaged gradients, ``ig_steps`` points per pair.

Importing this module does not import torch (the registry is listed without it): the work is
imported when it runs, from :mod:`featcirc.attribution.nodes`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    import torch

    from featcirc.attribution.methods import Method
    from featcirc.attribution.nodes import BatchRecord
    from featcirc.attribution.cost import Cost
    from featcirc.attribution.splice import SiteState, Splice
    from featcirc.data import PairBatch
    from featcirc.sites import Site


class NodeEffects(NamedTuple):
    """What an estimator computes for one batch besides the patch run (see ``BatchRecord``)."""

    clean: "dict[Site, SiteState]"
    grads: "dict[Site, SiteState]"
    resid_pre: "dict[int, torch.Tensor]"
    m_clean: "torch.Tensor"
    effects: "dict[Site, SiteState]"


@dataclass(frozen=True)
class Estimator(ABC):
    """How a method estimates node effects (and what that implies for edges and memory).

    Subclasses set :attr:`name` (recorded as ``NodeScores.info["estimator"]``) and implement
    :meth:`node_effects` and :meth:`node_transient_elements`; the defaults of the rest fit an
    estimator that scores with clean-run gradients (AtP).
    """

    name: ClassVar[str] = ""
    has_edges: ClassVar[bool] = True
    """Whether edge scores exist (every estimator with node gradients)."""

    def path_steps(self, ig_steps: int) -> int:
        """Points per pair at which the edge pass and the reference take the Jacobian: rows
        ``n = s * B + b`` at ``a_c + alpha_s (a_p - a_c)``, ``alpha_s = s / S`` (1: the clean run)."""
        return 1

    def info(self, ig_steps: int) -> dict[str, Any]:
        """What ``NodeScores.info`` records about this estimator's settings."""
        return dict(ig_steps=None)

    @abstractmethod
    def node_effects(self, splice: "Splice", batch: "PairBatch", method: "Method", patch: "dict[Site, SiteState]",
                     ig_steps: int, max_rows: int, cost: "Cost") -> NodeEffects:
        """One batch (the patch run, ``patch``, already done): clean node values, node gradients (zeros
        for an estimator without them), the clean residual stream per block, the clean metric and every
        pair's node effects."""

    def active_features(self, splice: "Splice", site: "Site", record: "BatchRecord", x: "torch.Tensor",
                        pair: "torch.Tensor") -> "torch.Tensor":
        """``[N, T, F]``: where ``site``'s features are active at the edge pass's rows (its input ``x``,
        ``[N, T, d]``, rows of pairs ``pair``), i.e. where its encoder's Jacobian can be nonzero."""
        return (record.clean[site].features != 0)[pair]

    @abstractmethod
    def node_transient_elements(self, cfg: Any, sites: "dict[Site, tuple[int, int]]", *, B: int, T: int,
                                a: float, ig_steps: int, max_rows: int, active_features: int) -> float:
        """Elements (times the element size: bytes) the node pass holds for a batch beyond its record:
        ``sites`` ``{site: (d, F)}``, ``a`` the activation elements per token and layer, ``active_features``
        the features active per position (see ``featcirc.memory``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True, repr=False)
class Gradient(Estimator):
    """``grad_a m|clean . (a_c - a_p)``: one clean forward and backward per distinct rule set of the
    method (the backward under the method's LRP rules; AtP: none), one patch forward."""

    name: ClassVar[str] = "gradient"

    def node_effects(self, splice, batch, method, patch, ig_steps, max_rows, cost) -> NodeEffects:
        from featcirc.attribution.nodes import _dot, _gradients_by_rules

        clean, grads, resid_pre, m_clean = _gradients_by_rules(splice, batch, method, cost)
        effects = {s: _dot(grads[s], clean[s] - patch[s]) for s in splice.sites}
        return NodeEffects(clean, grads, resid_pre, m_clean, effects)

    def node_transient_elements(self, cfg, sites, *, B, T, a, ig_steps, max_rows, active_features) -> float:
        return B * T * (cfg.n_layers * a + sum(f + 3 * d for d, f in sites.values()))


@dataclass(frozen=True, repr=False)
class Integrated(Estimator):
    """Integrated gradients: ``mean_k grad_a m|(a_c + alpha_k (a_p - a_c)) . (a_c - a_p)``,
    ``alpha_k = k / ig_steps``, one site at a time; the edge Jacobians are averaged over the same points."""

    name: ClassVar[str] = "integrated"

    def path_steps(self, ig_steps: int) -> int:
        return ig_steps

    def info(self, ig_steps: int) -> dict[str, Any]:
        return dict(ig_steps=ig_steps)

    def node_effects(self, splice, batch, method, patch, ig_steps, max_rows, cost) -> NodeEffects:
        from featcirc.attribution.nodes import _dot, _integrated_gradients, _record

        clean, resid_pre, m_clean = _record(splice, batch.clean, batch, cost)
        grads = _integrated_gradients(splice, batch, clean, patch, resid_pre, ig_steps, max_rows, cost)
        effects = {s: _dot(grads[s], clean[s] - patch[s]) for s in splice.sites}
        return NodeEffects(clean, grads, resid_pre, m_clean, effects)

    def active_features(self, splice, site, record, x, pair):
        import torch

        with torch.no_grad():  # features active along the path
            return splice.encode(site, x) != 0

    def node_transient_elements(self, cfg, sites, *, B, T, a, ig_steps, max_rows, active_features) -> float:
        max_d = max(d for d, _ in sites.values())
        max_f = max(f for _, f in sites.values())
        rows = min(B * ig_steps, max(1, max_rows // B) * B)
        return rows * T * (cfg.n_layers * a + 2 * (max_f + max_d) + 2 * (max_f + max_d))


@dataclass(frozen=True, repr=False)
class Exact(Estimator):
    """Activation patching, one node per row of a batched forward from the node's block; no gradients
    (its records carry zeros), hence no edges."""

    name: ClassVar[str] = "exact"
    has_edges: ClassVar[bool] = False

    def node_effects(self, splice, batch, method, patch, ig_steps, max_rows, cost) -> NodeEffects:
        import torch

        from featcirc.attribution.nodes import _exact, _record
        from featcirc.attribution.splice import SiteState

        clean, resid_pre, m_clean = _record(splice, batch.clean, batch, cost)
        effects = _exact(splice, batch, clean, patch, resid_pre, m_clean, max_rows, cost)
        grads = {s: SiteState(None if st.features is None else torch.zeros_like(st.features),
                              torch.zeros_like(st.vector)) for s, st in clean.items()}
        return NodeEffects(clean, grads, resid_pre, m_clean, effects)

    def active_features(self, splice, site, record, x, pair):
        raise TypeError("the exact estimator has no edges")

    def node_transient_elements(self, cfg, sites, *, B, T, a, ig_steps, max_rows, active_features) -> float:
        # rows of one site's variants through the layers after it
        max_d = max(d for d, _ in sites.values())
        max_f = max(f for _, f in sites.values())
        rows = min(max_rows, B * T * (max_f + 1))
        variants = B * T * min(max_f + 1, 2 * active_features + 1)
        return rows * T * (4 * cfg.d_model + 2 * (cfg.d_mlp or 0) + cfg.n_heads * T) + variants * max_d


EXACT = Exact()
GRADIENT = Gradient()
INTEGRATED = Integrated()
