"""How the token positions of pairs of different lengths or templates line up (docs/design.md §14).

Per-position scores live on *slots* ``0..S-1``. An :class:`Alignment` maps every token position of a
batch to its slot; all pairs of a batch share the map (:func:`align` splits batches so that they do),
and the map is injective (one token per slot and pair), so a node at a slot is one token of every
pair that has the slot: scores, edges and ablation stay per token.

- ``start`` (featcirc's behaviour before alignments existed): slot = position; labels ``0, 1, ...``.
- ``end``: slot counted back from the last token (where the metric is read); labels ``END-k``, ``END``.
- ``role``: named positions (docs/design.md §2) line up by role; an unnamed token takes the slot of
  its offset from the nearest named token before it (``S1+1``, ``IO+3``), tokens before the first
  named one keep their start position (``0``, ``1``). Labels: the role or the offset.
- ``sum``: positions summed (``aggregation="sum"``): no slots.

Slots are ordered by their mean relative position over the pairs (ties by label), so the columns of
a drawing read left to right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from featcirc.data.pairs import END, PairBatch, PairDataset
from featcirc.vocabulary import ALIGN_CHOICES, ALIGNMENTS

if TYPE_CHECKING:
    import torch



def token_labels(mode: str, T: int, positions: dict[str, int]) -> list[str]:
    """The slot label of each of a prompt's ``T`` tokens under ``mode`` (``start``, ``end`` or ``role``)."""
    if mode == "start":
        return [str(t) for t in range(T)]
    if mode == "end":
        return [END if t == T - 1 else f"{END}-{T - 1 - t}" for t in range(T)]
    if mode != "role":
        raise ValueError(f"no per-token labels for alignment {mode!r}")
    at = {i: r for r, i in positions.items()}
    out, last = [], None
    for t in range(T):
        if t in at:
            last = t
            out.append(at[t])
        elif last is None:
            out.append(str(t))
        else:
            out.append(f"{at[last]}+{t - last}")
    return out


def _signature(batch: PairBatch, j: int) -> tuple:
    return tuple(sorted(batch.positions[j].items(), key=lambda x: x[1]))


@dataclass
class Alignment:
    """Slots and the map from each batch's token positions to them (see the module docstring)."""

    mode: str
    slots: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def summed(self) -> bool:
        return self.mode == "sum"

    def labels(self, batch: PairBatch) -> list[str]:
        """The slot label of each token of ``batch`` (all its pairs share them)."""
        return token_labels(self.mode, int(batch.clean.shape[1]), batch.positions[0] if batch.positions else {})

    def index(self, batch: PairBatch) -> "torch.Tensor":
        """``[T]`` the slot of each token position of ``batch``."""
        import torch

        labels = self.labels(batch)
        missing = [x for x in labels if x not in self._index]
        if missing:
            raise ValueError(f"alignment {self.mode!r} has no slot {missing[0]!r}: the alignment was made "
                             "from other pairs than these")
        return torch.tensor([self._index[x] for x in labels], dtype=torch.long)

    def extended(self, data: PairDataset) -> "Alignment":
        """This alignment with slots appended for the token labels of ``data`` it lacks (e.g. held-out
        pairs of another template): no node of a scored run sits at those slots."""
        if self.mode in ("sum", "start"):
            return self
        # every pair's labels: a batch not yet split by align() may hold pairs of several layouts
        new = [x for b in data.batches for pos in (b.positions or [{}])
               for x in token_labels(self.mode, int(b.clean.shape[1]), pos) if x not in self._index]
        return Alignment.of(self.mode, self.slots + list(dict.fromkeys(new))) if new else self

    def to_json(self) -> dict:
        return dict(mode=self.mode, slots=list(self.slots))

    @classmethod
    def of(cls, mode: str, slots: list[str]) -> "Alignment":
        return cls(mode, list(slots), {s: i for i, s in enumerate(slots)})


def make_alignment(data: PairDataset, mode: str) -> Alignment:
    """The slots of ``data`` under ``mode`` (``start | end | role | sum``); ``role`` needs every pair to
    name its positions (``data.named``). ``start`` gives ``0..max_len-1`` as before."""
    if mode not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {mode!r}; choose one of {', '.join(ALIGNMENTS)}")
    if mode == "sum":
        return Alignment("sum")
    if mode == "start":
        return Alignment.of("start", [str(t) for t in range(data.max_len)])
    if mode == "end":
        T = data.max_len
        return Alignment.of("end", [END if t == T - 1 else f"{END}-{T - 1 - t}" for t in range(T)])
    if not data.named:
        raise ValueError("alignment by role needs every pair to name its positions (the 'positions' key "
                         "of the JSONL, docs/design.md §2)")
    where: dict[str, list[float]] = {}
    for b in data.batches:
        T = int(b.clean.shape[1])
        for pos in b.positions:
            for t, label in enumerate(token_labels("role", T, pos)):
                where.setdefault(label, []).append(t / max(1, T - 1))
    slots = sorted(where, key=lambda s: (sum(where[s]) / len(where[s]), s))
    return Alignment.of("role", slots)


