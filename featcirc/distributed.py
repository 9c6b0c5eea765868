"""Data-parallel attribution and evaluation over processes launched by torchrun (docs/design.md §13).

Node and edge scores are sums over pairs divided by the pair count, and faithfulness is a ratio of
means over pairs, so both shard over pairs: each process (rank ``r`` of ``W``) works on a disjoint,
deterministic shard (pair ``i`` of the dataset goes to rank ``i mod W``) and the per-rank sums are
added with one all-reduce::

    sum_i x_i = sum_r sum_{i = r mod W} x_i

``attribute(..., reduce=ctx.reduce)`` all-reduces the node sums before the edge candidates are chosen
(every rank then picks the same candidates from the global scores) and the edge sums before they are
divided; collectives run only at those two points, so ranks may run different numbers of batches.

    with context(device="auto") as ctx:            # a no-op one-process context without torchrun
        model = load_model(name, device=str(ctx.device))
        nodes, edges = ctx.attribute(model, data, "relp", saes, settings=settings)   # data: the FULL set
        ablator = ctx.ablator(model, data, saes=saes, ablation="mean")
        if ctx.is_main:
            nodes.save(...)                        # only rank 0 writes

Backends: NCCL on ``cuda:LOCAL_RANK`` when the model runs on a GPU, gloo on the CPU otherwise.
The gloo path is tested here (2 processes on a CPU); the NCCL path is written to torch's documented
API but untested on this machine (no GPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterable, Mapping, Optional, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from featcirc.attribution.passes import attribute as _attribute
from featcirc.attribution.scores import EdgeScores, NodeScores
from featcirc.attribution.settings import AttributionSettings
from featcirc.attribution.splice import SiteState
from featcirc.data import PairBatch, PairDataset
from featcirc.evaluate.faithfulness import Ablator
from featcirc.models.device import resolve_device
from featcirc.sites import METRIC

__all__ = ["Context", "DistributedError", "ShardedAblator", "context", "shard_dataset", "shard_indices"]

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets for every process it starts (``env://`` rendezvous)."""

DEFAULT_TIMEOUT = timedelta(minutes=30)
"""How long a collective waits for the other ranks (the slowest rank's pass must end within it)."""

Values = TypeVar("Values", np.ndarray, torch.Tensor)


class DistributedError(ValueError):
    """A launch environment, device or data that the processes of a run cannot work with."""


# ------------------------------------------------------------------------------------------------
# Sharding: pure functions of (dataset, rank, world size)
def shard_indices(n_pairs: int, rank: int, world_size: int) -> range:
    """Indices (in dataset order) of the pairs of ``rank``: ``rank, rank + W, rank + 2W, ...``."""
    return range(rank, n_pairs, world_size)


def shard_dataset(data: PairDataset, rank: int, world_size: int, batch_size: Optional[int] = None) -> PairDataset:
    """Rank ``rank``'s shard of ``data``: the pairs ``i`` with ``i mod W == rank``, in dataset order,
    re-batched into batches of one prompt length of at most ``batch_size`` pairs (default: the largest
    batch of ``data``). Shards are disjoint, cover the dataset and differ in size by at most one pair.

    Raises :class:`DistributedError` when there are fewer pairs than processes (a rank with no pair
    could not take part in the collectives): use fewer processes or more pairs.
    """
    if not 0 <= rank < world_size:
        raise DistributedError(f"rank {rank} is outside 0..{world_size - 1}")
    if batch_size is not None and batch_size < 1:
        raise DistributedError(f"batch_size must be >= 1, got {batch_size}")
    if data.n_pairs < world_size:
        raise DistributedError(f"{data.n_pairs} pair(s) cannot be split over {world_size} processes (every "
                               "process needs at least one): use fewer processes (--nproc-per-node) or more pairs")
    batch_size = batch_size or max(b.clean.shape[0] for b in data.batches)
    rows = [(b, j) for b in data.batches for j in range(b.clean.shape[0])]
    if len(rows) != data.n_pairs:
        raise DistributedError(f"the dataset says it holds {data.n_pairs} pairs but its batches hold {len(rows)}")
    mine = [rows[i] for i in shard_indices(len(rows), rank, world_size)]
    batches: list[PairBatch] = []
    run: list[tuple[PairBatch, int]] = []
    for row in mine + [None]:  # runs of equal length and named positions, cut into batches of at most batch_size
        if run and (row is None or row[0].clean.shape[1] != run[0][0].clean.shape[1] or len(run) == batch_size
                    or row[0].positions[row[1]] != run[0][0].positions[run[0][1]]):  # one layout a batch (§14)
            batches.append(_stack(run))
            run = []
        if row is not None:
            run.append(row)
    source = f"{data.source} (shard {rank + 1} of {world_size})" if data.source else f"shard {rank + 1} of {world_size}"
    return PairDataset(batches=batches, n_pairs=len(mine), dropped={}, source=source)


