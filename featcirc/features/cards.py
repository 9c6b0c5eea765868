"""Feature cards: what makes an SAE (or transcoder) feature fire, computed locally in one pass over a corpus.

For every requested feature ``(site, index)`` a card holds

- ``density``: the fraction of corpus tokens where the feature is active (activation > 0);
- ``max_activation``: its largest activation;
- ``top_examples``: the ``top_k`` windows with the largest activation (one example per window,
  marked at its most active token, ``max_index``; ties: earlier window first);
- ``quantiles``: examples from activation ranges given as fractions of the maximum
  (``"0.75-1 of max"``, ``"0.5-0.75 of max"``, ...; windows already among the top examples are
  skipped; an empty range is left out);
- ``logit_lens``: the output tokens the decoder direction ``d = W_dec[index]`` promotes and
  suppresses directly, ``top`` / ``bottom`` of ``(N(d) ⊙ w_ln) @ W_U`` where N subtracts the mean
  of ``d`` over ``d_model`` when the model's final norm is a LayerNorm (it centres whatever reaches
  it; RMSNorm does not) and ``w_ln`` is the final norm's gain. The norm's division by the
  stream's scale is a positive factor common to all tokens and is left out, so the values are
  logits per unit of activation *before* that division (they rank tokens exactly). Decoders of
  ``z.L`` sites (attention heads before ``W_O``) are mapped into the residual stream by ``W_O``.

A transcoder's feature (``tc.L``) is encoded from the MLP's input (ln2's output, captured by
:func:`featcirc.models.mlp_io.capturing_mlp_inputs` during the same forward), not from the site's own
vector ``blocks.L.hook_mlp_out``, which is what it decodes to (its logit lens reads that decoder).

Examples are token spans of their window, ``context_before`` tokens before the marked token and
``context_after`` after it (trailing padding left out), with the feature's activation at every token. Statistics skip BOS and
padding positions (an SAE's activation at BOS says nothing about text; windows from
:func:`featcirc.data.corpus.token_windows` start with BOS and separate documents by BOS).

One pass: the windows go through the model in batches, with hooks only up to the last block
needed (``model(tokens, stop_at_layer=...)``); every requested site's SAE encodes its activations
(a transcoder: the MLP's input) from that one forward, and all statistics are updated from running state:

- the top windows: a stable sort of (kept, batch) window maxima per feature;
- the quantile examples: activations fall into fixed logarithmic buckets (``BUCKETS_PER_OCTAVE``
  per factor 2, from ``2**LOG2_LOW`` to ``2**LOG2_HIGH``); each bucket keeps its
  ``SAMPLES_PER_BUCKET`` active tokens of smallest hash key (a uniform sample of the tokens that
  fell in it, without replacement); after the pass the samples are sorted into ranges of the final
  maximum. The hash is of (token position in the corpus, feature, seed), so the samples do not
  depend on the batch size, and results are deterministic for a seed;
- the bucket counts of every active token: an exact histogram on that logarithmic grid, from which
  the circuit-tracer feature files take an activation histogram and percentiles (to within a
  bucket's width, a factor ``2 ** (1 / BUCKETS_PER_OCTAVE)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

from featcirc.models.mlp_io import capturing_mlp_inputs
from featcirc.sites import Site, card_key, parse_card_key, sort_sites, stream_index

LOG2_LOW = -10
LOG2_HIGH = 14
BUCKETS_PER_OCTAVE = 4
N_BUCKETS = (LOG2_HIGH - LOG2_LOW) * BUCKETS_PER_OCTAVE
SAMPLES_PER_BUCKET = 3
HISTOGRAM_BINS = 40
_M32 = (1 << 32) - 1


class FeatureRequestError(ValueError):
    """Requested features that the SAEs do not have."""


@dataclass(frozen=True)
class CardSettings:
    """What a card shows (part of the cache key).

    ``top_k``: top-activating examples; ``quantile_ranges``: how many equal ranges of ``[0, max]``
    the quantile examples come from; ``per_range``: examples per range; ``context_before`` /
    ``context_after``: tokens shown around the marked token; ``n_logits``: tokens in each of
    ``logit_lens.top`` / ``bottom``; ``seed``: of the sampling hash.
    """

    top_k: int = 10
    quantile_ranges: int = 4
    per_range: int = 5
    context_before: int = 24
    context_after: int = 8
    n_logits: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "quantile_ranges", "per_range", "n_logits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("context_before", "context_after", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def normalize_request(features: Mapping[str, Iterable[int]], saes: Mapping[str, Any]) -> dict[str, list[int]]:
    """``{site: sorted unique indices}`` in forward site order, checked against the SAEs
    (:class:`FeatureRequestError` naming every site or index they do not have)."""
    by_name: dict[str, set[int]] = {}
    for site, idx in features.items():
        by_name.setdefault(Site.parse(site).name, set()).update(int(i) for i in idx)
    out: dict[str, list[int]] = {}
    errs = []
    for site in sort_sites(by_name):
        name = site.name
        idx = sorted(by_name[name])
        if not idx:
            continue
        if name not in saes:
            errs.append(f"{name} (no SAE there; the SAE set has {', '.join(saes)})")
            continue
        d_sae = int(saes[name].cfg.d_sae)
        bad = [i for i in idx if not 0 <= i < d_sae]
        if bad:
            errs.append(f"{name} features {bad[:5]} (its SAE has {d_sae} features, 0..{d_sae - 1})")
        out[name] = idx
    if errs:
        raise FeatureRequestError("cannot build cards for " + "; ".join(errs))
    return out


# ----------------------------------------------------------------------------- hashing, buckets
def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixing function on int64 tensors holding values < 2**32 (no overflow)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def uniform_keys(token_index: torch.Tensor, feature_uid: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic pseudo-uniform keys in [0, 1) (float64) for (token, feature) pairs: a hash of
    the token's position in the corpus, the feature's id and ``seed`` (independent of batching)."""
    a = (token_index.long() & _M32) * 2654435761 & _M32
    b = (feature_uid.long() & _M32) * 2246822519 & _M32
    x = _mix32(a ^ b ^ (int(seed) * 3266489917 & _M32))
    x = _mix32(x ^ (feature_uid.long() & _M32))
    return x.double() / float(1 << 32)


