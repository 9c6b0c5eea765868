"""Sites (hook points where an SAE may be spliced) and node ids (docs/design.md §3).

A site is ``embed`` (``blocks.0.hook_resid_pre``), ``resid.L`` (``blocks.L.hook_resid_post``),
``attn.L`` (``blocks.L.hook_attn_out``), ``mlp.L`` (``blocks.L.hook_mlp_out``), ``z.L``
(``blocks.L.attn.hook_z``: the attention heads' outputs before ``W_O``, flattened to
``n_heads * d_head``; Gemma Scope 2's attention SAEs read it) or ``tc.L`` (a transcoder: it reads the
MLP's input, ln2's output, and writes ``blocks.L.hook_mlp_out``). ``z.L`` plays the role of ``attn.L``
and ``tc.L`` that of ``mlp.L`` in the site graph (a layer has one or the other).

Node ids:
    feature   ``resid.3/1234@7``  (``resid.3/1234`` with positions summed; ``tc.3/1234@7`` a transcoder's)
    error     ``resid.3/err@7``
    component ``mlp.3@7``
    output    ``metric``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

from featcirc.vocabulary import NodeKind  # noqa: F401  (re-exported)

SiteKind = Literal["embed", "resid", "attn", "z", "mlp", "tc"]
SITE_KINDS: tuple[str, ...] = ("embed", "resid", "attn", "z", "mlp", "tc")
RESID_KINDS: tuple[str, ...] = ("embed", "resid")
"""Sites that hold the whole residual stream (``embed`` is the stream entering block 0)."""
METRIC = "metric"

_HOOK_OF_KIND = {"resid": "hook_resid_post", "attn": "hook_attn_out", "z": "attn.hook_z",
                 "mlp": "hook_mlp_out"}
_SITE_RE = re.compile(r"^(embed|(resid|attn|z|mlp|tc)\.(\d+))$")
_NODE_RE = re.compile(r"^(?P<site>embed|(?:resid|attn|z|mlp|tc)\.\d+)(?:/(?P<feat>\d+|err))?(?:@(?P<pos>[A-Za-z0-9_+-]+))?$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_+-]+$")


@dataclass(frozen=True, order=True)
class Site:
    """A hook point: ``kind`` in embed/resid/attn/z/mlp/tc, ``layer`` (-1 for embed).

    A site equals, and hashes like, its name (``Site("resid", 3) == "resid.3"``), so a dict keyed by
    sites can be read with names (as in the saved score files) without parsing them again.
    """

    kind: str
    layer: int

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Site):
            return (self.kind, self.layer) == (other.kind, other.layer)
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}; expected one of {SITE_KINDS}")
        if (self.kind == "embed") != (self.layer == -1):
            raise ValueError(f"site {self.kind!r} cannot have layer {self.layer}")

    @property
    def name(self) -> str:
        return "embed" if self.kind == "embed" else f"{self.kind}.{self.layer}"

    @property
    def hook_name(self) -> str:
        if self.kind == "embed":
            return "blocks.0.hook_resid_pre"
        if self.kind == "tc":  # a transcoder writes the MLP's output (it reads the MLP's input)
            return f"blocks.{self.layer}.hook_mlp_out"
        return f"blocks.{self.layer}.{_HOOK_OF_KIND[self.kind]}"

    @property
    def is_transcoder(self) -> bool:
        """True for transcoder sites (``tc.L``): features encoded from the MLP's input, decoded to its output."""
        return self.kind == "tc"

    @property
    def is_mlp(self) -> bool:
        """True for the MLP's output (``mlp.L``) and a transcoder replacing the MLP (``tc.L``)."""
        return self.kind in ("mlp", "tc")

    @property
    def is_resid(self) -> bool:
        """True for sites holding the whole residual stream (``embed``, ``resid.L``)."""
        return self.kind in RESID_KINDS

    @property
    def is_attention(self) -> bool:
        """True for attention outputs (``attn.L``) and the heads' outputs (``z.L``)."""
        return self.kind in ("attn", "z")

    @property
    def block(self) -> int:
        """The transformer block this site is computed in (embed: block 0's input)."""
        return max(self.layer, 0)

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: "str | Site") -> "Site":
        if isinstance(name, Site):
            return name
        m = _SITE_RE.match(name)
        if not m:
            raise ValueError(
                f"not a site: {name!r}; sites are 'embed', 'resid.L', 'attn.L', 'z.L', 'mlp.L', 'tc.L'"
            )
        if m.group(1) == "embed":
            return cls("embed", -1)
        return cls(m.group(2), int(m.group(3)))

    @classmethod
    def from_hook_name(cls, hook_name: str) -> "Site":
        if hook_name == "blocks.0.hook_resid_pre":
            return cls("embed", -1)
        m = re.match(r"^blocks\.(\d+)\.(hook_resid_post|hook_attn_out|attn\.hook_z|hook_mlp_out)$", hook_name)
        if not m:
            raise ValueError(
                f"hook {hook_name!r} is not a featcirc site; supported hooks are "
                "blocks.0.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.hook_attn_out, "
                "blocks.L.attn.hook_z, blocks.L.hook_mlp_out"
            )
        kind = {v: k for k, v in _HOOK_OF_KIND.items()}[m.group(2)]
        return cls(kind, int(m.group(1)))