def align(data: PairDataset, alignment: Alignment) -> PairDataset:
    """``data`` with batches split so that every batch's pairs share one token-to-slot map (only
    ``role`` can need it: pairs of one length may name different positions). Order is kept within
    a batch; other alignments return ``data`` itself."""
    if alignment.mode != "role":
        return data
    import torch

    batches: list[PairBatch] = []
    for b in data.batches:
        groups: dict[tuple, list[int]] = {}
        for j in range(int(b.clean.shape[0])):
            groups.setdefault(_signature(b, j), []).append(j)
        if len(groups) == 1:
            batches.append(b)
            continue
        for rows in groups.values():
            idx = torch.tensor(rows, dtype=torch.long, device=b.clean.device)
            batches.append(PairBatch(clean=b.clean[idx], patch=b.patch[idx], clean_answer=b.clean_answer[idx],
                                     patch_answer=b.patch_answer[idx], pairs=[b.pairs[j] for j in rows],
                                     positions=[b.positions[j] for j in rows]))
    return PairDataset(batches=batches, n_pairs=data.n_pairs, dropped=data.dropped, source=data.source,
                       unknown_words=data.unknown_words, dropped_positions=data.dropped_positions)


def describe(data: PairDataset) -> Optional[str]:
    """One line when start-aligned per-position scores would mix different tokens (several lengths, or
    named positions that differ between pairs), else None."""
    lengths = data.lengths
    sigs = {_signature(b, j) for b in data.batches for j in range(len(b.positions))}
    if len(lengths) > 1:
        return f"the pairs have {len(lengths)} prompt lengths ({', '.join(map(str, lengths))} tokens)"
    if len(sigs) > 1 and data.named:
        return f"the pairs name their positions at {len(sigs)} different token layouts"
    return None




@dataclass
class AlignmentChoice:
    """What ``--align`` resolved to for a dataset: the mode, why, and the one-line warning (or None)."""

    mode: str
    requested: str
    reason: str
    warning: Optional[str] = None

    def to_json(self, alignment: Optional[Alignment] = None) -> dict:
        d = dict(mode=self.mode, requested=self.requested, reason=self.reason, warning=self.warning)
        if alignment is not None and not alignment.summed:
            d["slots"] = list(alignment.slots)
        return d


def resolve_alignment(data: PairDataset, requested: str = "auto", aggregation: str = "none") -> AlignmentChoice:
    """``--align`` for ``data`` (docs/design.md §14). ``auto``: ``sum`` with ``--aggregation sum``, else
    ``start`` when the pairs share one length and layout (as always: the same slots as ``role``), else
    ``role`` when every pair names its positions, else ``end`` with a one-line warning (columns from the start would mix tokens). An explicit
    ``start`` over such pairs warns too. ``role`` without named positions is a ``ValueError``."""
    if requested not in ALIGN_CHOICES:
        raise ValueError(f"unknown --align {requested!r}; choose one of {', '.join(ALIGN_CHOICES)}")
    if aggregation == "sum" and requested not in ("auto", "sum"):
        raise ValueError(f"--aggregation sum sums positions; it does not go with --align {requested}")
    mixed = describe(data)
    if requested == "auto":
        if aggregation == "sum":
            return AlignmentChoice("sum", requested, "--aggregation sum")
        if mixed is None:
            return AlignmentChoice("start", requested, "every pair has the same length and layout of named positions"
                                   if data.named else "every pair has the same length")
        if data.named:
            return AlignmentChoice("role", requested, f"{mixed} and every pair names its positions")
        return AlignmentChoice("end", requested, f"{mixed} and name no positions", warning=(
            f"{mixed} and name no positions: per-position scores are aligned from the end (the answer "
            "position lines up; columns are END-k, not the example's tokens); --align sum sums positions, "
            "or name positions in the data (docs/design.md §2)"))
    if requested == "role" and not data.named:
        raise ValueError("--align role needs every pair to name its positions (the 'positions' key of the pairs "
                         "file, docs/design.md §2); these pairs do not: use --align end or --align sum")
    warning = None
    if requested == "start" and mixed is not None:
        warning = (f"{mixed}: --align start lines them up from the start, so a column mixes different tokens "
                   "(use --align end, sum or role)")
    return AlignmentChoice(requested, requested, "--align", warning)


_NOTES = {"end": "positions aligned from the end", "role": "positions aligned by role",
          "sum": "positions summed"}


def title_note(mode: Optional[str]) -> str:
    """`` · positions aligned by role`` (etc.) for titles; empty for ``start`` or unknown."""
    return f" \u00b7 {_NOTES[mode]}" if mode in _NOTES else ""


def alignment_of(info: Optional[dict]) -> Optional[Alignment]:
    """The :class:`Alignment` recorded in ``NodeScores.info["align"]`` (None: a run from before, start)."""
    d = (info or {}).get("align")
    if not isinstance(d, dict) or d.get("mode") not in ALIGNMENTS:
        return None
    return Alignment("sum") if d["mode"] == "sum" else Alignment.of(d["mode"], [str(x) for x in d.get("slots", [])])
