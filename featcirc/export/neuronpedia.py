"""Circuits as attribution-graph JSON for Neuronpedia and circuit-tracer's viewer.

Schema: Neuronpedia ``apps/webapp/app/api/graph/graph-schema.json`` (bundled as
``featcirc/export/schemas/neuronpedia-graph.schema.json``; :func:`validate_neuronpedia` checks the
structure with it), the JSON that circuit-tracer's
``create_graph_files`` writes (``circuit_tracer/frontend/graph_models.py``). Both viewers key a
node by ``featureId = f"{layer}_{feature}_{ctx_idx}"`` (plus a suffix for error nodes), so two
nodes with the same layer, ``feature`` number and position are merged into one. The mapping below
keeps every (site, layer, feature, position) distinct.

=============  ==================================================================================
our node       attribution-graph node
=============  ==================================================================================
feature        ``feature_type="cross layer transcoder"``, ``feature`` = :func:`feature_number`
               ``= cantor(site code, SAE feature index)`` with ``metadata.schema_version = 1``
               (circuit-tracer's encoding: its viewer shows ``L{layer}/{index}`` by un-pairing).
               The site code is :func:`featcirc.sites.stream_index` (embed 0, attn.L / z.L 3L+1,
               mlp.L 3L+2, resid.L 3L+3), not the layer as in circuit-tracer, because featcirc has
               up to three sites per layer; a transcoder ``tc.L`` has its own code
               :data:`TC_SITE_CODE_BASE` ``+ L`` (it takes mlp.L's place in the graph, but an SAE set
               may hold both, and their feature files share one directory). Feature files for the
               viewer's feature panel are named ``{feature}.json`` (:mod:`featcirc.export.graph_files`).
               A transcoder's feature (``tc.3/1234@7``: encoded from the MLP's input, decoded to
               its output) is what circuit-tracer's own graphs hold: ``feature_type="cross layer
               transcoder"`` with ``layer`` = the transcoder's layer, ``clerp`` ``tc.3 f1234 @7``;
               ``metadata.info["features"]`` says which sites are transcoders
               (:func:`feature_description`; ``kind="transcoder"`` when every feature node is one).
error          ``feature_type="mlp reconstruction error"`` at every site (attn, z, mlp, tc, resid,
               embed; for a transcoder it is what the name says: the MLP output the transcoder
               does not reconstruct), ``feature = -(1 + site code)`` (unique per site, negative like
               circuit-tracer's ``-1``: no feature dashboard). The true site is in ``clerp``,
               ``Err: resid.2 “ wall”`` (``Err: resid.2`` when positions are summed), in
               ``node_id`` and in the extra ``site`` key. Why the type stays: it is the one error
               type circuit-tracer's viewer and Neuronpedia's replacement / completeness scores
               count as error (the scores sum the error nodes by this exact string). Neuronpedia
               also knows ``"lorsa error"`` (labelled ``Err: attn``), but its score worker skips
               the scores of any graph holding a lorsa node, and it has no type for residual,
               embedding or component sites. circuit-tracer's viewer shows our ``clerp``;
               Neuronpedia's webapp replaces the label of this type by ``Err: mlp “…”`` whatever
               ``clerp`` says, so on Neuronpedia the site shows only in ``node_id`` and ``site``.
component      as an error node (an opaque vector without dashboard, same type and ``feature``
               rule); ``clerp`` = the node's own label, ``attn.0 @3 “ keys”`` (``attn.0`` when
               summed).
token          one ``feature_type="embedding"`` node per prompt token (``node_id`` ``token@3``,
               ``ctx_idx`` = position, ``layer="E"``), as circuit-tracer's token nodes: the viewers
               draw the prompt under the graph from them. ``feature = -(1 + position)``
               (circuit-tracer uses the position; a non-negative number could equal an ``embed``
               feature's number in the same row and position). Links: token ``p`` -> every node at
               the ``embed`` site and position ``p`` (feature, error or component), weight = that
               node's score (circuit-tracer's convention: a token node links to the nodes it feeds).
               The weight is what featcirc's edge rule (docs/design.md §7) gives an edge into an
               ``embed`` node from its only input, the token's embedding, to first order: the
               whole score of the node passes through its token. Summed graphs (no positions) and
               nodes with a non-finite score get no token link.
metric         ``feature_type="logit"``, ``is_target_logit=True``, ``layer = n_layers + 1`` (the
               viewers move logit nodes above the top layer anyway). With ``example`` (one prompt
               pair's own numbers, ``summary.json["example"]``) it is labelled like
               circuit-tracer's logit nodes, the clean answer with its probability on the example
               prompt, ``Output " has" (p=0.930)``: ``token_prob`` = that softmax probability
               (whole vocabulary), ``activation`` = the logit difference on that prompt. Without
               it, ``Output "mean logit diff over 32 pairs = 6.490" (p=n/a)``: the mean over the
               pairs is not this prompt's value and there is no token probability to show, so
               the label prints none (``n/a``; the viewers parse the text after ``(p=`` only to
               order several logit nodes of one position, and there is one) and ``token_prob``
               is 1.0, the weight of the graph's only output node in Neuronpedia's scores (they
               are ratios: any positive weight gives the same scores), not a probability.
               ``score`` keeps featcirc's attribute, the mean metric over the pairs;
               ``metadata.info["metric"]`` and the ``description`` give the example prompt's logit
               difference and the mean over pairs.
=============  ==================================================================================

``metadata.scan`` is Neuronpedia's model id: its upload (``apps/webapp/app/api/graph/save-to-db/
route.ts``) rejects a ``scan`` or ``slug`` with any character other than letters, digits, ``_``,
``.``, ``-`` (:data:`NEURONPEDIA_ID_RE`) and a ``scan`` that is not a model on Neuronpedia. The
default is the run's model reduced to that (:func:`neuronpedia_model_id`: ``google/gemma-3-270m``
-> ``gemma-3-270m``). circuit-tracer's local viewer needs a ``./`` path there instead to find
feature files, which Neuronpedia rejects, so ``graph_files/{slug}.json`` carries its own ``scan``
(:mod:`featcirc.export.graph_files`) and only ``neuronpedia.json`` is for upload.

``layer`` is the transformer layer as a string and ``"E"`` for the ``embed`` site, which the
viewers put in the embedding row with the tokens. ``ctx_idx`` is the token position (0 when
positions are summed; the metric sits at the last prompt token). ``influence`` follows
circuit-tracer: nodes sorted by ``|score|`` (descending, ties by id), influence = cumulative
``|score|`` up to and including the node / total, so the viewer's pruning slider (a
cumulative-influence fraction in [0, 1]) keeps the nodes carrying that share of the total effect;
token and metric nodes have ``influence=None`` and are always shown. Extra keys ``site``, ``kind``,
``score`` and ``position`` carry featcirc's attributes; scores and weights keep featcirc's sign
(positive: supports the clean answer). ``qParams.clickedId`` is the feature node of largest
``|score|``, so the feature panel opens on it. Non-finite numbers become ``null``, and no absolute
file path is written (paths in ``info`` are cut to their file name).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from importlib import resources
from typing import Any, Iterable, Optional

import jsonschema
import networkx as nx
from jsonschema.exceptions import best_match

from featcirc.circuit import graph_n_layers, magnitude, node_label
from featcirc.io import jsonable, write_text
from featcirc.export.names import NEURONPEDIA_ID_RE, SLUG_RE, check_scan, check_slug, neuronpedia_model_id, slug_part
from featcirc.sites import METRIC, Site, stream_index

SCHEMA_VERSION = 1
"""``metadata.schema_version``: 1 = feature numbers are Cantor pairs (circuit-tracer >= 0.3)."""

_P_RE = re.compile(r"\(p=([^)]*)\)")
_ABS_PATH_RE = re.compile(r"(?<![\w.~:/\\-])(?:[A-Za-z]:[\\/]|/)(?:[^\s\"'/\\]+[\\/])+([^\s\"'/\\]*)")
ERROR_FEATURE_TYPE = "mlp reconstruction error"
FEATURE_FEATURE_TYPE = "cross layer transcoder"


# ---------------------------------------------------------------------------------- numbering
def cantor_pair(x: int, y: int) -> int:
    """Cantor pairing ``(x + y)(x + y + 1)/2 + y`` of two non-negative integers (circuit-tracer's
    feature encoding; the viewers un-pair it with ``cantorUnpair``)."""
    if x < 0 or y < 0:
        raise ValueError(f"cantor_pair needs non-negative integers, got ({x}, {y})")
    s = x + y
    return s * (s + 1) // 2 + y


def cantor_unpair(z: int) -> tuple[int, int]:
    """Inverse of :func:`cantor_pair`."""
    if z < 0:
        raise ValueError(f"cantor_unpair needs a non-negative integer, got {z}")
    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


TC_SITE_CODE_BASE = 10_000
"""Site codes of transcoder sites: ``tc.L`` is ``TC_SITE_CODE_BASE + L``. Every other site's code is its
stream index (``3L + 1 .. 3L + 3``), which stays below it for any model of fewer than 3,332 layers, so an
``mlp.L`` SAE feature and a ``tc.L`` transcoder feature never share a feature number or viewer key."""


def site_code(site: str) -> int:
    """A site's number in feature numbers: :func:`featcirc.sites.stream_index` (unique per site
    of a model; it does not depend on the layer count for non-metric sites), and for a transcoder
    site ``tc.L`` :data:`TC_SITE_CODE_BASE` ``+ L`` (``tc.L`` shares mlp.L's stream index)."""
    s = Site.parse(site)
    if s.is_transcoder:
        return TC_SITE_CODE_BASE + s.layer
    return stream_index(s, 0)


def feature_number(site: str, index: int) -> int:
    """The attribution-graph ``feature`` of SAE (or transcoder) feature ``index`` at ``site``:
    ``cantor_pair(site_code(site), index)``; also the name of its feature file (``{n}.json``)."""
    return cantor_pair(site_code(site), int(index))


def vector_feature_number(site: str) -> int:
    """The ``feature`` of a site's error or component node: ``-(1 + site_code(site))``."""
    return -(1 + site_code(site))


def feature_description(sites: Iterable[str]) -> dict:
    """What a graph's feature nodes are (``metadata.info["features"]``), from the sites of its
    feature nodes: ``kind`` ``"transcoder"`` (every one a transcoder feature, ``tc.L``: encoded from
    the MLP's input, decoded to the MLP's output, as circuit-tracer's per-layer transcoders),
    ``"sae"`` (none), ``"mixed"`` or ``"none"`` (no feature node), with the transcoder sites and
    the SAE sites in forward order."""
    named = sorted({Site.parse(s) for s in sites}, key=lambda s: (s.layer, site_code(s)))
    tc = [s.name for s in named if s.is_transcoder]
    sae = [s.name for s in named if not s.is_transcoder]
    kind = "none" if not named else "transcoder" if not sae else "sae" if not tc else "mixed"
    text = {"transcoder": "transcoder features: each tc.L feature is encoded from block L's MLP input and "
                          "decoded to its MLP output (feature_type 'cross layer transcoder', layer L)",
            "sae": "SAE features: each is encoded from and decoded to its own site",
            "mixed": "SAE features and transcoder features (tc.L: encoded from block L's MLP input, decoded to "
                     "its MLP output)",
            "none": "no feature nodes"}[kind]
    return {"kind": kind, "transcoder_sites": tc, "sae_sites": sae, "description": text}


def graph_digest(G: nx.DiGraph) -> str:
    """sha256 of a circuit's nodes and edges with their attributes (not ``G.graph``, which holds
    timings): equal for the same circuit, so it identifies a run's result."""
    nodes = sorted((str(n), jsonable(d)) for n, d in G.nodes(data=True))
    edges = sorted((str(u), str(v), jsonable(d)) for u, v, d in G.edges(data=True))
    blob = json.dumps([nodes, edges], sort_keys=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def default_slug(G: nx.DiGraph, *, model: Optional[str] = None, data_name: Optional[str] = None,
                 method: Optional[str] = None) -> str:
    """``{model}-{data}-{method}-{hash8}``: the model, the task or data file name, the scoring
    method (default ``G.graph["method"]``) and the first 8 hex digits of :func:`graph_digest`, so
    two different runs never share a slug (a second graph would replace the first in a viewer)."""
    gi = _graph_info(G)
    parts = [model or gi.get("model") or "featcirc", data_name, method or G.graph.get("method"),
             graph_digest(G)[:8]]
    return "-".join(slug_part(p) for p in parts if p)


def strip_paths(x: Any) -> Any:
    """Copy of ``x`` with every absolute file path inside a string cut to its last component
    (``/home/me/data/sva.jsonl`` -> ``sva.jsonl``), recursively."""
    if isinstance(x, str):
        return _ABS_PATH_RE.sub(lambda m: m.group(1) or "", x)
    if isinstance(x, dict):
        return {k: strip_paths(v) for k, v in x.items()}
    if isinstance(x, list):
        return [strip_paths(v) for v in x]
    return x


def display_token(token: str) -> str:
    """A token as the viewers print it (circuit-tracer's ``process_token``): newline, tab and
    carriage return become ``⏎``, ``→``, ``↵``."""
    return str(token).replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


# ---------------------------------------------------------------------------------- influence
def influence_scores(G: nx.DiGraph) -> dict[str, float]:
    """circuit-tracer-style cumulative influence of every non-metric node (see the module doc).

    Nodes ranked by ``|score|`` descending (ties by id); ``influence(n)`` = sum of ``|score|`` of
    the nodes ranked up to n / the total, in (0, 1], the last node exactly 1. Non-finite scores
    count as 0; when every score is 0 each node gets 1.0.
    """
    ranked = sorted(((n, magnitude(d.get("score"))) for n, d in G.nodes(data=True) if n != METRIC),
                    key=lambda t: (-t[1], t[0]))
    total = sum(m for _, m in ranked)
    out, cum = {}, 0.0
    for n, m in ranked:
        cum += m
        out[n] = min(cum / total, 1.0) if total > 0 else 1.0
    if ranked and total > 0:
        out[ranked[-1][0]] = 1.0
    return out


def _opt(x: Any) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _graph_info(G: nx.DiGraph) -> dict:
    gi = G.graph.get("info") or {}
    if isinstance(gi, str):  # a graph read back from GraphML
        try:
            gi = json.loads(gi)
        except json.JSONDecodeError:
            gi = {}
    return gi if isinstance(gi, dict) else {}


_EXAMPLE_NUMBERS = ("metric_clean", "p_clean_answer")


def check_example(example: Any) -> dict:
    """``example`` (``summary.json["example"]``: one prompt pair's own numbers) checked: a dict with
    a string ``clean_answer``, a finite ``metric_clean`` and ``p_clean_answer`` in [0, 1]; the
    other keys (``prompt``, ``patch_prompt``, ``patch_answer``, ``metric_patch``,
    ``p_patch_answer``, ``n_pairs_mean``) are optional. Returns it; raises ``ValueError``."""
    if not isinstance(example, dict):
        raise ValueError(f"example must be a dict (summary.json's 'example'), got {type(example).__name__}")
    bad = [k for k in _EXAMPLE_NUMBERS if _opt_number(example.get(k)) is None]
    if not isinstance(example.get("clean_answer"), str):
        bad.insert(0, "clean_answer")
    if bad:
        raise ValueError(f"example needs a string 'clean_answer', a finite 'metric_clean' and 'p_clean_answer'; "
                         f"missing or invalid: {bad}")
    if not 0.0 <= float(example["p_clean_answer"]) <= 1.0:
        raise ValueError(f"example p_clean_answer={example['p_clean_answer']} is not a probability")
    return example


def _opt_number(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return _opt(x)


def _quoted(text: str) -> str:
    """Text for inside ``Output "..."``: the viewers take the token as the text between the first
    two ``"``, so a ``"`` in it becomes ``“``."""
    return display_token(text).replace('"', "“")


def metric_clerp(m: Optional[float], answers: Optional[tuple[str, str]] = None, *,
                 n_pairs: Optional[int] = None, example: Optional[dict] = None) -> str:
    """The metric node's label (module docstring). With ``example``: circuit-tracer's logit label,
    the clean answer and its probability on the example prompt, ``Output " has" (p=0.930)``.
    Without: the mean logit difference ``m`` over ``n_pairs`` pairs, ``Output "mean logit diff
    over 32 pairs = 6.490" (p=n/a)`` (with ``answers``: ``mean logit[ is] - logit[ are] ...``),
    and no probability."""
    if example is not None:
        check_example(example)
        return f'Output "{_quoted(example["clean_answer"])}" (p={float(example["p_clean_answer"]):.3f})'
    name = "logit diff" if not answers else f"logit[{_quoted(answers[0])}] - logit[{_quoted(answers[1])}]"
    over = f" over {int(n_pairs)} pairs" if n_pairs else " over the pairs"
    value = f" = {m:.3f}" if m is not None and math.isfinite(m) else ""
    return f'Output "mean {name}{over}{value}" (p=n/a)'


def _metric_info(mean: Optional[float], n_pairs: Optional[int], answers: Optional[tuple[str, str]],
                 example: Optional[dict]) -> tuple[dict, str]:
    """``metadata.info["metric"]`` and a sentence for the description: the example prompt's own
    numbers apart from the mean over pairs."""
    if example is not None:
        answers = (example["clean_answer"], example.get("patch_answer")) if example.get("patch_answer") is not None \
            else answers
        n_pairs = example.get("n_pairs_mean") or n_pairs
    m_name = (f"logit(“{display_token(answers[0])}”) - logit(“{display_token(answers[1])}”)" if answers
              else "logit(clean answer) - logit(patch answer)")
    pairs = f"{int(n_pairs)} prompt pairs" if n_pairs else "the prompt pairs"
    info: dict[str, Any] = {"definition": f"m = {m_name} at the last prompt position",
                            "mean_over_pairs": _opt(mean), "n_pairs": int(n_pairs) if n_pairs else None}
    mean_txt = f"{mean:.3f}" if mean is not None and math.isfinite(mean) else "unknown"
    if example is None:
        info["output_node"] = "the mean of m over the pairs; no token probability (p=n/a)"
        text = (f"Output node: m = {m_name}, its mean over {pairs} ({mean_txt}), not this prompt's value; "
                "the graph's node scores are means over the same pairs.")
        return info, text
    ex = {k: example.get(k) for k in ("clean_answer", "patch_answer", "metric_clean", "metric_patch",
                                      "p_clean_answer", "p_patch_answer") if example.get(k) is not None}
    info["example"] = ex
    info["output_node"] = "the clean answer on this prompt: token_prob = its probability, activation = m on this prompt"
    patch = (f", {float(example['metric_patch']):.3f} on its patch prompt"
             if _opt_number(example.get("metric_patch")) is not None else "")
    text = (f"Output node: the clean answer “{display_token(example['clean_answer'])}”, probability "
            f"{float(example['p_clean_answer']):.3f} on this prompt. m = {m_name} is "
            f"{float(example['metric_clean']):.3f} on this prompt{patch}; the node scores are means over "
            f"{pairs}, whose mean m is {mean_txt}.")
    return info, text


# ---------------------------------------------------------------------------------- the graph
def to_neuronpedia(G: nx.DiGraph, *, prompt: str, prompt_tokens: Iterable[str], slug: Optional[str] = None,
                   scan: Optional[str] = None, data_name: Optional[str] = None, node_threshold: float = 1.0,
                   info: Optional[dict] = None, answers: Optional[tuple[str, str]] = None,
                   feature_json_base_url: Optional[str] = None, example: Optional[dict] = None,
                   token_slots: Optional[Iterable[str]] = None) -> dict:
    """A circuit as attribution-graph JSON (mapping in the module docstring).

    ``prompt`` / ``prompt_tokens``: one example prompt and its tokens as strings; for per-position
    circuits every node position must index a token. ``slug``: the graph's name (letters, digits,
    ``-``, ``_``, ``.``), default :func:`default_slug` (with ``data_name``, the task or data file
    name). ``scan``: Neuronpedia's model id the graph is filed under (:func:`check_scan`: letters,
    digits, ``_``, ``.``, ``-``, else ``ValueError``), default
    :func:`neuronpedia_model_id` of ``G.graph["info"]["model"]``, else ``"featcirc"``
    (:mod:`featcirc.export.graph_files` swaps in the local viewer's ``./`` path itself).
    ``node_threshold``: the viewer's default pruning, a cumulative-influence fraction in [0, 1]
    (1.0 shows every node), not the ``|score|`` threshold of :func:`featcirc.circuit.prune` (that
    one goes to ``metadata.pruning_settings``). ``info``: merged into ``metadata.info``
    (description, creator_name, ...); the metric's sentence is appended to its ``description``.
    ``answers``: the clean and patch answer tokens, for the metric label without ``example``.
    ``feature_json_base_url``: where feature files are served for Neuronpedia
    (``metadata.feature_details.feature_json_base_url``; the files of
    :func:`featcirc.features.tracer_files.write_tracer_features`). ``example``: the example
    pair's own numbers (``summary.json["example"]``, :func:`check_example`; its ``prompt``, if
    given, must be ``prompt``): the metric node then shows the clean answer with its real
    probability on that prompt; without it the label says the value is the mean over pairs and
    shows no probability (module docstring, "metric").
    ``token_slots``: for a graph aligned by role or from the end (nodes with a ``slot`` attribute,
    docs/design.md §14), the slot label of each of ``prompt_tokens`` (the example prompt's own
    tokens): a node's ``ctx_idx`` is then the example's token at its slot, its ``clerp`` names the
    slot (``resid.3 f12 [S2] “ Susan”``), and nodes at slots the example lacks are left out (with
    their edges; ``metadata.info["n_nodes_not_in_example"]`` counts them).
    Neuronpedia's viewer needs a non-metric node above layer 0 to lay a graph out.
    """
    node_threshold = float(node_threshold)
    if not (0.0 <= node_threshold <= 1.0):
        raise ValueError(
            f"node_threshold={node_threshold} must be in [0, 1]: the viewers prune by cumulative "
            "influence (the share of total |score| kept), not by the |score| bound given to prune()"
        )
    tokens = [display_token(t) for t in prompt_tokens]
    if METRIC not in G:
        raise ValueError("the graph has no 'metric' node; build it with featcirc.circuit.full_graph")
    gi = _graph_info(G)
    slug = check_slug(slug) if slug is not None else default_slug(G, data_name=data_name)
    if scan is None:
        scan = neuronpedia_model_id(gi["model"]) if gi.get("model") else "featcirc"
    check_scan(scan)
    if example is not None:
        check_example(example)
        if example.get("prompt") is not None and str(example["prompt"]) != str(prompt):
            raise ValueError(f"example is for the prompt {example['prompt']!r}, not {prompt!r}: its probability "
                             "and logit difference would label another prompt's graph")
    others = [(n, d) for n, d in G.nodes(data=True) if n != METRIC]
    at: Optional[dict[str, int]] = None  # slot label -> the example's token index (aligned graphs)
    dropped: set[str] = set()
    if token_slots is not None:
        token_slots = [str(x) for x in token_slots]
        if len(token_slots) != len(tokens):
            raise ValueError(f"token_slots has {len(token_slots)} labels for {len(tokens)} prompt tokens")
        at = {label: i for i, label in enumerate(token_slots)}
        dropped = {n for n, d in others if d.get("slot") is not None and str(d["slot"]) not in at}
        others = [(n, d) for n, d in others if n not in dropped]
    per_position = any(int(d.get("position", -1)) >= 0 for _, d in others)
    if per_position and at is None:
        max_pos = max(int(d["position"]) for _, d in others)
        if max_pos >= len(tokens):
            raise ValueError(
                f"the circuit has nodes at position {max_pos} but prompt_tokens has {len(tokens)} "
                "tokens; pass the tokens of a longest prompt of the dataset (positions index them)"
            )
    n_layers = graph_n_layers(G)
    influence = influence_scores(G)

    nodes = [dict(node_id=f"token@{p}", feature=-(1 + p), layer="E", ctx_idx=p, feature_type="embedding",
                  jsNodeId=f"token@{p}", clerp=f"Emb: “{t}”", influence=None, activation=None,
                  site="token", kind="token", score=None, position=p)
             for p, t in enumerate(tokens)]
    for n, d in others:
        kind, site = d["kind"], d["site"]
        pos = int(d.get("position", -1))
        slot = d.get("slot") if at is not None else None
        if slot is not None:  # the example's own token at the node's slot
            pos = at[str(slot)]
        ctx = max(pos, 0)
        layer = "E" if site == "embed" else str(int(d["layer"]))
        if slot is not None:
            if kind not in ("feature", "error", "component"):
                raise ValueError(f"node {n!r} has unknown kind {kind!r}")
            base = node_label(n).rsplit(" @", 1)[0]
            number, ftype = ((feature_number(site, int(d["feature"])), FEATURE_FEATURE_TYPE) if kind == "feature"
                             else (vector_feature_number(site), ERROR_FEATURE_TYPE))
            clerp = f"{'Err: ' + site if kind == 'error' else base} [{slot}] “{tokens[pos]}”"
        elif kind == "feature":
            number, ftype, clerp = feature_number(site, int(d["feature"])), FEATURE_FEATURE_TYPE, node_label(n)
        elif kind in ("error", "component"):
            number, ftype = vector_feature_number(site), ERROR_FEATURE_TYPE
            if kind == "error":
                clerp = f"Err: {site}" + (f" “{tokens[pos]}”" if pos >= 0 else "")
            else:
                clerp = node_label(n) + (f" “{tokens[pos]}”" if pos >= 0 else "")
        else:
            raise ValueError(f"node {n!r} has unknown kind {kind!r}")
        nodes.append(dict(node_id=n, feature=number, layer=layer, ctx_idx=ctx, feature_type=ftype,
                          jsNodeId=n, clerp=clerp, influence=influence[n], activation=_opt(d.get("activation")),
                          site=site, kind=kind, score=_opt(d.get("score")), position=pos,
                          **({} if slot is None else {"slot": str(slot)})))
    mean = _opt(G.nodes[METRIC].get("score"))
    n_pairs = G.graph.get("n_pairs")
    if example is not None:
        label, prob, act = metric_clerp(mean, example=example), float(example["p_clean_answer"]), \
            float(example["metric_clean"])
    else:
        label, prob, act = metric_clerp(mean, answers, n_pairs=n_pairs), 1.0, mean
    nodes.append(dict(node_id=METRIC, feature=-1, layer=str(n_layers + 1),
                      ctx_idx=(len(tokens) - 1 if tokens else 0), feature_type="logit", jsNodeId=METRIC,
                      clerp=label, influence=None, activation=act, is_target_logit=True, token_prob=prob,
                      site=METRIC, kind="metric", score=mean, position=-1))

    def token_of(d: dict) -> int:
        return at[str(d["slot"])] if at is not None and d.get("slot") is not None else int(d.get("position", -1))

    links = [dict(source=f"token@{token_of(d)}", target=n, weight=float(d["score"]))
             for n, d in others
             if d["site"] == "embed" and token_of(d) >= 0 and _opt(d.get("score")) is not None]
    for u, v, d in G.edges(data=True):
        if u in dropped or v in dropped:
            continue
        w = float(d["weight"])
        if not math.isfinite(w):
            raise ValueError(f"edge {u} -> {v} has a non-finite weight {w}")
        links.append(dict(source=u, target=v, weight=w))

    meta_info: dict[str, Any] = {"generator": {"name": "featcirc", "version": _version()}}
    meta_info.update(info or {})
    if at is not None:
        meta_info["n_nodes_not_in_example"] = len(dropped)
    metric_info, metric_text = _metric_info(mean, n_pairs, answers, example)
    meta_info["metric"] = metric_info
    meta_info["features"] = feature_description(d["site"] for _, d in others if d["kind"] == "feature")
    desc = meta_info.get("description")
    desc = desc.rstrip() if isinstance(desc, str) else ""
    meta_info["description"] = (f"{desc}{'' if desc.endswith(('.', '!', '?')) else '.'} " if desc else "") + metric_text
    pruning = {name: G.graph[k] for k, name in (("node_threshold", "node_score_threshold"), ("top_k", "top_k"),
                                                ("edge_threshold", "edge_weight_threshold"))
               if G.graph.get(k) is not None}
    generation = {k: G.graph[k] for k in ("method", "level", "aggregation", "n_pairs", "edge_method",
                                          "metric_clean", "metric_patch") if G.graph.get(k) is not None}
    metadata = dict(slug=slug, scan=scan, transcoder_list=[], prompt_tokens=tokens, prompt=str(prompt),
                    node_threshold=node_threshold, schema_version=SCHEMA_VERSION,
                    info=strip_paths(jsonable(meta_info)),
                    generation_settings=strip_paths(jsonable(generation)),
                    pruning_settings=jsonable(pruning))
    if feature_json_base_url:
        metadata["feature_details"] = {"feature_json_base_url": str(feature_json_base_url).rstrip("/")}
    features = [(n, d) for n, d in others if d["kind"] == "feature"]
    top = min(features, key=lambda nd: (-magnitude(nd[1].get("score")), nd[0]))[0] if features else ""
    qparams = dict(pinnedIds=[], supernodes=[], linkType="both", clickedId=top, sg_pos="")
    return dict(metadata=metadata, qParams=qparams, nodes=nodes, links=links)


def _version() -> str:
    from featcirc import __version__

    return __version__


# ---------------------------------------------------------------------------------- validation
SCHEMA_FILE = "neuronpedia-graph.schema.json"
"""Neuronpedia's published attribution-graph schema, bundled in ``featcirc/export/schemas/`` (its
source and commit are in the README there)."""


@functools.lru_cache(maxsize=1)
def graph_schema_validator() -> jsonschema.Draft7Validator:
    """A validator for Neuronpedia's graph schema (draft-07, as Neuronpedia's Ajv compiles it)."""
    text = resources.files("featcirc.export").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _strings(x: Any) -> Iterable[str]:
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def _non_finite(x: Any, path: str = "$") -> Optional[str]:
    """The JSON path of the first NaN / infinity in ``x`` (strict JSON has none), else None."""
    if isinstance(x, float) and not math.isfinite(x):
        return path
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}")
        if found:
            return found
    return None


def validate_neuronpedia(data: dict, *, local_viewer: bool = False) -> None:
    """Check an attribution-graph dict: first its structure against Neuronpedia's published graph
    schema (:func:`graph_schema_validator`: required keys and types at every level; a
    ``ValueError`` naming the JSON path of the violation), then what the schema cannot say: strict
    JSON (no NaN or infinity), ``scan`` and ``slug`` of letters, digits, ``_``, ``.``, ``-`` only
    (Neuronpedia's upload rejects anything else, :func:`check_scan`), unique ``node_id`` and
    ``jsNodeId``, node keys ``(layer, feature, ctx_idx)`` unique among non-error and among error
    nodes (the viewers merge equal keys), ``ctx_idx`` indexing a prompt token, at most one
    embedding node per position, links between existing nodes, a logit label with ``(p=X)`` where
    X is a probability or ``n/a`` and a ``token_prob`` in [0, 1], no absolute paths in the metadata.
    ``local_viewer``: the graph is for circuit-tracer's local server (``graph_files/``), whose
    ``scan`` may be a ``./`` path to its feature files; such a graph cannot be uploaded. Raise
    ``ValueError``: the first schema violation, else every other problem."""
    err = best_match(graph_schema_validator().iter_errors(data))
    if err is not None:
        raise ValueError(f"invalid Neuronpedia graph: {err.json_path}: {err.message} "
                         f"(Neuronpedia's graph schema, rule {err.validator!r})")
    errs: list[str] = []
    bad = _non_finite(data)
    if bad:
        errs.append(f"{bad} is not a finite number: not strict JSON")
    try:  # extra keys (the schema allows any) may still hold something JSON has no type for
        json.dumps(data)
    except (TypeError, ValueError) as e:
        errs.append(f"not JSON: {e}")
    md = data["metadata"]
    if not SLUG_RE.match(md["slug"]):
        errs.append(f"metadata.slug {md['slug']!r} has characters other than letters, digits, '-', '_', '.'")
    try:
        check_scan(md["scan"], local_viewer=local_viewer)
    except ValueError as e:
        errs.append(f"metadata.{e}")
    n_tokens = len(md["prompt_tokens"])
    ids: set[str] = set()
    js_ids: set[str] = set()
    keys: dict[tuple, str] = {}
    emb_pos: set[int] = set()
    for i, nd in enumerate(data["nodes"]):
        where, nid, c, ftype = f"nodes[{i}]", nd["node_id"], nd["ctx_idx"], nd["feature_type"]
        if c < 0 or (n_tokens and c >= n_tokens):
            errs.append(f"{where}.ctx_idx={c} does not index one of the {n_tokens} prompt tokens")
        if nid in ids:
            errs.append(f"{where}.node_id {nid!r} is not unique")
        ids.add(nid)
        if nd["jsNodeId"] in js_ids:
            errs.append(f"{where}.jsNodeId {nd['jsNodeId']!r} is not unique")
        js_ids.add(nd["jsNodeId"])
        key = (str(nd["layer"]), nd["feature"], c, "error" in ftype)
        if key in keys:
            errs.append(f"{where} ({nid}) has the viewer key layer={key[0]}, feature={key[1]}, "
                        f"ctx_idx={key[2]} of {keys[key]}: the viewers would merge them")
        keys.setdefault(key, nid)
        if ftype == "embedding":
            if c in emb_pos:
                errs.append(f"{where}: a second embedding node at ctx_idx={c}")
            emb_pos.add(c)
        if ftype == "logit":
            pm = _P_RE.search(nd["clerp"])
            pv = pm.group(1) if pm else None
            try:
                ok = pv == "n/a" or (pv is not None and 0.0 <= float(pv) <= 1.0)
            except ValueError:
                ok = False
            if not ok:
                errs.append(f"{where}: a logit node's clerp must contain '(p=X)', X a probability or 'n/a' "
                            f"(the viewers parse it), got {nd['clerp']!r}")
            tp = nd.get("token_prob", 0.0)  # not in the schema: circuit-tracer's key, read by Neuronpedia's scores
            if not (isinstance(tp, (int, float)) and not isinstance(tp, bool) and 0.0 <= tp <= 1.0):
                errs.append(f"{where}.token_prob {tp!r} is not a number in [0, 1]")
    for i, ln in enumerate(data["links"]):
        for k in ("source", "target"):
            if ln[k] not in ids:
                errs.append(f"links[{i}].{k} {ln[k]!r} is not a node_id")
    described = {k: v for k, v in md.items() if k not in ("prompt", "prompt_tokens", "feature_details")}
    paths = sorted({m.group(0) for s in _strings(described) for m in _ABS_PATH_RE.finditer(s)})
    if paths:
        errs.append(f"metadata holds absolute paths {paths[:3]} (they leak the machine's layout)")
    if errs:
        shown = errs[:20] + ([f"... and {len(errs) - 20} more"] if len(errs) > 20 else [])
        raise ValueError("invalid Neuronpedia graph:\n  " + "\n  ".join(shown))


def write_neuronpedia(G: nx.DiGraph, path, **kw: Any):
    """Validate :func:`to_neuronpedia` output and write it (upload it at neuronpedia.org/graph)."""
    data = to_neuronpedia(G, **kw)
    validate_neuronpedia(data)
    return write_text(path, json.dumps(data, allow_nan=False) + "\n")


__all__ = ["SCHEMA_VERSION", "NEURONPEDIA_ID_RE", "TC_SITE_CODE_BASE", "cantor_pair", "cantor_unpair", "site_code",
           "feature_number", "feature_description",
           "vector_feature_number", "graph_digest", "default_slug", "neuronpedia_model_id", "check_scan",
           "check_slug", "slug_part", "strip_paths", "display_token", "influence_scores", "check_example",
           "metric_clerp", "to_neuronpedia", "graph_schema_validator", "validate_neuronpedia",
           "write_neuronpedia"]
