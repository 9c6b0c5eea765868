"""Which LRP rules a backward pass uses (docs/design.md §6): a torch-free dataclass shared by the method
registry (each method carries one) and the rules' hooks (:mod:`featcirc.attribution.rules`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LRPRules:
    """Which rules are on. ``LRPRules()`` is RelP; ``LRPRules.none()`` is plain gradients (AtP)."""

    ln: bool = True
    attention: bool = True
    activation: bool = True
    gate: bool = True

    @classmethod
    def none(cls) -> "LRPRules":
        return cls(False, False, False, False)

    @property
    def any(self) -> bool:
        return self.ln or self.attention or self.activation or self.gate
