"""SAEs spliced into a TransformerLens model with error nodes (DESIGN §4).

At a site with activation ``x``: ``f = enc(x)``, ``x_hat = dec(f)``, ``eps = x - x_hat`` and the site
outputs ``y = x_hat + eps``, which equals ``x``: the spliced model computes the bare model's logits.
For attribution the nodes are leaves with a straight-through path to ``x``::

    y = dec(f_leaf) + eps_leaf + (x - x.detach())

so ``dy/df = W_dec``, ``dy/d eps = I`` and upstream ``dy/dx = I``: a node's gradient is the true model
gradient projected on its decoder direction, independent of which other SAEs are spliced.

A site without an SAE is a *component* site: its single vector node is the whole site vector
(``f`` is absent and ``eps = x``). Every site therefore has the same shape of state:
``SiteState(features: [B,T,F] | None, vector: [B,T,d])``, with ``x = dec(features) + vector``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Optional

import torch
from transformer_lens import HookedTransformer

from featcirc.sites import Site, all_sites, sort_sites


@dataclass
class SiteState:
    """The nodes of one site: SAE feature activations (None at a component site) and the vector node."""

    features: Optional[torch.Tensor]  # [B, T, F]
    vector: torch.Tensor  # [B, T, d]: the SAE error, or the whole site vector at a component site


class Splice:
    """A set of sites of ``model``, each with an SAE (feature + error nodes) or none (a component node).

    ``saes`` maps site names to SAELens SAEs; ``component_sites`` names sites without an SAE.
    """

    def __init__(
        self,
        model: HookedTransformer,
        saes: Optional[Mapping[str, object]] = None,
        component_sites: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.model = model
        self.saes = {Site.parse(k).name: v for k, v in (saes or {}).items()}
        overlap = set(self.saes) & {Site.parse(s).name for s in component_sites}
        if overlap:
            raise ValueError(f"sites {sorted(overlap)} have an SAE and cannot also be component sites")
        self.sites: list[Site] = sort_sites(list(self.saes) + list(component_sites))
        for site in self.sites:
            if site.layer >= model.cfg.n_layers:
                raise ValueError(f"site {site} is beyond the model's {model.cfg.n_layers} layers")
        self._dirs: dict[str, torch.Tensor] = {}

    # --- the dictionary maths -------------------------------------------------------------
    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def has_sae(self, site: "str | Site") -> bool:
        return Site.parse(site).name in self.saes

    def n_features(self, site: "str | Site") -> int:
        sae = self.saes.get(Site.parse(site).name)
        return 0 if sae is None else int(sae.cfg.d_sae)

    def encode(self, site: "str | Site", x: torch.Tensor) -> torch.Tensor:
        return self.saes[Site.parse(site).name].encode(x)

    def decode(self, site: "str | Site", f: torch.Tensor) -> torch.Tensor:
        return self.saes[Site.parse(site).name].decode(f)

    def split(self, site: "str | Site", x: torch.Tensor) -> SiteState:
        """``x -> (f, eps)`` with ``eps = x - dec(f)``; at a component site ``(None, x)``."""
        if not self.has_sae(site):
            return SiteState(None, x)
        f = self.encode(site, x)
        return SiteState(f, x - self.decode(site, f))

    def combine(self, site: "str | Site", state: SiteState) -> torch.Tensor:
        """``dec(f) + eps`` (or the vector itself at a component site)."""
        if state.features is None:
            return state.vector
        return self.decode(site, state.features) + state.vector

    def decoder_directions(self, site: "str | Site") -> torch.Tensor:
        """``[F, d]``: ``dec(e_i) - dec(0)``, the (affine) decoder's direction for each feature."""
        name = Site.parse(site).name
        if name not in self._dirs:
            sae = self.saes[name]
            with torch.no_grad():
                eye = torch.eye(int(sae.cfg.d_sae), device=sae.W_dec.device, dtype=sae.W_dec.dtype)
                zero = torch.zeros(1, int(sae.cfg.d_sae), device=sae.W_dec.device, dtype=sae.W_dec.dtype)
                self._dirs[name] = (sae.decode(eye) - sae.decode(zero)).detach()
        return self._dirs[name]

    # --- hook installation ----------------------------------------------------------------
    @contextmanager
    def hooks(self, fns: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
        """Install ``{site name: x -> y}`` as forward hooks for the duration of the context."""
        fwd = [(Site.parse(s).hook_name, _as_hook(fn)) for s, fn in fns.items()]
        with self.model.hooks(fwd_hooks=fwd):
            yield

    @contextmanager
    def record(self, sites: Optional[list[str]] = None) -> Iterator[dict[str, SiteState]]:
        """Record every site's nodes (detached) during the forward passes run inside the context."""
        store: dict[str, SiteState] = {}

        def make(site: str):
            def fn(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    st = self.split(site, x.detach())
                store[site] = SiteState(
                    None if st.features is None else st.features.detach(), st.vector.detach()
                )
                return x

            return fn

        names = sites if sites is not None else self.site_names
        with self.hooks({s: make(s) for s in names}):
            yield store

    @contextmanager
    def leaves(self, sites: Optional[list[str]] = None) -> Iterator[dict[str, SiteState]]:
        """Splice with leaf nodes (``requires_grad``) and the straight-through path (DESIGN §4).

        After ``metric.backward()`` inside the context, ``store[site].features.grad`` and
        ``store[site].vector.grad`` hold the node gradients.
        """
        store: dict[str, SiteState] = {}

        def make(site: str):
            def fn(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    st = self.split(site, x)
                vec = st.vector.detach().requires_grad_()
                if st.features is None:
                    y = vec + (x - x.detach())
                    store[site] = SiteState(None, vec)
                else:
                    feats = st.features.detach().requires_grad_()
                    y = self.decode(site, feats) + vec + (x - x.detach())
                    store[site] = SiteState(feats, vec)
                return y

            return fn

        names = sites if sites is not None else self.site_names
        with self.hooks({s: make(s) for s in names}):
            yield store


def default_component_sites(model: HookedTransformer) -> list[str]:
    """Every ``resid.L``, ``attn.L``, ``mlp.L`` of the model (the RelP paper's components)."""
    return [s.name for s in all_sites(model.cfg.n_layers, kinds=("resid", "attn", "mlp"))]


def make_splice(
    model: HookedTransformer,
    level: str,
    saes: Optional[Mapping[str, object]] = None,
    sites: Optional[Iterable[str]] = None,
) -> Splice:
    """The splice a scoring level needs: SAEs at their sites (feature) or bare sites (component)."""
    if level == "feature":
        if not saes:
            raise ValueError("feature-level scores need SAEs (--saes); use level='component' without them")
        chosen = {Site.parse(s).name for s in sites} if sites is not None else None
        picked = {k: v for k, v in saes.items() if chosen is None or Site.parse(k).name in chosen}
        if not picked:
            raise ValueError(f"none of the requested sites {sorted(chosen or [])} has an SAE")
        return Splice(model, picked)
    return Splice(model, None, list(sites) if sites is not None else default_component_sites(model))



def _as_hook(fn: Callable[[torch.Tensor], torch.Tensor]):
    def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens signature)
        return fn(act)

    return hook


def run_to_final_resid(
    model: HookedTransformer,
    tokens: Optional[torch.Tensor] = None,
    *,
    resid: Optional[torch.Tensor] = None,
    start_at_layer: int = 0,
) -> torch.Tensor:
    """Final residual stream ``[B, T, d]`` (before ``ln_final``), from tokens or from the residual
    stream entering block ``start_at_layer`` (a cached clean ``resid_pre``)."""
    n = model.cfg.n_layers
    if resid is None:
        return model(tokens, stop_at_layer=n)
    return model(resid, start_at_layer=start_at_layer, stop_at_layer=n)


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
