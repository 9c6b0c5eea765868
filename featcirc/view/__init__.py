"""The circuit viewer: ``write_viewer`` writes one self-contained, offline HTML page
(:mod:`featcirc.view.html`); ``featcirc view DIR`` writes it for a run directory."""

from featcirc.view.html import DEFAULT_MAX_EDGES, DEFAULT_MAX_NODES, render_html, viewer_data, write_viewer

__all__ = ["write_viewer", "viewer_data", "render_html", "DEFAULT_MAX_NODES", "DEFAULT_MAX_EDGES"]
