"""SAEs spliced into a TransformerLens model with error nodes (docs/design.md §4).

At a site with activation ``x``: ``f = enc(x)``, ``x_hat = dec(f)``, ``eps = x - x_hat`` and the site
outputs ``y = x_hat + eps``, which equals ``x``: the spliced model computes the bare model's logits.
For attribution the nodes are leaves with a straight-through path to ``x``::

    y = dec(f_leaf) + eps_leaf + (x - x.detach())

so ``dy/df = W_dec``, ``dy/d eps = I`` and upstream ``dy/dx = I``: a node's gradient is the true model
gradient projected on its decoder direction, independent of which other SAEs are spliced.

A site without an SAE is a *component* site: its single vector node is the whole site vector
(``f`` is absent and ``eps = x``). Every site therefore has the same shape of state:
``SiteState(features: [B,T,F] | None, vector: [B,T,d])``, with ``x = dec(features) + vector``.
At ``z.L`` sites (``blocks.L.attn.hook_z``, ``[B,T,H,d_head]``) the heads are flattened to
``d = H * d_head`` before the SAE and unflattened after it, so states are ``[B,T,H*d_head]`` too.

A *transcoder* site ``tc.L`` (docs/design.md §4b) encodes its features from the MLP's input ``x_in``
(ln2's output, captured by a forward pre-hook on ``blocks.L.mlp`` during the same forward) and decodes
them to the MLP's output ``x = blocks.L.hook_mlp_out``: ``f = enc(x_in)``, ``eps = x - dec(f)``,
``y = dec(f) + eps = x``; everything else (leaves, straight-through) is as for an SAE at ``mlp.L``. A
skip transcoder's linear skip ``W_skip x_in`` is neither a feature nor part of the error: it is a linear
path, like the residual stream. The site vector the nodes split is ``x - W_skip x_in`` and the hook adds
``W_skip x_in`` of the running forward back after the site function, so it follows the MLP's input
whatever the nodes are set to (patched, ablated, interpolated, held as leaves).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Optional

import torch
from transformer_lens import HookedTransformer

from featcirc.models.mlp_io import capturing_mlp_inputs
from featcirc.sites import Site, all_sites, sort_sites


@dataclass
class SiteState:
    """The nodes of one site: SAE feature activations (None at a component site) and the vector node."""

    features: Optional[torch.Tensor]  # [B, T, F]
    vector: torch.Tensor  # [B, T, d]: the SAE error, or the whole site vector at a component site

    def detach(self) -> "SiteState":
        return SiteState(None if self.features is None else self.features.detach(), self.vector.detach())

    def __sub__(self, other: "SiteState") -> "SiteState":
        f = None if self.features is None else self.features - other.features
        return SiteState(f, self.vector - other.vector)

    def rows(self, index: torch.Tensor) -> "SiteState":
        """The states of the given batch rows."""
        return SiteState(None if self.features is None else self.features[index], self.vector[index])


SiteFn = Callable[[torch.Tensor], torch.Tensor]


class Splice:
    """A set of sites of ``model``, each with an SAE (feature + error nodes) or none (a component node).

    ``saes`` maps sites (``Site`` or names) to SAELens SAEs; ``component_sites`` are sites without an SAE.
    Methods take a ``Site`` or its name (a site equals its name); stores are keyed by ``Site``.
    """

    def __init__(
        self,
        model: HookedTransformer,
        saes: Optional[Mapping["str | Site", object]] = None,
        component_sites: Iterable["str | Site"] = (),
    ) -> None:
        self.model = model
        self.saes: dict[Site, object] = {Site.parse(k): v for k, v in (saes or {}).items()}
        components = {Site.parse(s) for s in component_sites}
        overlap = set(self.saes) & components
        if overlap:
            raise ValueError(f"sites {sorted(s.name for s in overlap)} have an SAE and cannot also be "
                             "component sites")
        self.sites: list[Site] = sort_sites(list(self.saes) + list(components))
        for site in self.sites:
            if site.layer >= model.cfg.n_layers:
                raise ValueError(f"site {site} is beyond the model's {model.cfg.n_layers} layers")
        for layer in {s.layer for s in self.sites if s.kind == "z"}:
            if Site("attn", layer) in self.sites:
                raise ValueError(f"layer {layer} has both attn.{layer} and z.{layer}; splice one of them")
        for layer in {s.layer for s in self.sites if s.kind == "tc"}:
            if Site("mlp", layer) in self.sites:
                raise ValueError(f"layer {layer} has both mlp.{layer} and a transcoder tc.{layer}; splice one of them")
        for site in self.sites:
            sae = self.saes.get(site)
            if site.is_transcoder and (sae is None or not is_transcoder(sae)):
                raise ValueError(f"site {site} is a transcoder site and needs a transcoder (a SAELens Transcoder), "
                                 f"got {'no SAE' if sae is None else type(sae).__name__}")
            if sae is not None and not site.is_transcoder and is_transcoder(sae):
                raise ValueError(f"a transcoder ({type(sae).__name__}) cannot be spliced at {site}: transcoders go "
                                 f"at tc.{max(site.layer, 0)} (MLP input -> MLP output)")
        self._dirs: dict[Site, torch.Tensor] = {}
        self._enc: dict[Site, torch.Tensor] = {}
        self._mlp_in: dict[Site, torch.Tensor] = {}  # tc sites: the MLP input of the forward running now

    @property
    def skip_sites(self) -> list[Site]:
        """Transcoder sites with a linear skip ``W_skip x_in`` (a path from the MLP's input to its output)."""
        return [s for s in self.sites if s.is_transcoder and getattr(self.saes[s], "W_skip", None) is not None]

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    # --- the dictionary maths (a ``Site`` or its name) ---------------------------------------
    def has_sae(self, site: Site) -> bool:
        return site in self.saes

    def n_features(self, site: Site) -> int:
        sae = self.saes.get(site)
        return 0 if sae is None else int(sae.cfg.d_sae)

    def encode(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        """``f = enc(x)``; ``x`` is the encoder's input: the site vector, or a transcoder's MLP input."""
        return self.saes[site].encode(x)

    def decode(self, site: Site, f: torch.Tensor) -> torch.Tensor:
        return self.saes[site].decode(f)

    def encoder_input(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        """What ``site``'s encoder reads when the site vector is ``x``: ``x`` itself, or at a transcoder
        site the MLP input captured during the forward that is running (inside :meth:`hooks`)."""
        site = Site.parse(site)
        if not site.is_transcoder:
            return x
        if site not in self._mlp_in:
            raise RuntimeError(f"the transcoder at {site} reads the MLP's input, which is only known inside "
                               "Splice.hooks during a forward pass through that block")
        return self._mlp_in[site]

    def split(self, site: Site, x: torch.Tensor) -> SiteState:
        """``x -> (f, eps)`` with ``eps = x - dec(f)``; at a component site ``(None, x)``. At a transcoder
        site ``f = enc(x_in)`` from the MLP input of the running forward (:meth:`encoder_input`)."""
        if site not in self.saes:
            return SiteState(None, x)
        f = self.encode(site, self.encoder_input(site, x))
        return SiteState(f, x - self.decode(site, f))

    def combine(self, site: Site, state: SiteState) -> torch.Tensor:
        """``dec(f) + eps`` (or the vector itself at a component site)."""
        if state.features is None:
            return state.vector
        return self.decode(site, state.features) + state.vector

    def decoder_directions(self, site: Site) -> torch.Tensor:
        """``[F, d]``: ``dec(e_i) - dec(0)``, the (affine) decoder's direction for each feature."""
        if site not in self._dirs:
            sae = self.saes[site]
            F, w = int(sae.cfg.d_sae), sae.W_dec
            with torch.no_grad():
                base = sae.decode(torch.zeros(1, F, device=w.device, dtype=w.dtype))
                rows = []
                for i in range(0, F, 1024):  # one-hot blocks: never an F x F matrix
                    block = torch.zeros(min(1024, F - i), F, device=w.device, dtype=w.dtype)
                    block[torch.arange(block.shape[0]), torch.arange(i, i + block.shape[0])] = 1
                    rows.append(sae.decode(block) - base)
                self._dirs[site] = torch.cat(rows).detach()
        return self._dirs[site]

    def encoder_directions(self, site: Site) -> torch.Tensor:
        """``[F, d]``: row ``i`` is ``d f_i / d x`` wherever feature ``i`` is active.

        SAELens's ReLU, TopK and JumpReLU SAEs compute ``f = act(pre(x))`` with ``pre`` affine in ``x``
        and ``f_i = pre_i`` (times a constant) where active, so the encoder's Jacobian is
        ``diag(f != 0) E``. ``E`` is read off the activation function's input for the inputs ``0`` and
        ``e_1..e_d``, and checked against autograd on random inputs: an SAE whose encoder is not of
        this form (e.g. one normalising each input by its norm) is rejected with a clear error.
        """
        if site not in self._enc:
            self._enc[site] = _encoder_directions(Site.parse(site), self.saes[site])
        return self._enc[site]

    # --- hook installation ----------------------------------------------------------------
    @contextmanager
    def hooks(self, fns: Mapping[Site, SiteFn]) -> Iterator[None]:
        """Install ``{site: x -> y}`` as forward hooks for the duration of the context; ``x`` and ``y``
        are ``[B, T, d]`` (``z`` sites are flattened over heads and unflattened around ``fn``)."""
        sites = {Site.parse(s): fn for s, fn in fns.items()}
        inputs: dict[int, torch.Tensor] = {}
        tc = {s.layer: s for s in sites if s.is_transcoder}

        def fn_reading_input(site: Site, fn: SiteFn) -> SiteFn:
            w_skip = getattr(self.saes[site], "W_skip", None)  # [d_out, d_in]

            def run(x: torch.Tensor) -> torch.Tensor:
                x_in = self._mlp_in[site] = inputs[site.layer]
                if w_skip is None:
                    return fn(x)
                skip = x_in @ w_skip.T.to(x_in.dtype)  # a linear path, not a node (docs/design.md §4b)
                return fn(x - skip) + skip

            return run

        fwd = [(site.hook_name, _as_hook(fn_reading_input(site, fn) if site.is_transcoder else fn, site.kind == "z"))
               for site, fn in sites.items()]
        try:
            with capturing_mlp_inputs(self.model, tc, inputs), self.model.hooks(fwd_hooks=fwd):
                yield
        finally:
            for s in tc.values():
                self._mlp_in.pop(s, None)

    @contextmanager
    def record(self, sites: Optional[Iterable[Site]] = None) -> Iterator[dict[Site, SiteState]]:
        """Record every site's nodes (detached) during the forward passes run inside the context."""
        store: dict[Site, SiteState] = {}

        def make(site: Site) -> SiteFn:
            def fn(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    store[site] = self.split(site, x.detach()).detach()
                return x

            return fn

        with self.hooks({s: make(s) for s in (self.sites if sites is None else sites)}):
            yield store

    @contextmanager
    def leaves(self) -> Iterator[dict[Site, SiteState]]:
        """Splice with leaf nodes (``requires_grad``) and the straight-through path (docs/design.md §4).

        After a backward pass inside the context, ``store[site].features.grad`` and
        ``store[site].vector.grad`` hold the node gradients.
        """
        store: dict[Site, SiteState] = {}

        def make(site: Site) -> SiteFn:
            def fn(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    st = self.split(site, x)
                vec = st.vector.detach().requires_grad_()
                feats = None if st.features is None else st.features.detach().requires_grad_()
                store[site] = SiteState(feats, vec)
                return self.combine(site, store[site]) + (x - x.detach())

            return fn

        with self.hooks({s: make(s) for s in self.sites}):
            yield store


def is_transcoder(sae) -> bool:
    """True for SAELens's transcoders (``Transcoder``, ``SkipTranscoder``, ``JumpReLUTranscoder``, ...):
    their config has an output width ``d_out``."""
    return getattr(getattr(sae, "cfg", None), "d_out", None) is not None


def _encoder_directions(site: Site, sae) -> torch.Tensor:
    if not isinstance(getattr(sae, "activation_fn", None), torch.nn.Module):
        raise ValueError(f"the SAE at {site} ({type(sae).__name__}) has no activation module to read its "
                         "encoder from; edges need a SAELens ReLU, TopK or JumpReLU SAE")
    w = sae.W_dec.detach()
    d = int(sae.cfg.d_in)
    exact = copy.deepcopy(sae).to(torch.float64)  # pre(e_k) - pre(0) cancels: read it in double precision
    seen: list[torch.Tensor] = []
    handle = exact.activation_fn.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            exact.encode(torch.cat([torch.zeros(1, d, dtype=torch.float64, device=w.device),
                                    torch.eye(d, dtype=torch.float64, device=w.device)]))
    finally:
        handle.remove()
    directions = (seen[-1][1:] - seen[-1][:1]).T.contiguous().to(w.dtype)  # [F, d]
    # check: the Jacobian of f at random inputs is diag(f != 0) @ directions
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(8, d, generator=g) * 4 * float(w.norm(dim=-1).mean() or 1.0)).to(w.device, w.dtype)
    x.requires_grad_()
    with torch.enable_grad():
        f = sae.encode(x)
        probe = torch.randn(f.shape, generator=g).to(f.device, f.dtype)
        got = torch.autograd.grad((f * probe).sum(), x)[0]
    want = ((f != 0) * probe).detach() @ directions
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max() + 1e-12)):
        raise ValueError(f"the SAE at {site} ({type(sae).__name__}) is not a ReLU/TopK/JumpReLU SAE with an "
                         "affine encoder (e.g. it normalises every input by its norm); edges need one")
    return directions


def _as_hook(fn: SiteFn, flatten_heads: bool):
    if flatten_heads:
        def hook_z(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens signature)
            return fn(act.flatten(-2)).view_as(act)

        return hook_z

    def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
        return fn(act)

    return hook


def default_component_sites(model: HookedTransformer) -> list[Site]:
    """Every ``resid.L``, ``attn.L``, ``mlp.L`` of the model (the RelP paper's components)."""
    return all_sites(model.cfg.n_layers, kinds=("resid", "attn", "mlp"))


def make_splice(
    model: HookedTransformer,
    level: str,
    saes: Optional[Mapping[str, object]] = None,
    sites: Optional[Iterable["str | Site"]] = None,
) -> Splice:
    """The splice a scoring level needs: SAEs at their sites (``feature``) or bare sites (``component``)."""
    chosen = None if sites is None else {Site.parse(s) for s in sites}
    if level == "feature":
        if not saes:
            raise ValueError("feature-level scores need SAEs (--saes); use level='component' without them")
        picked = {Site.parse(k): v for k, v in saes.items()}
        picked = {k: v for k, v in picked.items() if chosen is None or k in chosen}
        if not picked:
            raise ValueError(f"none of the requested sites {sorted(s.name for s in chosen or [])} has an SAE")
        return Splice(model, picked)
    if level != "component":
        raise ValueError(f"unknown level {level!r}; choose 'feature' or 'component'")
    return Splice(model, None, sorted(chosen) if chosen is not None else default_component_sites(model))


@contextmanager
def record_resid_pre(model: HookedTransformer) -> Iterator[dict[int, torch.Tensor]]:
    """Record (detached) the residual stream entering every block, for ``start_at_layer`` runs."""
    store: dict[int, torch.Tensor] = {}

    def make(layer: int):
        def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            store[layer] = act.detach()
            return act

        return hook

    fwd = [(f"blocks.{L}.hook_resid_pre", make(L)) for L in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=fwd):
        yield store