def bucket_of(acts: torch.Tensor) -> torch.Tensor:
    """Logarithmic bucket (0 .. N_BUCKETS-1) of positive activations: ``floor(BPO * log2(a))``
    shifted by ``LOG2_LOW``, clamped to the grid."""
    b = torch.floor(torch.log2(acts.clamp_min(1e-30)) * BUCKETS_PER_OCTAVE) - LOG2_LOW * BUCKETS_PER_OCTAVE
    return b.clamp(0, N_BUCKETS - 1).long()


def bucket_edges() -> torch.Tensor:
    """The ``N_BUCKETS + 1`` activation edges of the buckets (the first and last buckets also take
    everything below / above the grid)."""
    return torch.pow(2.0, torch.arange(N_BUCKETS + 1, dtype=torch.float64) / BUCKETS_PER_OCTAVE + LOG2_LOW)


# ----------------------------------------------------------------------------- decoder logit lens
def decoder_directions(model, site: str, sae, idx: torch.Tensor) -> torch.Tensor:
    """The residual-stream directions written by features ``idx`` of ``sae`` at ``site``: rows of
    ``W_dec``, mapped through ``W_O`` for ``z.L`` sites."""
    W = sae.W_dec.detach()[idx].float()
    s = Site.parse(site)
    if s.kind == "z":
        W_O = model.blocks[s.layer].attn.W_O.detach().float()  # [H, d_head, d_model]
        W = torch.einsum("fhd,hdm->fm", W.view(len(idx), W_O.shape[0], W_O.shape[1]), W_O)
    return W


def logit_lens(model, directions: torch.Tensor, n: int, chunk: int = 16) -> list[tuple[list, list]]:
    """Top and bottom ``n`` ``(token id, value)`` of each direction's direct effect on the logits
    (module docstring: centred for LayerNorm, times the final norm's gain, then ``W_U``)."""
    d = directions.float()
    if getattr(model.cfg, "normalization_type", None) in ("LN", "LNPre"):
        d = d - d.mean(-1, keepdim=True)
    w = getattr(getattr(model, "ln_final", None), "w", None)
    if w is not None:
        d = d * w.detach().float()
    W_U = model.W_U.detach().float()
    out = []
    k = min(n, W_U.shape[1])
    for s in range(0, d.shape[0], chunk):
        logits = d[s:s + chunk] @ W_U
        top = torch.topk(logits, k, dim=-1)
        bot = torch.topk(-logits, k, dim=-1)
        for i in range(logits.shape[0]):
            out.append(([(int(t), float(v)) for t, v in zip(top.indices[i], top.values[i])],
                        [(int(t), float(-v)) for t, v in zip(bot.indices[i], bot.values[i])]))
    return out