_RESID_PRE_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def site_from_hook_name(hook_name: str) -> Site:
    """The site of a TransformerLens hook name, with resid_pre aliasing (docs/design.md §3): block L's
    output ``blocks.L.hook_resid_post`` enters block L+1 unchanged as ``blocks.(L+1).hook_resid_pre``,
    so ``blocks.(L+1).hook_resid_pre -> resid.L`` and ``blocks.0.hook_resid_pre -> embed``; every other
    site by its own hook (:meth:`Site.from_hook_name`, whose ``ValueError`` any other hook raises).
    The one place hook names are mapped to sites (SAE configs, set descriptions, the input checks)."""
    m = _RESID_PRE_RE.match(hook_name)
    if m and int(m.group(1)) > 0:
        return Site("resid", int(m.group(1)) - 1)
    return Site.from_hook_name(hook_name)


_TRANSCODER_IN_RE = re.compile(r"^blocks\.(\d+)\.(hook_mlp_in|ln2\.hook_normalized|hook_mlp_out)$")


def transcoder_site_from_hook_name(hook_name: str) -> Site:
    """The ``tc.L`` site of a transcoder from its SAELens input (or output) hook name: Gemma Scope 2's
    configs say ``blocks.L.hook_mlp_in`` (with ``hf_hook_name`` the ``pre_feedforward_layernorm``'s
    output), circuit-tracer's ``blocks.L.ln2.hook_normalized``; either way featcirc feeds a transcoder
    the MLP's input, ln2's output (docs/design.md §4b). ``ValueError`` for any other hook."""
    m = _TRANSCODER_IN_RE.match(hook_name)
    if not m:
        raise ValueError(f"hook {hook_name!r} is not a transcoder's; a transcoder reads blocks.L.hook_mlp_in "
                         "(or blocks.L.ln2.hook_normalized) and writes blocks.L.hook_mlp_out")
    return Site("tc", int(m.group(1)))


def hook_names_of(site: "str | Site") -> tuple[str, ...]:
    """Every hook name that :func:`site_from_hook_name` maps to ``site``: its own hook and, for
    ``resid.L``, ``blocks.(L+1).hook_resid_pre`` (which a model of L+1 layers lacks). For a transcoder site
    ``tc.L`` the input hooks its configs name, which :func:`transcoder_site_from_hook_name` maps back."""
    s = Site.parse(site)
    if s.is_transcoder:
        return (f"blocks.{s.layer}.hook_mlp_in", f"blocks.{s.layer}.ln2.hook_normalized")
    return (s.hook_name, f"blocks.{s.layer + 1}.hook_resid_pre") if s.kind == "resid" else (s.hook_name,)


def site_width(site: "str | Site", cfg) -> tuple[int, str]:
    """``(width, what)`` of a site's vectors for a model config: ``n_heads * d_head`` at ``z`` sites
    (heads flattened), ``d_model`` elsewhere; ``what`` names it for messages."""
    if Site.parse(site).kind == "z":
        return int(cfg.n_heads) * int(cfg.d_head), "n_heads * d_head"
    return int(cfg.d_model), "d_model"


def all_sites(n_layers: int, kinds: Iterable[str] = ("embed", "resid", "attn", "mlp")) -> list[Site]:
    """Every site of an ``n_layers`` model in forward order: embed, attn.0, mlp.0, resid.0, attn.1, ..."""
    kinds = set(kinds)
    out = [Site("embed", -1)] if "embed" in kinds else []
    for layer in range(n_layers):
        out += [Site(k, layer) for k in ("attn", "z", "mlp", "tc", "resid") if k in kinds]
    return out


_KIND_ORDER = {"embed": 0, "attn": 1, "z": 1, "mlp": 2, "tc": 2, "resid": 3}


