"""Feature cards as circuit-tracer feature files (what its viewer's feature panel loads).

circuit-tracer's viewer (``frontend/assets/feature_examples/init-feature-examples.js``) fetches
``{scan}/{feature}.json`` for a clicked feature node when the graph's ``scan`` is a ``./`` path
(``./data/features/{feature_set}`` in ``graph_files/`` graphs, :mod:`featcirc.export.graph_files`;
Neuronpedia reads the same files from ``feature_details.feature_json_base_url`` instead, since its
``scan`` must be a model id) and reads the fields of ``circuit_tracer/frontend/feature_models.py``::

    {"transcoder_id": str, "index": int,
     "examples_quantiles": [{"quantile_name": str,
                             "examples": [{"tokens": [str], "tokens_acts_list": [float],
                                           "train_token_ind": int, "is_repeated_datapoint": bool}]}],
     "top_logits": [str], "bottom_logits": [str],
     "act_min": float, "act_max": float,               # colour scale of the examples
     "quantile_values": [float],                       # percentiles: "Act: 5.20 87pct"
     "histogram": [float],                             # equal bins of [act_min, act_max]
     "activation_frequency": float}                    # "Freq: 1.300%"

A card maps to it as: ``examples_quantiles`` = a ``"Top activations"`` group (the card's
``top_examples``) then one group per quantile range; ``train_token_ind`` = ``max_index``;
``top_logits`` / ``bottom_logits`` = the logit-lens tokens; ``act_min`` = 0, ``act_max`` =
``max_activation``; ``activation_frequency`` = ``density``; ``quantile_values`` and
``histogram`` from the card's activation distribution (:func:`featcirc.features.cards.compute_cards`
extras; left out when a card has none, which the viewer tolerates). Files are named by
:func:`featcirc.export.neuronpedia.feature_number`, the ``feature`` of the node in the graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional

from featcirc.export.neuronpedia import feature_number
from featcirc.io import write_text


def _examples(examples: list[dict]) -> list[dict]:
    return [{"tokens": list(e["tokens"]), "tokens_acts_list": [float(a) for a in e["activations"]],
             "train_token_ind": int(e["max_index"]), "is_repeated_datapoint": False} for e in examples]


def tracer_feature(card: Mapping, *, transcoder_id: str, extras: Optional[Mapping] = None) -> dict:
    """The circuit-tracer feature file of one card (``cards.json`` schema; ``extras`` =
    ``{"histogram", "quantile_values"}``)."""
    groups = [{"quantile_name": "Top activations", "examples": _examples(card["top_examples"])}]
    groups += [{"quantile_name": q["label"], "examples": _examples(q["examples"])} for q in card["quantiles"]]
    out = {
        "transcoder_id": str(transcoder_id),
        "index": int(card["feature"]),
        "examples_quantiles": [g for g in groups if g["examples"]],
        "top_logits": [t for t, _ in card["logit_lens"]["top"]],
        "bottom_logits": [t for t, _ in card["logit_lens"]["bottom"]],
        "act_min": 0.0,
        "act_max": float(card["max_activation"]),
        "activation_frequency": float(card["density"]),
    }
    if extras and extras.get("quantile_values"):
        out["quantile_values"] = [float(v) for v in extras["quantile_values"]]
        out["histogram"] = [float(v) for v in extras["histogram"]]
    return out


def write_tracer_features(cards: Mapping[str, Mapping], out_dir: "str | os.PathLike[str]", *,
                          feature_set: str, extras: Optional[Mapping[str, Mapping]] = None) -> list[Path]:
    """Write ``{feature_number(site, index)}.json`` for every card into ``out_dir``
    (``graph_files/features/{feature_set}/``); ``extras``: per card key, as
    :func:`tracer_feature`. Returns the paths."""
    out = Path(out_dir)
    paths = []
    for key, card in cards.items():
        doc = tracer_feature(card, transcoder_id=f"{feature_set}/{card['site']}",
                             extras=(extras or {}).get(key))
        paths.append(write_text(out / f"{feature_number(card['site'], card['feature'])}.json",
                                json.dumps(doc, allow_nan=False) + "\n"))
    return paths


__all__ = ["tracer_feature", "write_tracer_features"]
