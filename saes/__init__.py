"""featcirc's bundled SAE data, installed as ``featcirc.saes.bundled``: ``sets/`` (named SAE set
descriptions), ``tiny/`` (the tiny model's SAEs, SAELens format), and training recipes and cards.
No code lives here."""