# ----------------------------------------------------------------------------- the pass
def _special_ids(tokenizer) -> list[int]:
    ids = []
    for name in ("bos_token_id", "pad_token_id"):
        v = getattr(tokenizer, name, None) if tokenizer is not None else None
        if v is not None:
            ids.append(int(v))
    return sorted(set(ids))


class _Spans:
    """Gathers ``[F, n, span]`` activation spans around token positions from a batch ``[F, B, T]``."""

    def __init__(self, acts_fbt: torch.Tensor, before: int, after: int):
        F, B, T = acts_fbt.shape
        self.T, self.before, self.span = T, before, before + after + 1
        padded = torch.nn.functional.pad(acts_fbt, (before, after), value=float("nan"))
        self.flat = padded.reshape(F, B * (T + before + after))
        self.Tp = T + before + after

    def __call__(self, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        base = b * self.Tp + t  # padded coordinate of t - before is t
        idx = base.unsqueeze(-1) + torch.arange(self.span)
        return torch.gather(self.flat, 1, idx.reshape(idx.shape[0], -1)).reshape(*idx.shape)


class CardAccumulator:
    """Running statistics of the requested features over token windows (see the module doc)."""

    def __init__(self, features: Mapping[str, Sequence[int]], settings: CardSettings, seq_len: int):
        self.settings = settings
        self.columns: list[tuple[str, int]] = [(s, i) for s, idx in features.items() for i in idx]
        F = len(self.columns)
        self.uid = torch.tensor([_feature_uid(s, i) for s, i in self.columns], dtype=torch.long)
        self.T = seq_len
        self.span = settings.context_before + settings.context_after + 1
        K, S = settings.top_k, N_BUCKETS * SAMPLES_PER_BUCKET
        self.n_valid = 0
        self.n_active = torch.zeros(F, dtype=torch.long)
        self.max_act = torch.full((F,), float("-inf"))
        self.counts = torch.zeros(F, N_BUCKETS, dtype=torch.long)
        self.top_val = torch.full((F, K), float("-inf"))
        self.top_win = torch.full((F, K), -1, dtype=torch.long)
        self.top_pos = torch.zeros(F, K, dtype=torch.long)
        self.top_span = torch.full((F, K, self.span), float("nan"))
        self.s_key = torch.full((F, S), float("inf"), dtype=torch.float64)
        self.s_act = torch.zeros(F, S)
        self.s_win = torch.full((F, S), -1, dtype=torch.long)
        self.s_pos = torch.zeros(F, S, dtype=torch.long)
        self.s_span = torch.full((F, S, self.span), float("nan"))

    def update(self, acts: torch.Tensor, valid: torch.Tensor, first_window: int) -> None:
        """Add a batch: ``acts`` ``[B, T, F]`` (the requested features, in ``columns`` order),
        ``valid`` ``[B, T]`` (positions counted), windows ``first_window ..`` of the corpus."""
        st = self.settings
        B, T, F = acts.shape
        A = acts.permute(2, 0, 1).float().contiguous()  # [F, B, T]
        spans = _Spans(A, st.context_before, st.context_after)
        active = (A > 0) & valid
        self.n_valid += int(valid.sum())
        self.n_active += active.sum((1, 2))
        masked = A.masked_fill(~valid, float("-inf"))
        self.max_act = torch.maximum(self.max_act, masked.amax((1, 2)))

        # top windows: window maxima, stable descending sort (ties: earlier window first)
        win_val, win_pos = masked.max(dim=2)  # [F, B]
        b_idx = torch.arange(B).expand(F, B)
        batch_span = spans(b_idx, win_pos)  # [F, B, span]
        vals = torch.cat([self.top_val, win_val], 1)
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :st.top_k]
        K0 = self.top_val.shape[1]
        from_batch = order >= K0
        bi = (order - K0).clamp_min(0)
        oi = order.clamp_max(K0 - 1)
        self.top_val = torch.gather(vals, 1, order)
        self.top_win = torch.where(from_batch, first_window + bi, torch.gather(self.top_win, 1, oi))
        self.top_pos = torch.where(from_batch, torch.gather(win_pos, 1, bi), torch.gather(self.top_pos, 1, oi))
        sel_b = torch.gather(batch_span, 1, bi.unsqueeze(-1).expand(-1, -1, self.span))
        sel_o = torch.gather(self.top_span, 1, oi.unsqueeze(-1).expand(-1, -1, self.span))
        self.top_span = torch.where(from_batch.unsqueeze(-1), sel_b, sel_o)

        # log-bucket histogram and per-bucket samples of smallest hash key
        flat_act = A.reshape(F, B * T)
        flat_active = active.reshape(F, B * T)
        bucket = bucket_of(flat_act)
        self.counts.scatter_add_(1, torch.where(flat_active, bucket, N_BUCKETS).clamp_max(N_BUCKETS - 1),
                                 flat_active.long())
        tok_index = (first_window * T + torch.arange(B * T)).expand(F, -1)
        keys = uniform_keys(tok_index, self.uid.unsqueeze(1).expand(-1, B * T), st.seed)
        comp_batch = torch.where(flat_active, bucket.double() + keys, torch.full_like(keys, float("inf")))
        comp = torch.cat([self.s_key, comp_batch], 1)  # [F, S + B*T]
        S = self.s_key.shape[1]
        c_sorted, perm = torch.sort(comp, dim=1, stable=True)
        b_sorted = torch.floor(c_sorted)
        finite = torch.isfinite(c_sorted)
        start = torch.searchsorted(c_sorted, torch.where(finite, b_sorted, torch.full_like(b_sorted, float("inf"))))
        rank = torch.arange(c_sorted.shape[1]).expand_as(start) - start
        keep = finite & (rank < SAMPLES_PER_BUCKET)
        slot = torch.where(keep, b_sorted.clamp(0, N_BUCKETS - 1).long() * SAMPLES_PER_BUCKET + rank, S)
        src = torch.full((F, S + 1), -1, dtype=torch.long)
        src.scatter_(1, slot, torch.where(keep, perm, -1))
        src = src[:, :S]
        has = src >= 0
        from_batch = src >= S
        oi = src.clamp(0, S - 1)
        ti = (src - S).clamp(0, B * T - 1)
        tb, tt = ti // T, ti % T
        self.s_key = torch.where(has, torch.gather(comp, 1, src.clamp_min(0)), torch.full_like(self.s_key, float("inf")))
        self.s_act = torch.where(from_batch, torch.gather(flat_act, 1, ti), torch.gather(self.s_act, 1, oi))
        self.s_win = torch.where(has, torch.where(from_batch, first_window + tb, torch.gather(self.s_win, 1, oi)),
                                 torch.full_like(self.s_win, -1))
        self.s_pos = torch.where(from_batch, tt, torch.gather(self.s_pos, 1, oi))
        sel_b = spans(tb, tt)
        sel_o = torch.gather(self.s_span, 1, oi.unsqueeze(-1).expand(-1, -1, self.span))
        self.s_span = torch.where(from_batch.unsqueeze(-1), sel_b, sel_o)

    # --------------------------------------------------------------------- results
    def _example(self, windows: torch.Tensor, win: int, pos: int, span: torch.Tensor, decode,
                 pad_id: Optional[int] = None) -> dict:
        st = self.settings
        lo = max(0, pos - st.context_before)
        hi = min(self.T, pos + st.context_after + 1)
        while pad_id is not None and hi > pos + 1 and int(windows[win, hi - 1]) == pad_id:
            hi -= 1  # padding after a document is not text
        toks = windows[win, lo:hi].tolist()
        acts = span[lo - (pos - st.context_before): hi - (pos - st.context_before)]
        return {"tokens": [decode(t) for t in toks],
                "activations": [round(float(a), 4) if math.isfinite(float(a)) else 0.0 for a in acts],
                "max_index": pos - lo}

    def cards(self, windows: torch.Tensor, decode, lens: Sequence[tuple[list, list]],
              pad_id: Optional[int] = None) -> dict[str, dict]:
        """The cards (``cards.json`` schema) and, per card, ``_extras`` for circuit-tracer files;
        examples end before trailing ``pad_id`` tokens."""
        st = self.settings
        n = max(self.n_valid, 1)
        edges = bucket_edges()
        out = {}
        for j, (site, index) in enumerate(self.columns):
            mx = float(self.max_act[j]) if self.n_active[j] > 0 else 0.0
            top, used = [], set()
            for k in range(st.top_k):
                if not self.top_val[j, k] > 0:
                    break
                w, p = int(self.top_win[j, k]), int(self.top_pos[j, k])
                used.add(w)
                top.append(self._example(windows, w, p, self.top_span[j, k], decode, pad_id))
            quantiles = []
            if mx > 0:
                valid = self.s_win[j] >= 0
                keys = self.s_key[j] - torch.floor(self.s_key[j])
                frac = self.s_act[j] / mx
                R = st.quantile_ranges
                for r in range(R, 0, -1):
                    lo_f, hi_f = (r - 1) / R, r / R
                    inside = valid & (frac > lo_f) & (frac <= hi_f)
                    cand = torch.nonzero(inside).flatten().tolist()
                    cand.sort(key=lambda i: (float(keys[i]), int(self.s_win[j, i])))
                    ex = []
                    for i in cand:
                        w = int(self.s_win[j, i])
                        if w in used:
                            continue
                        used.add(w)
                        ex.append(self._example(windows, w, int(self.s_pos[j, i]), self.s_span[j, i], decode,
                                                pad_id))
                        if len(ex) >= st.per_range:
                            break
                    if ex:
                        quantiles.append({"label": f"{lo_f:g}-{hi_f:g} of max", "examples": ex})
            top_l, bot_l = lens[j]
            out[card_key(site, index)] = {
                "site": site, "feature": int(index),
                "density": float(self.n_active[j]) / n,
                "max_activation": mx,
                "top_examples": top,
                "quantiles": quantiles,
                "logit_lens": {"top": [[decode(t), round(v, 4)] for t, v in top_l],
                               "bottom": [[decode(t), round(v, 4)] for t, v in bot_l]},
                "_extras": _distribution(self.counts[j], edges, mx),
            }
        return out


