"""Peak memory of an attribution run, estimated from shapes, and the batch settings that fit a budget.

:func:`estimate_peak_bytes` adds up what :func:`featcirc.attribution.attribute` holds at its peak
(on the model's device; on a CPU, resident memory)::

    peak = model weights + SAE weights + max(node phase, edge phase)
    node phase = one batch's node pass + the records kept from earlier batches
    edge phase = one batch's edge pass + the records kept for it + the SAE direction caches

- *model weights*, *SAE weights*: the parameters (``E`` bytes an element of the model's dtype; a
  transcoder's ``d_in d_sae + d_sae d_out`` and a skip transcoder's ``W_skip``).
- sites: ``d`` is a site vector's width and ``F`` its SAE's features; a transcoder site ``tc.L``
  holds the MLP's output (``d = d_out``, d_model) and has the transcoder's ``d_sae`` features.
- *SAE direction caches*: decoder and encoder directions ``[F, d]`` per site, cached by the splice
  for the edge pass.
- *node pass* (one batch of ``B`` pairs, ``T`` positions): the batch's record (clean, patch, gradient
  and effect states per site, ``B T (4F + 3d + 1)``, plus the residual stream entering every block,
  ``B T L d_model``) and the activations saved for the backward pass, ``B T (L a + sum_s (F + 3d))``
  with ``a`` the elements saved per token and layer (``a = c_d d_model + c_m d_mlp + 1.25 H T
  + 8 H d_head``; ``c_d, c_m`` measured on GPT-2- and Gemma-3-style blocks with the LRP rules, see
  :func:`activation_elements`). IG runs ``min(B S, max_rows)`` rows (``S`` steps), exact patching
  ``max_rows`` rows without gradients. Each estimator gives its own working memory
  (``Estimator.node_transient_elements``, featcirc/attribution/estimators.py).
- *kept records*: the node pass keeps every batch's record for the edge pass while they fit in
  ``record_bytes`` (256 MiB); beyond it they are dropped and the edge pass recomputes each batch's node
  pass (then the edge phase holds one node pass instead of the records).
- *edge pass* (one batch, the most demanding downstream site, the ``max_nodes`` candidates spread
  evenly over the sites, ``n_d`` at a site): the group's forward over ``N = B S`` rows with leaves
  (``S`` IG steps, else 1: ``Estimator.path_steps``), the pulled-back rows ``N n_d (T or 1) d``, the packed cotangents
  ``[K, N, T, d]`` with ``K = min(max_rows, _BUDGET / (N T d), n_d)`` (``n_d / T`` when positions share
  a cotangent; edges.py's ``_pack``), the batched backward (``K`` copies of one layer's gradients,
  :func:`backward_elements`, plus one ``[K, N, T, d]`` pull-back per parent site; none where the
  Jacobian is the identity), the projection on the upstream candidates and the ``max_nodes^2`` sums.
- *runtime*: the framework's own memory (kernels' workspaces, a CUDA context on a GPU).

On the tiny-model runs of ``tests/test_memory.py`` the estimate is about 0.95x and 1.8x the
measured peak resident-memory growth. It leans towards overestimating, most with thousands of edge
candidates (how many of them share a backward depends on which features are active together, which
only the data decides), and it ignores allocator fragmentation.
:func:`fit_to_budget` picks the largest ``batch_size``, then the largest ``max_rows`` (the edge pass's
rows per backward: results do not depend on it) whose estimate fits ``--max-memory``, then gives what
is left to ``record_bytes``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any, Mapping, Optional

import torch

from featcirc.attribution import DEFAULT_MAX_NODES
from featcirc.attribution.edges import _BUDGET, edge_groups
from featcirc.attribution.methods import get_method
from featcirc.sites import Site, all_sites

__all__ = ["MemoryBudgetError", "MemoryEstimate", "BudgetFit", "activation_elements", "backward_elements",
           "estimate_peak_bytes",
           "fit_to_budget", "format_bytes", "model_weight_bytes", "parse_bytes"]

RECORD_BYTES = 1 << 28
"""``AttributionSettings.record_bytes``'s default."""


