"""What a scoring run cost (a dataclass the node and edge passes fill and the score files keep)."""

from __future__ import annotations

from dataclasses import dataclass


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
