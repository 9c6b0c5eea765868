"""Feature cards: top-activating examples, quantile samples, logit lens and density of SAE
features over a corpus (:mod:`featcirc.features.cards`), cached per model, SAE set and corpus
(:mod:`featcirc.features.cache`), written as ``cards.json`` and as circuit-tracer feature files
(:mod:`featcirc.features.tracer_files`) for a run (:mod:`featcirc.features.run`)."""