class MemoryBudgetError(ValueError):
    """No batch settings fit the memory budget."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one attribution run, by part (see the module doc). The node pass and
    the edge pass do not overlap: ``total = weights + max(node phase, edge phase)``."""

    model_weights: int
    sae_weights: int
    runtime: int  # the framework's own: allocator pools, kernels' workspaces (a CUDA context on a GPU)
    node_pass: int  # one batch: its record, activations saved for the backward pass, accumulators
    node_pass_records: int  # earlier batches' records kept while the node pass runs
    edge_pass: int  # one batch's edge temporaries (+ its node pass when records are recomputed)
    edge_pass_records: int  # records kept from the node pass (0 when the edge pass recomputes them)
    sae_directions: int  # decoder and encoder directions cached by the splice for the edge pass

    @property
    def node_phase(self) -> int:
        return self.node_pass + self.node_pass_records

    @property
    def edge_phase(self) -> int:
        return self.edge_pass + self.edge_pass_records + self.sae_directions

    @property
    def total(self) -> int:
        return self.model_weights + self.sae_weights + self.runtime + max(self.node_phase, self.edge_phase)

    def breakdown(self) -> dict[str, int]:
        """Every part and the ``total``, in bytes."""
        return {**{f.name: int(getattr(self, f.name)) for f in fields(self)}, "total": self.total}

    def __str__(self) -> str:
        parts = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in self.breakdown().items()
                          if k != "total")
        return f"{format_bytes(self.total)} ({parts})"


@dataclass(frozen=True)
class BudgetFit:
    """Settings that fit a budget, with their estimate."""

    batch_size: int
    max_rows: int
    record_bytes: int
    estimate: MemoryEstimate


