"""Candidate nodes for the edge pass: the ``max_nodes`` nodes of largest ``|score|``.

Edges are computed among candidates only, so re-thresholding nodes down to that size needs no model.
Within a site, candidates are its feature nodes (position, feature) then its vector nodes (position),
each list sorted; ``position == -1`` means summed over positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from featcirc.attribution.scores import NodeScores
from featcirc.sites import Site, node_id, sort_sites


@dataclass
class SiteCandidates:
    """Candidate nodes of one site: features ``(feat_pos, feat_idx)`` then vector nodes ``vec_pos``."""

    site: Site
    feat_pos: torch.Tensor  # [nf] long
    feat_idx: torch.Tensor  # [nf] long
    vec_pos: torch.Tensor  # [nv] long
    ids: list[str]  # nf + nv node ids, in that order

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_features(self) -> int:
        return int(self.feat_idx.numel())

    @property
    def positions(self) -> torch.Tensor:
        """``[n]`` the position of every candidate (features first)."""
        return torch.cat([self.feat_pos, self.vec_pos])


def select_candidates(nodes: NodeScores, max_nodes: Optional[int]) -> dict[Site, SiteCandidates]:
    """The ``max_nodes`` nodes of largest nonzero ``|score|`` (all nonzero ones if None), by site.
    Ties are broken by site, kind, position and feature, so the choice is deterministic."""
    summed = nodes.aggregation == "sum"
    sites = sort_sites(nodes.sites)
    order = {s: i for i, s in enumerate(sites)}
    # one flat table: |score|, site, kind (0 feature, 1 vector), position, feature
    rows = []
    for s in sites:
        vec = nodes.vectors[s].reshape(-1)
        p = torch.nonzero(vec).flatten()
        rows.append(torch.stack([vec[p].abs().double(), torch.full_like(p, order[s]).double(),
                                 torch.ones_like(p).double(), (p if not summed else p - 1).double(),
                                 torch.full_like(p, -1).double()], 1))
        if s in nodes.features:
            feats = nodes.features[s].reshape(1 if summed else -1, nodes.features[s].shape[-1])
            nz = torch.nonzero(feats)
            pos = nz[:, 0] if not summed else torch.full_like(nz[:, 0], -1)
            rows.append(torch.stack([feats[nz[:, 0], nz[:, 1]].abs().double(),
                                     torch.full_like(pos, order[s]).double(), torch.zeros_like(pos).double(),
                                     pos.double(), nz[:, 1].double()], 1))
    table = torch.cat(rows) if rows else torch.zeros(0, 5, dtype=torch.float64)
    keys = [table[:, 4], table[:, 3], table[:, 2], table[:, 1], -table[:, 0]]  # least significant first
    perm = torch.arange(table.shape[0])
    for k in keys:  # stable sorts from the least to the most significant key
        perm = perm[torch.sort(k[perm], stable=True).indices]
    if max_nodes is not None:
        perm = perm[:max_nodes]
    chosen = table[perm]
    out: dict[Site, SiteCandidates] = {}
    for s in sites:
        mine = chosen[chosen[:, 1] == order[s]]
        f = mine[mine[:, 2] == 0]
        v = mine[mine[:, 2] == 1]
        f = f[torch.argsort(f[:, 3] * (1 << 30) + f[:, 4])] if len(f) else f
        v = v[torch.argsort(v[:, 3])] if len(v) else v
        fp, fi, vp = f[:, 3].long(), f[:, 4].long(), v[:, 3].long()
        pos = lambda p: None if p < 0 else p  # noqa: E731
        ids = [node_id(s, "feature", i, pos(p)) for p, i in zip(fp.tolist(), fi.tolist())]
        ids += [node_id(s, nodes.vector_kind, None, pos(p)) for p in vp.tolist()]
        out[s] = SiteCandidates(s, fp, fi, vp, ids)
    return out
