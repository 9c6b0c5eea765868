"""Attribution: node and edge scores of a model with SAEs spliced in (docs/design.md §4-§7).

``attribute(model, data, method, saes, *, edges=True, settings=AttributionSettings(...))`` returns
``(NodeScores, EdgeScores | None)``; ``method`` is a name of the registry (:func:`method_names`).
Modules: ``methods`` (the registry and LRP rule choices), ``estimators`` (what each method's
estimator does: node effects, edge-pass steps, memory), ``splice`` (SAEs with error nodes),
``rules`` (LRP rules as hooks), ``nodes`` (per-batch node effects), ``candidates``, ``edges`` (the
vectorised edge pass), ``reference`` (the per-node oracle), ``passes`` (the two passes), ``scores``.
Names are imported lazily, so listing methods does not import torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "attribute": "passes", "AttributionSettings": "settings", "Method": "methods", "LRPRules": "methods",
    "get_method": "methods", "method_names": "methods", "parse_methods": "methods", "register": "methods",
    "UnknownMethodError": "methods", "NodeScores": "scores", "EdgeScores": "scores", "Cost": "scores",
}
__all__ = sorted(_LAZY) + ["DEFAULT_MAX_NODES"]

DEFAULT_MAX_NODES = 4000
"""Candidates of the edge pass (``--max-nodes``): the pool any circuit is chosen from. 4,000 lets the whole
pool reach F >= 0.9 under patch ablation on tiny SVA and IOI and on Gemma-3-270M SVA (1,000 did not on IOI
and Gemma; ``experiments/candidate_pool.py``), at about 2.5x the attribution time of 1,000 on Gemma."""


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"featcirc.attribution.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'featcirc.attribution' has no attribute {name!r}")