# ------------------------------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: "str | int") -> int:
    """``'20GB'``, ``'1.5GiB'``, ``'800M'``, ``'123456'`` -> bytes (SI units decimal, ``*iB`` binary)."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"not a memory size: {text!r}; write e.g. 20GB, 1.5GiB, 800MB or a number of bytes")
        value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------
def _element_bytes(cfg: Any) -> int:
    dtype = getattr(cfg, "dtype", torch.float32)
    return torch.tensor([], dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 4


def model_weight_bytes(cfg: Any) -> int:
    """Bytes of a TransformerLens model's parameters, from its config (embedding, positions, blocks
    with grouped-query attention and gated MLPs, norms, unembedding)."""
    d, L, H, dh, V = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_vocab
    kv = getattr(cfg, "n_key_value_heads", None) or H
    attn = d * H * dh * 2 + d * kv * dh * 2 + H * dh * 2 + kv * dh * 2 + d
    mlp = 0
    if not getattr(cfg, "attn_only", False) and cfg.d_mlp:
        mlp = d * cfg.d_mlp * (3 if getattr(cfg, "gated_mlp", False) else 2) + cfg.d_mlp + d
    norms = 8 * d if getattr(cfg, "use_normalization_before_and_after", False) else 4 * d
    pos = cfg.n_ctx * d if getattr(cfg, "positional_embedding_type", "standard") == "standard" else 0
    elements = V * d + pos + L * (attn + mlp + norms) + 2 * d + d * V + V
    return int(elements * _element_bytes(cfg))


def activation_elements(cfg: Any, n_positions: int) -> float:
    """Elements saved for the backward pass per token and layer of a forward with gradients (LRP
    rules included): ``c_d d_model + c_m d_mlp + 1.25 H T + 8 H d_head``, with ``c_d = 8, c_m = 3``
    (GPT-2-style LayerNorm block) or ``c_d = 18, c_m = 8`` (Gemma-style: norms before and after, gated
    MLP), read off ``torch.autograd.graph.saved_tensors_hooks`` on random blocks of both families."""
    post_norms = bool(getattr(cfg, "use_normalization_before_and_after", False))
    c_d = 18 if post_norms else 8
    c_m = 8 if getattr(cfg, "gated_mlp", False) else 3
    d_mlp = 0 if getattr(cfg, "attn_only", False) else (cfg.d_mlp or 0)
    return c_d * cfg.d_model + c_m * d_mlp + 1.25 * cfg.n_heads * n_positions + 8 * cfg.n_heads * cfg.d_head


def _widths(sae: Any) -> tuple[int, int, int]:
    """``(d_in, d_sae, d_out)`` of an SAE or transcoder, or of a tuple ``(d_in, d_sae)`` /
    ``(d_in, d_sae, d_out)``; ``d_out = d_in`` for an SAE."""
    if isinstance(sae, (tuple, list)):
        if len(sae) not in (2, 3):
            raise ValueError(f"an SAE's shape is (d_in, d_sae) or, for a transcoder, (d_in, d_sae, d_out); got {sae!r}")
        return int(sae[0]), int(sae[1]), int(sae[-1] if len(sae) == 3 else sae[0])
    d_out = getattr(sae.cfg, "d_out", None)
    return int(sae.cfg.d_in), int(sae.cfg.d_sae), int(sae.cfg.d_in if d_out is None else d_out)


def _site_shapes(cfg: Any, saes: Optional[Mapping[str, Any]], level: str) -> dict[Site, tuple[int, int]]:
    """``{site: (d, F)}``: width of the site's vector and number of features (0 at a component site).
    A transcoder site ``tc.L`` holds the MLP's output: ``d`` is the transcoder's ``d_out`` (d_model),
    ``F`` its ``d_sae``; its input (the MLP's, ``d_in``) is an activation the forward keeps anyway."""
    if level == "feature":
        if not saes:
            raise ValueError("a feature-level estimate needs the SAEs (or {site: (d_in, d_sae)}, a transcoder's "
                             "(d_in, d_sae, d_out))")
        out = {}
        for key, sae in saes.items():
            d_in, f, d_out = _widths(sae)
            site = Site.parse(key)
            out[site] = (d_out if site.is_transcoder else d_in, f)
        return out
    if level != "component":
        raise ValueError(f"unknown level {level!r}; choose 'feature' or 'component'")
    return {s: (cfg.d_model, 0) for s in all_sites(cfg.n_layers, kinds=("resid", "attn", "mlp"))}


def _sae_bytes(saes: Optional[Mapping[str, Any]], e: int) -> int:
    total = 0
    for sae in (saes or {}).values():
        if isinstance(sae, (tuple, list)):
            d_in, f, d_out = _widths(sae)
            total += (d_in * f + f * d_out + f + d_out) * e
        else:
            total += sum(t.numel() * t.element_size() for t in list(sae.parameters()) + list(sae.buffers()))
    return total


def estimate_peak_bytes(model_cfg: Any, saes: Optional[Mapping[str, Any]] = None, *, batch_size: int,
                        n_positions: int, max_rows: int = 256, max_nodes: Optional[int] = DEFAULT_MAX_NODES,
                        method: str = "relp", level: str = "feature", ig_steps: int = 10,
                        aggregation: str = "none", n_pairs: Optional[int] = None,
                        record_bytes: int = RECORD_BYTES, edges: bool = True) -> MemoryEstimate:
    """Estimated peak memory of ``attribute(model, data, method, saes, settings=...)`` (module doc).

    ``model_cfg``: the model's ``HookedTransformerConfig``; ``saes``: ``{site: SAE}`` (or
    ``{site: (d_in, d_sae)}``; a transcoder at ``tc.L``: its own, or ``(d_in, d_sae, d_out)``); ``n_positions``: the longest prompt; ``n_pairs``: the dataset's size
    (None: assume the kept records reach ``record_bytes``)."""
    if batch_size < 1 or n_positions < 1 or max_rows < 1:
        raise ValueError("batch_size, n_positions and max_rows must be >= 1")
    cfg, e = model_cfg, _element_bytes(model_cfg)
    m = get_method(method)
    sites = _site_shapes(cfg, saes, level)
    B, T, L = batch_size, n_positions, cfg.n_layers
    a = activation_elements(cfg, T)
    sum_site = sum(4 * f + 3 * d + 1 for d, f in sites.values())
    max_d = max(d for d, _ in sites.values())
    max_f = max(f for _, f in sites.values())

    record = B * T * (sum_site + L * cfg.d_model) * e
    transient = m.estimator.node_transient_elements(cfg, sites, B=B, T=T, a=a, ig_steps=ig_steps, max_rows=max_rows,
                                                    active_features=_active_features(saes)) * e
    accumulators = 2 * sum(T * (f + 1) for _, f in sites.values()) * 4
    node_pass = record + transient + accumulators

    records_made = math.inf if n_pairs is None else math.ceil(n_pairs / B) * record
    node_records = min(records_made - record, record_bytes) if m.has_edges else 0  # the node pass keeps them
    edge_pass = edge_records = directions = 0
    if edges and m.has_edges:
        edge_pass = _edge_pass_bytes(cfg, sites, B, T, e, a, m.estimator.path_steps(ig_steps), max_rows, max_nodes,
                                     aggregation == "sum")
        if records_made <= record_bytes:
            edge_records = records_made
        else:  # dropped: each batch's node pass runs again inside the edge pass
            edge_pass += node_pass
        # cached [F, d] decoder and encoder directions, and decode(eye(F)) while the first is computed
        directions = (sum(2 * f * d for d, f in sites.values()) + max_f * (max_f + max_d)) * e
    return MemoryEstimate(model_weights=model_weight_bytes(cfg), sae_weights=_sae_bytes(saes, e),
                          runtime=_runtime_bytes(cfg), node_pass=int(node_pass), node_pass_records=int(node_records),
                          edge_pass=int(edge_pass), edge_pass_records=int(edge_records),
                          sae_directions=int(directions))


def _runtime_bytes(cfg: Any) -> int:
    """What the framework takes besides tensors: about 32 MiB on a CPU (measured here with torch 2.13),
    512 MiB on a GPU (the CUDA context and library workspaces; not measured here)."""
    return (512 if str(getattr(cfg, "device", "cpu")).startswith("cuda") else 32) * 2**20


def _active_features(saes: Optional[Mapping[str, Any]]) -> int:
    """Features active per position: the largest TopK ``k`` of the SAEs, else 256 (a guess)."""
    ks = [getattr(getattr(s, "cfg", None), "k", None) for s in (saes or {}).values()]
    ks = [int(k) for k in ks if isinstance(k, (int, float))]
    return max(ks) if ks else 256


def backward_elements(cfg: Any) -> float:
    """Elements per token (and per batched cotangent) alive while a batched backward crosses one layer:
    ``c d_mlp + 2 d_model`` with ``c = 2`` (GELU MLP) or ``3`` (gated MLP), measured on random blocks."""
    d_mlp = 0 if getattr(cfg, "attn_only", False) else (cfg.d_mlp or 0)
    return (3 if getattr(cfg, "gated_mlp", False) else 2) * d_mlp + 2 * cfg.d_model


def _edge_pass_bytes(cfg: Any, sites: dict[Site, tuple[int, int]], B: int, T: int, e: int, a: float,
                     steps: int, max_rows: int, max_nodes: Optional[int], summed: bool) -> int:
    """One batch, the most demanding downstream site, the candidates spread evenly over the sites;
    ``steps``: the estimator's interpolation points per pair (``Estimator.path_steps``)."""
    N = B * steps
    per_site = {s: (f + 1) * (1 if summed else T) for s, (_, f) in sites.items()}  # nodes of each site
    cap = sum(per_site.values()) if max_nodes is None else min(max_nodes, sum(per_site.values()))
    share = math.ceil(cap / len(sites))

    def n_cand(site: Site) -> int:
        return min(per_site[site], share)

    worst = 0
    for g in edge_groups(SimpleNamespace(cfg=cfg), list(sites)):
        span = g.stop - g.start + 1
        leaves = sum(sites[u][0] for u in g.leaves)
        forward = N * T * (span * a + leaves) + 2 * B * T * leaves  # saved activations, leaves, x_clean / x_delta
        for site, parents in g.parents.items():
            d, f = sites[site]
            n_d = n_cand(site)
            rows = N * n_d * ((T if summed else 1) * d + 1) + N * T * (n_d + f)  # w, gates, error pull-back
            per_slot = math.ceil(n_d / T) if (g.positionwise[site] and not summed) else n_d
            K = min(max_rows, max(1, _BUDGET // (N * T * d)), per_slot)
            pack = K * N * T * (d + 2)  # cotangents, owners (long)
            pulled_back = sum(sites[u][0] for u in parents)  # one [K, N, T, d_u] gradient per parent
            backward = 0 if g.identity[site] else K * N * T * (backward_elements(cfg) + pulled_back)
            project = max(K * N * (T * min(sites[u][1], n_cand(u)) * (2 if summed else 1) + 6 * n_cand(u))
                          for u in parents)
            worst = max(worst, forward + rows + pack + backward + project)
    sums = cap * cap
    return int((worst + sums) * e)


# ------------------------------------------------------------------------------------------------
def fit_to_budget(max_bytes: "int | str", model_cfg: Any, saes: Optional[Mapping[str, Any]] = None, *,
                  batch_size: int, n_positions: int, max_rows: int = 256, record_bytes: int = RECORD_BYTES,
                  **kwargs) -> BudgetFit:
    """The largest ``batch_size`` (at most the one asked for), then the largest ``max_rows`` (at most the
    one asked for), whose estimate fits ``max_bytes`` with no records kept (``record_bytes=0``: the edge
    pass recomputes them); then the largest ``record_bytes`` (at most the one asked for) that still
    fits. ``kwargs``: the other arguments of :func:`estimate_peak_bytes`. A larger budget never gives a
    smaller batch size, nor, at the same batch size, fewer rows. Raises :class:`MemoryBudgetError` when
    even batch size 1 with one row does not fit."""
    budget = parse_bytes(max_bytes)

    def estimate(b: int, r: int, keep: int) -> MemoryEstimate:
        return estimate_peak_bytes(model_cfg, saes, batch_size=b, n_positions=n_positions, max_rows=r,
                                   record_bytes=keep, **kwargs)

    def fits(b: int, r: int) -> bool:
        return estimate(b, r, 0).total <= budget

    if not fits(1, 1):
        smallest = estimate(1, 1, 0)
        raise MemoryBudgetError(
            f"--max-memory {format_bytes(budget)} is too small: even batch size 1 needs about {smallest}; "
            "allow more memory, or use fewer SAE sites, shorter prompts or a smaller --max-nodes")
    b = next(b for b in range(batch_size, 0, -1) if fits(b, 1))
    lo, hi = 1, max_rows  # the estimate grows with max_rows: bisect for the largest that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(b, mid) else (lo, mid - 1)
    r = lo
    keep = record_bytes
    final = estimate(b, r, keep)
    while final.total > budget:  # give the kept records what is left (keep = 0 fits: checked above)
        keep = max(0, keep - (final.total - budget))
        final = estimate(b, r, keep)
    return BudgetFit(batch_size=b, max_rows=r, record_bytes=int(keep), estimate=final)
