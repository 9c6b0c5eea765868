"""Pruners: how a circuit is chosen from the scored graph (docs/design.md §8).

- ``threshold``: the nodes of largest ``|score|`` (:func:`featcirc.circuit.prune`); needs no model.
- ``mask``: a mask over the candidate nodes learned on the discovery pairs under an ablation
  (:mod:`featcirc.pruning.mask`); needs the model, its SAEs and the pairs.

Both end the same way (:func:`featcirc.circuit.circuit_from_nodes`): edges among the kept nodes from the
edge scores, dead ends dropped. Names are listed here without importing torch.
"""

from __future__ import annotations

from featcirc.vocabulary import MASK_ABLATIONS, PRUNERS  # noqa: F401  (re-exported: --prune, --mask-ablation)

__all__ = ["PRUNERS", "MASK_ABLATIONS"]