def _distribution(counts: torch.Tensor, edges: torch.Tensor, mx: float) -> dict:
    """From exact log-bucket counts of the active tokens: ``histogram`` (``HISTOGRAM_BINS`` equal
    bins of [0, max]; a bucket's count is spread over the bins its range covers, in proportion to
    the overlap) and ``quantile_values`` (the 1st..100th percentiles, geometric interpolation
    inside a bucket, the last one = max)."""
    total = int(counts.sum())
    if total == 0 or mx <= 0:
        return {"histogram": [0.0] * HISTOGRAM_BINS, "quantile_values": [], "n_active": total}
    lo = edges[:-1].clamp(max=mx)
    hi = edges[1:].clamp(max=mx)
    lo[0] = 0.0  # the first bucket also holds everything below the grid
    hi[-1] = mx  # the last one everything above it
    bin_edges = torch.linspace(0.0, mx, HISTOGRAM_BINS + 1, dtype=torch.float64)
    overlap = (torch.minimum(hi[:, None], bin_edges[None, 1:]) - torch.maximum(lo[:, None], bin_edges[None, :-1]))
    overlap = overlap.clamp_min(0.0)
    width = overlap.sum(1, keepdim=True)
    share = torch.where(width > 0, overlap / width.clamp_min(1e-300), torch.zeros_like(overlap))
    share[(width.squeeze(1) == 0), HISTOGRAM_BINS - 1] = 1.0  # a bucket squeezed to a point at max
    hist = counts.double() @ share
    cum = torch.cumsum(counts, 0).double()
    qv = []
    for q in range(1, 101):
        target = q / 100 * total
        b = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64)).clamp_max(N_BUCKETS - 1))
        below = float(cum[b - 1]) if b > 0 else 0.0
        within = (target - below) / max(float(counts[b]), 1.0)
        e_lo, e_hi = float(edges[b]), float(edges[b + 1])
        qv.append(min(mx, e_lo * (e_hi / e_lo) ** min(max(within, 0.0), 1.0)))
    qv[-1] = mx
    return {"histogram": [round(float(h), 3) for h in hist], "quantile_values": [round(v, 6) for v in qv],
            "n_active": total}


