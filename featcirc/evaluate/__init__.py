"""Evaluation: faithfulness and completeness of circuits, agreement between methods.

- :mod:`~featcirc.evaluate.faithfulness`: the :class:`Ablator` (mean / zero / resample / patch
  ablation; per-pair metric values, cached per circuit).
- :mod:`~featcirc.evaluate.curves`: curves over thresholds, sizes and MIB's fractions, with
  bootstrap intervals, CPR / CMD and an exported circuit (:func:`evaluate_curves`).
- :mod:`~featcirc.evaluate.metrics`: CPR, CMD and the log-grid curve area.
- :mod:`~featcirc.evaluate.bootstrap`: percentile intervals from resampled pairs (faithfulness,
  curve areas, correlations).
- :mod:`~featcirc.evaluate.stats`: per-pair score cells and correlations.
- :mod:`~featcirc.evaluate.figure`: the faithfulness figure.
"""

from featcirc.vocabulary import ABLATIONS  # noqa: F401  (re-exported: the values nodes outside a circuit take, §9)