def stream_index(site: "str | Site", n_layers: int) -> int:
    """Forward order of a site in the residual stream: embed 0, attn.L (or z.L) 3L+1, mlp.L (or tc.L) 3L+2,
    resid.L 3L+3, metric 3*n_layers+1. Every edge of the site graph strictly increases it."""
    if site == METRIC:
        return 3 * n_layers + 1
    s = Site.parse(site)
    return 0 if s.kind == "embed" else 3 * s.layer + _KIND_ORDER[s.kind]


def sort_sites(sites: Iterable["str | Site"]) -> list[Site]:
    """Sites in forward order (embed first; within a block attn/z, mlp, resid)."""
    return sorted((Site.parse(s) for s in sites), key=lambda s: (s.layer, _KIND_ORDER[s.kind]))


@dataclass(frozen=True)
class NodeRef:
    """A parsed node id."""

    site: Optional[Site]
    kind: str  # feature / error / component / metric
    feature: Optional[int] = None
    position: "int | str | None" = None  # a slot label (``S2``, ``END-1``) in a role- or end-aligned graph

    @property
    def id(self) -> str:
        return node_id(self.site, self.kind, self.feature, self.position)

    def attributes(self, score: float, activation: float, n_layers: Optional[int] = None) -> dict:
        """The node's attributes in a circuit graph (docs/design.md §8): ``site``, ``layer``, ``kind``,
        ``feature`` (-1 unless a feature), ``position`` (-1 when summed), ``score``, ``activation``.
        The metric node has ``site="metric"`` and ``layer=n_layers``. Needs an integer position (a
        labelled one is mapped to its slot index by the caller, see :func:`featcirc.circuit.full_graph`)."""
        if self.kind == "metric":
            return dict(site=METRIC, layer=n_layers, kind="metric", feature=-1, position=-1,
                        score=float(score), activation=float(activation))
        return dict(site=self.site.name, layer=self.site.layer, kind=self.kind,
                    feature=-1 if self.feature is None else int(self.feature),
                    position=-1 if self.position is None else int(self.position),
                    score=float(score), activation=float(activation))


def node_id(
    site: "Site | str | None",
    kind: str,
    feature: Optional[int] = None,
    position: "int | str | None" = None,
) -> str:
    """Format a node id (docs/design.md §3); ``position=None`` means summed over positions. A
    ``str`` position is a slot label of a role- or end-aligned graph (``S2``, ``S1+1``, ``END-2``;
    docs/design.md §14): letters, digits, ``_``, ``+`` and ``-`` only."""
    if kind == "metric":
        return METRIC
    name = Site.parse(site).name
    if kind == "feature":
        if feature is None:
            raise ValueError("a feature node needs a feature index")
        base = f"{name}/{int(feature)}"
    elif kind == "error":
        base = f"{name}/err"
    elif kind == "component":
        base = name
    else:
        raise ValueError(f"unknown node kind {kind!r}")
    if position is None:
        return base
    if isinstance(position, str) and not position.isdigit():
        if not _LABEL_RE.match(position):
            raise ValueError(f"not a slot label: {position!r} (letters, digits, _, + and - only)")
        return f"{base}@{position}"
    return f"{base}@{int(position)}"


def parse_node_id(nid: str) -> NodeRef:
    """Inverse of :func:`node_id`: the position is an ``int`` when all digits, else the slot label."""
    if nid == METRIC:
        return NodeRef(None, "metric")
    m = _NODE_RE.match(nid)
    if not m:
        raise ValueError(f"not a node id: {nid!r}")
    site = Site.parse(m.group("site"))
    pos = m.group("pos")
    if pos is not None and pos.isdigit():
        pos = int(pos)
    feat = m.group("feat")
    if feat is None:
        return NodeRef(site, "component", None, pos)
    if feat == "err":
        return NodeRef(site, "error", None, pos)
    return NodeRef(site, "feature", int(feat), pos)


def card_key(site: "str | Site", index: int) -> str:
    """An SAE feature's key, as in ``cards.json`` and ``--feature``: ``"resid.2/123"``."""
    return f"{Site.parse(site).name}/{int(index)}"


def parse_card_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`card_key`; ``ValueError`` for anything else."""
    site, sep, idx = str(key).partition("/")
    if not sep or not idx.isdigit():
        raise ValueError(f"not a feature: {key!r}; write SITE/INDEX, e.g. resid.2/123")
    return Site.parse(site).name, int(idx)