def compute_cards(model, saes: Mapping[str, Any], features: Mapping[str, Iterable[int]], windows: torch.Tensor, *,
                  settings: CardSettings = CardSettings(), batch_size: int = 16,
                  progress: bool = True) -> tuple[dict[str, dict], int]:
    """Cards of ``features`` (``{site: [index, ...]}``) over token ``windows`` ``[N, T]``, in one
    pass (module docstring). Returns ``(cards, n_tokens)``: cards keyed ``"site/index"`` (each
    with an ``_extras`` dict for :mod:`featcirc.features.tracer_files`) and the number of token
    positions the statistics cover (BOS and padding excluded)."""
    from tqdm.auto import tqdm

    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[0] == 0:
        raise ValueError("windows must be a non-empty [N, T] tensor of token ids "
                         "(featcirc.data.corpus.token_windows)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    request = normalize_request(features, saes)
    if not request:
        raise FeatureRequestError("no features requested: the circuit has no feature nodes "
                                  "(give features as {site: [index, ...]} or SITE/INDEX)")
    windows = windows.long().cpu()
    N, T = windows.shape
    sites = [Site.parse(s) for s in request]
    stop = max(s.block for s in sites) + 1
    idx = {s: torch.tensor(v, dtype=torch.long) for s, v in request.items()}
    acc = CardAccumulator(request, settings, T)
    special = torch.tensor(_special_ids(getattr(model, "tokenizer", None)), dtype=torch.long)
    device = next(model.parameters()).device

    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(act, hook):  # noqa: ARG001 (TransformerLens signature)
            captured[name] = act.detach()
        return hook

    fwd_hooks = [(s.hook_name, capture(s.name)) for s in sites if not s.is_transcoder]
    mlp_in: dict[int, torch.Tensor] = {}  # tc sites: what a transcoder encodes, the MLP's input
    with torch.no_grad(), capturing_mlp_inputs(model, sorted({s.layer for s in sites if s.is_transcoder}), mlp_in):
        for start in tqdm(range(0, N, batch_size), desc="feature cards", unit="batch",
                          disable=not progress, leave=False):
            batch = windows[start:start + batch_size]
            captured.clear()
            mlp_in.clear()
            model.run_with_hooks(batch.to(device), fwd_hooks=fwd_hooks, stop_at_layer=stop, return_type=None)
            cols = []
            for s in sites:
                x = encoder_input(s, captured, mlp_in)
                sae = saes[s.name]
                f = sae.encode(x.to(sae.W_dec.dtype))
                cols.append(f[..., idx[s.name].to(f.device)].float().cpu())
            valid = ~torch.isin(batch, special) if special.numel() else torch.ones_like(batch, dtype=torch.bool)
            acc.update(torch.cat(cols, -1), valid, start)

    lens: list[tuple[list, list]] = []
    with torch.no_grad():
        for s in sites:
            lens += logit_lens(model, decoder_directions(model, s.name, saes[s.name], idx[s.name]).to(device),
                               settings.n_logits)
    tokenizer = getattr(model, "tokenizer", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    return acc.cards(windows, token_decoder(tokenizer), lens, pad_id=pad_id), acc.n_valid


def encoder_input(site: Site, captured: Mapping[str, torch.Tensor], mlp_in: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """What ``site``'s SAE encodes, ``[B, T, d]``, from one forward's captures: the site's hook
    activation (``z`` sites: heads flattened), or for a transcoder (``tc.L``) block L's MLP input."""
    if site.is_transcoder:
        return mlp_in[site.layer].detach()
    x = captured[site.name]
    return x.flatten(-2) if site.kind == "z" else x


def _feature_uid(site: str, index: int) -> int:
    """A feature's id in the sampling hash (below 2**32): its site's stream index and its index; a
    transcoder's ``tc.L`` (mlp.L's stream index) is shifted by 2**31 so the two never share keys."""
    s = Site.parse(site)
    return (stream_index(s, 0) << 20) + int(index) + ((1 << 31) if s.is_transcoder else 0)


def token_decoder(tokenizer):
    """``id -> string`` with a cache (each id decoded alone, as the viewers show tokens)."""
    cache: dict[int, str] = {}

    def decode(t: int) -> str:
        t = int(t)
        if t not in cache:
            cache[t] = tokenizer.decode([t]) if tokenizer is not None else str(t)
        return cache[t]

    return decode


__all__ = ["CardSettings", "FeatureRequestError", "card_key", "parse_card_key", "normalize_request",
           "compute_cards", "logit_lens", "decoder_directions", "uniform_keys", "bucket_of", "bucket_edges",
           "CardAccumulator", "encoder_input", "token_decoder", "N_BUCKETS", "SAMPLES_PER_BUCKET"]