def _stack(rows: Sequence[tuple[PairBatch, int]]) -> PairBatch:
    """One batch from rows ``(batch, index)`` of equal prompt length."""
    take = lambda name: torch.stack([getattr(b, name)[j] for b, j in rows])  # noqa: E731
    return PairBatch(clean=take("clean"), patch=take("patch"), clean_answer=take("clean_answer"),
                     patch_answer=take("patch_answer"), pairs=[b.pairs[j] for b, j in rows],
                     positions=[b.positions[j] for b, j in rows])


def _fingerprint(data: PairDataset) -> int:
    """A 63-bit hash of the dataset's tokens and answers (to check that every rank loaded the same data)."""
    h = hashlib.blake2b(digest_size=8)
    for b in data.batches:
        for t in (b.clean, b.patch, b.clean_answer, b.patch_answer):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().numpy().astype(np.int64).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


# ------------------------------------------------------------------------------------------------
@dataclass
class Context:
    """This process's place in a run: ``rank`` of ``world_size`` (``local_rank`` on its machine), the
    ``device`` it computes on and the collective ``backend`` (``None``: one process, every collective
    is the identity). Build it with :func:`context`; use it as a context manager to :meth:`close` it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: Optional[str] = None
    owns_group: bool = False

    # ---- who am I ----------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        """True when several processes take part (collectives really communicate)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def collective_device(self) -> torch.device:
        """Where tensors must be for a collective: the GPU under NCCL, the CPU under gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ---- data ------------------------------------------------------------------------------------
    def shard(self, data: PairDataset, batch_size: Optional[int] = None) -> PairDataset:
        """This rank's shard of ``data`` (:func:`shard_dataset`), re-batched to ``batch_size`` if given;
        with one process the whole dataset. Checks first that every rank loaded the same data (a clear
        error instead of wrong sums)."""
        if not self.distributed:
            return data if batch_size is None else shard_dataset(data, 0, 1, batch_size)
        prints = self._all_gather_ints([_fingerprint(data), data.n_pairs])
        if len({tuple(p) for p in prints}) > 1:
            raise DistributedError("the processes loaded different prompt pairs (ranks' pair counts: "
                                   f"{[p[1] for p in prints]}); give every process the same --data/--task, "
                                   "--seed and batch size (and the same file on every machine)")
        return shard_dataset(data, self.rank, self.world_size, batch_size)

    # ---- collectives ---------------------------------------------------------------------------
    def reduce(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All-reduce (sum) every tensor of ``sums`` over the ranks, in place, and return ``sums``.

        Keys are taken in sorted order and tensors of one dtype travel in one flat buffer (one
        collective per dtype), moved to the backend's device and back. Every rank must pass the same
        keys with the same shapes: this is checked (a mismatch would otherwise hang or mix up sums).
        This is the ``reduce`` of :func:`featcirc.attribution.attribute`."""
        if not self.distributed:
            return sums
        keys = sorted(sums)
        self._check_same("the sums to reduce", [(k, tuple(sums[k].shape), str(sums[k].dtype)) for k in keys])
        for dtype in sorted({sums[k].dtype for k in keys}, key=str):
            group = [k for k in keys if sums[k].dtype == dtype]
            flat = torch.cat([sums[k].detach().reshape(-1).to(self.collective_device) for k in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for k in group:
                n = sums[k].numel()
                sums[k] = flat[offset:offset + n].view(sums[k].shape).to(sums[k].device)
                offset += n
        return sums

    def gather(self, values: Values) -> Values:
        """Per-pair values of this rank's shard (first axis: the shard's pairs, in shard order) ->
        the whole dataset's, in dataset order, on every rank. Numpy arrays and tensors keep their
        type, dtype and device; the other axes must agree over ranks."""
        if not self.distributed:
            return values
        as_numpy = isinstance(values, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(values)) if as_numpy else values.detach()
        dtype = t.dtype
        work = t.to(torch.uint8) if dtype == torch.bool else t  # not every backend gathers bools
        counts = [c[0] for c in self._all_gather_ints([work.shape[0]])]
        total = sum(counts)
        expected = [len(shard_indices(total, r, self.world_size)) for r in range(self.world_size)]
        if counts != expected:
            raise DistributedError(f"per-rank counts {counts} are not a round-robin split of {total} pairs: "
                                   "gather takes per-pair values of the shards made by Context.shard")
        self._check_same("the values to gather", [tuple(work.shape[1:]), str(dtype)])
        buf = work.new_zeros((max(counts),) + tuple(work.shape[1:]), device=self.collective_device)
        buf[:counts[self.rank]] = work.to(self.collective_device)
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(parts, buf)
        out = work.new_empty((total,) + tuple(work.shape[1:]), device=self.collective_device)
        for r, part in enumerate(parts):
            out[r::self.world_size] = part[:counts[r]]
        out = out.to(t.device).to(dtype)
        return out.numpy() if as_numpy else out

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on every rank."""
        if not self.distributed:
            return bool(flag)
        return all(f[0] for f in self._all_gather_ints([int(bool(flag))]))

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        """Leave the process group (if this context created it). Safe to call twice."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the pipeline, sharded -------------------------------------------------------------------
    def attribute(self, model, data: PairDataset, method="relp", saes: Optional[Mapping[str, object]] = None, *,
                  edges: bool = True, settings: Optional[AttributionSettings] = None,
                  batch_size: Optional[int] = None, alignment=None) -> tuple[NodeScores, Optional[EdgeScores]]:
        """:func:`featcirc.attribution.attribute` on this rank's shard of ``data`` (the FULL dataset,
        identical on every rank; re-batched to ``batch_size`` if given), with the sums all-reduced:
        every rank returns the scores of the whole dataset. Per-pair effects (``settings.pair_effects``)
        are gathered into dataset order; costs add the ranks' passes (``seconds``: the slowest rank).
        Progress shows on rank 0 only."""
        settings = settings or AttributionSettings()
        settings = dataclasses.replace(settings, progress=settings.progress and self.is_main)
        nodes, edge_scores = _attribute(model, self.shard(data, batch_size), method, saes, edges=edges,
                                        settings=settings,
                                        reduce=self.reduce if self.distributed else None,
                                        n_positions=data.max_len, alignment=alignment)
        if not self.distributed:
            return nodes, edge_scores
        if nodes.pair_effects is not None:
            nodes.pair_effects = {s: (None if f is None else self.gather(f), self.gather(v))
                                  for s, (f, v) in nodes.pair_effects.items()}  # same site order on every rank
        for scores in (nodes, edge_scores):
            if scores is not None:
                self._reduce_cost(scores.cost)
        return nodes, edge_scores

    def ablator(self, model, data: PairDataset, **kwargs) -> Ablator:
        """An :class:`~featcirc.evaluate.faithfulness.Ablator` over ``data`` (the FULL dataset):
        a :class:`ShardedAblator` with several processes, a plain one otherwise. ``kwargs`` are the
        Ablator's (``level``, ``saes``, ``sites``, ``ablation``, ``progress``)."""
        kwargs["progress"] = kwargs.get("progress", True) and self.is_main
        if not self.distributed:
            return Ablator(model, data, **kwargs)
        return ShardedAblator(self, model, data, **kwargs)

    # ---- helpers -------------------------------------------------------------------------------
    def _reduce_cost(self, cost) -> None:
        """Passes summed over ranks; seconds: the slowest rank's."""
        passes = self.reduce({"passes": torch.tensor([cost.forward_passes, cost.backward_passes],
                                                     dtype=torch.float64)})["passes"]
        seconds = torch.tensor([cost.seconds], dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        cost.forward_passes, cost.backward_passes = (int(x) for x in passes.tolist())
        cost.seconds = float(seconds.item())

    def _all_gather_ints(self, ints: Sequence[int]) -> list[list[int]]:
        """Every rank's list of ``len(ints)`` integers (same length on every rank)."""
        t = torch.tensor(list(ints), dtype=torch.int64, device=self.collective_device)
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t)
        return [p.cpu().tolist() for p in parts]

    def _check_same(self, what: str, signature: object) -> None:
        """Raise when ``signature`` differs between ranks (e.g. the keys and shapes of the sums)."""
        digest = hashlib.blake2b(repr(signature).encode(), digest_size=8).digest()
        mine = int.from_bytes(digest, "little") >> 1
        seen = {p[0] for p in self._all_gather_ints([mine])}
        if len(seen) > 1:
            raise DistributedError(f"the ranks disagree on {what} (rank {self.rank}: {signature!r}); every "
                                   "process must run the same code on the same data and settings")


# ------------------------------------------------------------------------------------------------
def context(device: "str | torch.device" = "auto", *, timeout: timedelta = DEFAULT_TIMEOUT) -> Context:
    """This process's :class:`Context`, from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Without torchrun (or with one process) it is a one-process context on ``device``
    (``auto | cpu | cuda | cuda:N``, :func:`featcirc.models.device.resolve_device`) and nothing is
    initialised. With several processes: a GPU ``device`` (``auto`` on a machine with CUDA, or
    ``cuda``) means ``cuda:LOCAL_RANK`` and the NCCL backend; ``cpu`` means gloo. A process group
    that the caller already initialised is used as it is (and left open by :meth:`Context.close`).
    """
    env = os.environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return Context(device=resolve_device(str(device)))
    rank, world, local = (_env_int(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent: launch with torchrun "
                               "(torchrun --nproc-per-node N -m featcirc ...)")
    if world == 1:
        return Context(device=resolve_device(str(device)))
    spec = str(device).strip().lower()
    wanted = resolve_device(spec)
    if wanted.type == "cuda":
        if spec.startswith("cuda:") and wanted.index != local:
            raise DistributedError(f"device {device} under torchrun: every process uses cuda:LOCAL_RANK "
                                   f"(this one cuda:{local}); pass --device cuda or auto")
        n_gpus = torch.cuda.device_count()
        if local >= n_gpus:
            raise DistributedError(f"LOCAL_RANK={local} but this machine has {n_gpus} GPU(s): start at most "
                                   f"{n_gpus} processes per machine (--nproc-per-node {n_gpus})")
        wanted, backend = torch.device(f"cuda:{local}"), "nccl"
    else:
        backend = "gloo"
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world:
            raise DistributedError(f"a process group is already initialised as rank {dist.get_rank()} of "
                                   f"{dist.get_world_size()}, but the environment says {rank} of {world}")
        return Context(rank, world, local, wanted, dist.get_backend(), owns_group=False)
    missing = [name for name in ENV_VARS if name not in env]
    if missing:
        raise DistributedError(f"{', '.join(missing)} not set: launch the processes with torchrun, which sets "
                               "them (torchrun --nproc-per-node N -m featcirc ...)")
    if backend == "nccl":
        torch.cuda.set_device(wanted)
        dist.init_process_group("nccl", init_method="env://", rank=rank, world_size=world, timeout=timeout,
                                device_id=wanted)
    else:
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world, timeout=timeout)
    return Context(rank, world, local, wanted, backend, owns_group=True)


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise DistributedError(f"{name} is not set (RANK, WORLD_SIZE and LOCAL_RANK go together): launch the "
                               "processes with torchrun (torchrun --nproc-per-node N -m featcirc ...)")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer; launch with torchrun") from None


# ------------------------------------------------------------------------------------------------
class ShardedAblator(Ablator):
    """An :class:`~featcirc.evaluate.faithfulness.Ablator` that runs this rank's shard of ``data`` (the
    FULL dataset) and answers for the whole dataset: per-pair metric values are gathered into dataset
    order (so ``m(M)``, ``m(∅)``, ``F(C)``, completeness, curves and bootstrap intervals are the
    single-process ones), mean-ablation values are per-position means over every rank's patch prompts,
    and :meth:`holds_final_site` holds on every rank. Every rank must make the same calls.

    ``resample`` ablation pairs each prompt with its batch neighbour, which depends on how the data is
    split, so it is refused with several processes.
    """

    def __init__(self, ctx: Context, model, data: PairDataset, *, ablation: str = "mean", **kwargs) -> None:
        if ablation == "resample" and ctx.distributed:
            raise DistributedError("resample ablation pairs each prompt with its batch neighbour, which depends "
                                   "on how the data is split over processes: evaluate it with one process, or "
                                   "use --ablation mean, zero or patch")
        alignment = kwargs.get("alignment")
        if alignment is not None and alignment.mode not in ("start", "sum"):  # slots and pair order of the FULL data
            from featcirc.data.align import align

            kwargs["alignment"] = alignment = alignment.extended(data)
            data = align(data, alignment)
        self.ctx, self.full_data = ctx, data
        self._gathered: dict[tuple[str, Optional[frozenset]], np.ndarray] = {}
        super().__init__(model, ctx.shard(data), ablation=ablation, **kwargs)

    @property
    def pairs(self):
        """Every pair of the dataset, in the order of the per-pair arrays."""
        return [p for b in self.full_data.batches for p in b.pairs]

    def metric_values(self, keep: Optional[Iterable[str]]) -> np.ndarray:
        key = ("keep", None if keep is None else _node_set(keep))
        if key not in self._gathered:
            self._gathered[key] = self.ctx.gather(super().metric_values(keep))
        return self._gathered[key]

    def completeness_values(self, nodes: Iterable[str]) -> np.ndarray:
        key = ("ablate", _node_set(nodes))
        if key not in self._gathered:
            self._gathered[key] = self.ctx.gather(super().completeness_values(nodes))
        return self._gathered[key]

    def holds_final_site(self, nodes: Iterable[str]) -> bool:
        return self.ctx.all_true(super().holds_final_site(nodes))

    def _mean_values(self) -> dict[str, SiteState]:
        """Per-position means over the patch prompts of every rank: this shard's means times its
        counts, zero-padded to the dataset's longest prompt, summed over ranks, divided by the counts."""
        local = super()._mean_values()
        T = self.full_data.max_len if self.alignment is None else self.alignment.n_slots
        count = torch.zeros(T)
        for b in self.data.batches:
            index = self._index(b)
            count[torch.arange(b.clean.shape[1]) if index is None else index] += b.clean.shape[0]

        def padded_sum(mean: torch.Tensor) -> torch.Tensor:
            t = mean.shape[0]
            out = mean.new_zeros((T,) + tuple(mean.shape[1:]))
            out[:t] = mean * count[:t, None].to(mean)
            return out

        sums = {"count": count}
        for s, st in local.items():
            sums[f"{s}.vector"] = padded_sum(st.vector)
            if st.features is not None:
                sums[f"{s}.features"] = padded_sum(st.features)
        self.ctx.reduce(sums)
        c = sums["count"].clamp(min=1)[:, None]
        return {s: SiteState(None if st.features is None else sums[f"{s}.features"] / c.to(st.features),
                             sums[f"{s}.vector"] / c.to(st.vector)) for s, st in local.items()}


def _node_set(nodes: Iterable[str]) -> frozenset:
    return frozenset(n for n in nodes if n != METRIC)
