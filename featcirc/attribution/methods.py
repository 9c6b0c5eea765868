"""The registry of attribution methods: what the CLI, the settings and ``compare`` choose from.

A method is an *estimator* of the effect of a node (docs/design.md §5), an object of
:mod:`featcirc.attribution.estimators` that carries its implementation, plus the LRP rules its
backward pass uses:

- ``EXACT``: activation patching, node by node (no gradients, no edges);
- ``GRADIENT``: ``grad m |clean . (a_c - a_p)`` with the backward under ``rules`` (AtP: no rules;
  RelP: the LRP rules);
- ``INTEGRATED``: integrated gradients along the straight line from clean to patch values.

Adding a method is one :func:`register` call (a new estimator: one :class:`Estimator` subclass more);
nothing else names methods or branches on estimators.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from featcirc.attribution.estimators import EXACT, GRADIENT, INTEGRATED, Estimator
from featcirc.attribution.rule_set import LRPRules  # noqa: F401  (re-exported: a method carries its rules)


class UnknownMethodError(ValueError):
    """A method name that is not in the registry."""


@dataclass(frozen=True)
class Method:
    """A registered attribution method: ``estimator`` (an :class:`Estimator` object) does the work.

    ``overrides``: per-node rule choices for gradient estimators, ``((selector, rules), ...)``; a selector
    ``"<site kind>/<node kind>"`` (``*`` matches any; e.g. ``"attn/*"``, ``"*/feature"``) picks the rules
    whose backward pass gives those nodes' gradients (first match wins, else ``rules``). Each distinct
    rule set costs one more clean forward and backward. Edge Jacobians use ``rules``.
    """

    name: str
    estimator: Estimator
    rules: LRPRules = field(default_factory=LRPRules.none)
    description: str = ""
    overrides: tuple[tuple[str, LRPRules], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.estimator, Estimator):
            raise TypeError(f"method {self.name!r}: estimator must be an Estimator object "
                            f"(featcirc.attribution.estimators), got {type(self.estimator).__name__}")

    @property
    def has_edges(self) -> bool:
        """Whether edge scores exist for this method (every estimator with gradients)."""
        return self.estimator.has_edges

    def rules_for(self, site_kind: str, node_kind: str) -> LRPRules:
        """The rules whose gradient scores nodes of that kind at sites of that kind."""
        for selector, rules in self.overrides:
            want_site, _, want_node = selector.partition("/")
            if want_site in ("*", site_kind) and want_node in ("*", "", node_kind):
                return rules
        return self.rules


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get_method(method: "str | Method") -> Method:
    """The registered method of that name (a ``Method`` is returned as is)."""
    if isinstance(method, Method):
        return method
    try:
        return _REGISTRY[method]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {method!r}; choose one of {', '.join(method_names())}") from None


def method_names(*, with_edges: bool = False) -> tuple[str, ...]:
    """Registered method names in registration order (only those with edge scores if asked)."""
    return tuple(n for n, m in _REGISTRY.items() if m.has_edges or not with_edges)


def parse_methods(text: str, *, with_edges: bool = False) -> list[str]:
    """A comma-separated list of method names, checked against the registry before any work starts."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UnknownMethodError(f"no method given; choose from {', '.join(method_names())}")
    for name in names:
        m = get_method(name)
        if with_edges and not m.has_edges:
            raise UnknownMethodError(f"method {name!r} has no edge scores; choose from "
                                     f"{', '.join(method_names(with_edges=True))}")
    return list(dict.fromkeys(names))


register(Method("exact", EXACT, description="activation patching, one node at a time"))
register(Method("atp", GRADIENT, LRPRules.none(), "attribution patching: plain gradient x delta"))
register(Method("relp", GRADIENT, LRPRules(), "relevance patching: gradient x delta under the LRP rules"))
register(Method("ig", INTEGRATED, LRPRules.none(), "integrated gradients, one site at a time"))
# RelP with one rule left out (measured by experiments/rule_variants.py)
register(Method("relp-no-ln", GRADIENT, LRPRules(ln=False), "RelP without the LN-rule"))
register(Method("relp-no-ah", GRADIENT, LRPRules(attention=False), "RelP without the AH-rule"))
register(Method("relp-no-act", GRADIENT, LRPRules(activation=False), "RelP without the identity rule"))
register(Method("relp-no-half", GRADIENT, LRPRules(gate=False), "RelP without the half-rule"))
# per-node rule choices (experiments/rule_variants.py measures them)
register(Method("relp-attn-grad", GRADIENT, LRPRules(),
                "RelP, but attention-output nodes scored without the AH-rule",
                overrides=(("attn/*", LRPRules(attention=False)), ("z/*", LRPRules(attention=False)))))
register(Method("relp-feat-grad", GRADIENT, LRPRules(),
                "RelP for error and component nodes, plain gradients (AtP) for SAE features",
                overrides=(("*/feature", LRPRules.none()),)))
