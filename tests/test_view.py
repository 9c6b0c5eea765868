"""The circuit viewer: what the page embeds (caps, the run's pruning, cards, the example prompt's
metric, the exported circuit's faithfulness), that it is one offline file, and, in headless
Chromium, that it runs without errors, draws exactly the circuit featcirc.circuit.prune gives for
the run's settings and for settings from the URL fragment, shows a node's details and card, the
example's own metric at the star and F in the header (and says when F is not the shown circuit's),
fits a demo-sized circuit into a laptop window with its labels, and records blocked network
requests. ``featcirc view DIR`` end to end, and its input errors before torch is imported."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

import networkx as nx
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from featcirc.attribution.scores import EdgeScores, NodeScores
from featcirc.circuit import PruneSettings, full_graph, magnitude, prune, stream_index
from featcirc.cli import main
from featcirc.export.formats import write_json as write_graph_json
from featcirc.io import write_json
from featcirc.sites import METRIC
from featcirc.view import render_html, viewer_data, write_viewer
from test_plot import EXAMPLE, TOKENS, faithfulness, faithfulness_both, random_graph, random_scores

CARDS = json.loads((Path(__file__).parent / "fixtures" / "view_cards.json").read_text())
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                    "(apt-get install chromium); the browser checks of the viewer need it")


DEMO_TOKENS = ["<|bos|>", "The", " uncle", " above", " the", " benches"]


# (site, position) -> nodes of the demo's 100-node circuit there (error node first when "err")
DEMO_CELLS = {("resid.3", 5): "err+12", ("mlp.3", 5): "12", ("attn.3", 5): "3", ("resid.2", 5): "10",
              ("mlp.2", 5): "err+3", ("attn.2", 5): "4", ("resid.1", 5): "11", ("mlp.1", 5): "9",
              ("attn.1", 5): "4", ("resid.0", 2): "3", ("resid.0", 5): "err+5", ("mlp.0", 2): "2",
              ("mlp.0", 5): "err+3", ("attn.0", 2): "3", ("attn.0", 5): "err+6", ("embed", 2): "7"}


def demo_like_graph(seed: int = 0) -> nx.DiGraph:
    """A full graph shaped like the tiny model's demo run (4 layers, the prompt of DEMO_TOKENS, 102
    scored nodes, most of them at the last token, feature numbers below 800): the layout case of a
    laptop window. Every node has a path to the metric."""
    g = torch.Generator().manual_seed(seed)
    sites = ["embed"] + [f"{k}.{layer}" for layer in range(4) for k in ("attn", "mlp", "resid")]
    T, F = len(DEMO_TOKENS), 800
    feats = {s: torch.zeros(T, F) for s in sites}
    vecs = {s: torch.zeros(T) for s in sites}
    for (site, pos), spec in DEMO_CELLS.items():
        err, _, n = spec.rpartition("+")
        if err:
            vecs[site][pos] = 0.5 + torch.rand(1, generator=g).item()
        idx = torch.randperm(F, generator=g)[: int(n)]
        feats[site][pos, idx] = (0.05 + torch.rand(int(n), generator=g)) * torch.where(
            torch.rand(int(n), generator=g) < 0.1, -1.0, 1.0)
    ns = NodeScores(method="relp", level="feature", aggregation="none", sites=sites, features=feats, vectors=vecs,
                    n_pairs=32, metric_clean=6.4902, metric_patch=-6.152, info={"n_layers": 4})
    G0 = full_graph(ns)
    live = [n for n in G0 if n != METRIC and G0.nodes[n]["score"] != 0]
    by_stream = sorted(live, key=lambda n: -stream_index(G0.nodes[n]["site"], 4))
    rng = np.random.default_rng(seed)
    edges, above = {}, []
    for n in by_stream:  # from the top down: each node feeds 1-3 nodes above it (which reach the metric)
        d = G0.nodes[n]
        if d["site"] == "resid.3":
            edges[(n, METRIC)] = float(rng.normal())
        else:
            ups = [v for v in above if stream_index(G0.nodes[v]["site"], 4) > stream_index(d["site"], 4)
                   and G0.nodes[v]["position"] >= d["position"]]
            for v in rng.choice(ups, size=min(len(ups), int(rng.integers(1, 4))), replace=False):
                edges[(n, str(v))] = float(rng.normal())
        above.append(n)
    return full_graph(ns, EdgeScores(method="relp", aggregation="none", edges=edges))


def ranked(G: nx.DiGraph) -> list[str]:
    return sorted((n for n in G if n != METRIC), key=lambda n: (-magnitude(G.nodes[n]["score"]), n))


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="featcirc-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


# ------------------------------------------------------------------------------ the embedded data
def test_embeds_the_largest_nodes_all_their_edges_and_the_runs_pruning():
    G = random_graph()
    C = prune(G, PruneSettings(top_k=20))
    data = viewer_data(G, circuit=C, tokens=TOKENS, max_nodes=50, title="tiny relp")
    ids = data["nodes"]["id"]
    assert ids[0] == METRIC and ids[1:] == ranked(G)[:50]
    assert data["caps"]["nodes_embedded"] == 50 and data["caps"]["nodes_scored"] == len(G) - 1
    among = G.subgraph(ids).number_of_edges()
    assert data["caps"]["edges_embedded"] == among == len(data["edges"]["weight"])
    embedded = {(ids[u], ids[v]): w for u, v, w in zip(data["edges"]["source"], data["edges"]["target"],
                                                       data["edges"]["weight"])}
    assert embedded == {(u, v): d["weight"] for u, v, d in G.subgraph(ids).edges(data=True)}
    assert data["initial"] == {"top_k": 20, "node_threshold": None, "edge_threshold": 0.0}
    assert data["circuit"]["reproduced"] and data["circuit"]["n_nodes"] == len(C) - 1
    assert data["tokens"] == TOKENS and data["n_positions"] == 5 and data["title"] == "tiny relp"
    assert data["style"]["positive"] != data["style"]["negative"]
    assert "supports the clean answer" in data["style"]["sign_legend"][0]


def test_caps_keep_the_circuit_and_the_strongest_edges():
    G = random_graph()
    C = prune(G, PruneSettings(top_k=120))
    data = viewer_data(G, circuit=C, max_nodes=5, max_edges=10)
    ids = data["nodes"]["id"]
    assert set(C) <= set(ids) and set(ranked(G)[:5]) <= set(ids)
    assert data["caps"]["circuit_extra"] == len(set(C) - set(ranked(G)[:5]) - {METRIC})
    pairs = set(zip(data["edges"]["source"], data["edges"]["target"]))
    assert {(ids.index(u), ids.index(v)) for u, v in C.edges} <= pairs  # the circuit's edges survive the cap
    weights = sorted((abs(d["weight"]) for _, _, d in G.subgraph(ids).edges(data=True)), reverse=True)
    assert sorted(map(abs, data["edges"]["weight"]), reverse=True)[:10] == weights[:10]
    assert data["caps"]["edges_among_embedded"] == len(weights) > data["caps"]["edges_embedded"]
    assert data["caps"]["edges_embedded"] == len(set(C.edges) | set(
        sorted(G.subgraph(ids).edges, key=lambda e: -abs(G.edges[e]["weight"]))[:10]))


def test_cards_only_for_embedded_features_and_bad_input_errors():
    G = random_graph()
    data = viewer_data(G, cards=CARDS, max_nodes=len(G))
    feats = {f"{d['site']}/{d['feature']}" for n, d in G.nodes(data=True) if d["kind"] == "feature"}
    assert set(data["cards"]) == feats & set(CARDS["cards"]) and data["cards"]
    assert data["cards_info"] == {"model": "tiny", "corpus": "fixture-corpus"}
    assert viewer_data(G)["cards"] == {} and viewer_data(G)["cards_info"] is None
    with pytest.raises(ValueError, match="featcirc-cards/1"):
        viewer_data(G, cards={"format": "other/2", "cards": {}})
    with pytest.raises(ValueError, match="tokens has 3 entries"):
        viewer_data(G, tokens=TOKENS[:3])
    with pytest.raises(ValueError, match="no 'metric' node"):
        viewer_data(nx.DiGraph(G.subgraph(ranked(G)[:3])))
    with pytest.raises(ValueError, match="max_nodes"):
        viewer_data(G, max_nodes=0)
    foreign = prune(G, PruneSettings(top_k=5))
    foreign.add_node("resid.1/999@0", site="resid.1", layer=1, kind="feature", feature=999, position=0, score=1.0)
    with pytest.raises(ValueError, match="not in the full graph"):
        viewer_data(G, circuit=foreign)


def test_embeds_the_examples_own_metric_and_the_exported_circuits_faithfulness():
    G = demo_like_graph()
    C = prune(G, PruneSettings(top_k=102))
    data = viewer_data(G, circuit=C, tokens=DEMO_TOKENS, example=EXAMPLE, faithfulness=faithfulness_both(102))
    assert data["example"] == EXAMPLE
    mean = {"ablation": "mean", "split": "held-out", "pairs": 32, "n_nodes": 102,
            "faithfulness": {"value": 0.35667, "lo": 0.31254, "hi": 0.40388},
            "completeness": {"value": 0.01216, "lo": -0.00269, "hi": 0.02747},
            "confidence": "95%", "intervals": "95% percentile bootstrap over 1000 pair resamples"}
    patch = dict(mean, ablation="patch", faithfulness={"value": 0.00045, "lo": 0.00014, "hi": 0.0009},
                 completeness={"value": -0.0009, "lo": -0.0051, "hi": 0.0025})
    assert data["faithfulness"] == [mean, patch]  # one entry per ablation, in the order measured
    # an older run's single record: one entry
    assert viewer_data(G, circuit=C, tokens=DEMO_TOKENS, faithfulness=faithfulness(102))["faithfulness"] == [mean]
    assert "/home/someone" not in json.dumps(data)  # the data file's path stays out of the page
    assert data["metric"]["n_pairs"] == 32  # the mean's pair count, for "mean over 32 pairs"
    assert "mean metric over 32 pairs: clean 6.49, patch -6.15" in data["subtitle"]
    ids = data["nodes"]["id"]
    assert sorted(ids[i] for i in data["circuit"]["nodes"]) == sorted(n for n in C if n != METRIC)
    # an older run: neither; the mean's pair count from the graph
    old = viewer_data(G, circuit=C, tokens=DEMO_TOKENS)
    assert old["example"] is None and old["faithfulness"] is None and old["metric"]["n_pairs"] == 32
    # missing or non-finite numbers are null (shown as unknown), never a made-up value
    part = viewer_data(G, example={"metric_clean": float("nan"), "clean_answer": " has"},
                       faithfulness={"faithfulness": {"value": float("inf")}, "pairs": "many"})
    assert part["example"]["metric_clean"] is None and part["example"]["patch_answer"] is None
    (info,) = part["faithfulness"]
    assert info["faithfulness"] == {"value": None, "lo": None, "hi": None} and info["ablation"] is None
    assert info["pairs"] is None and info["confidence"] is None
    with pytest.raises(ValueError, match="example must be a dict"):
        viewer_data(G, example=["The keys"])
    with pytest.raises(ValueError, match="faithfulness must be a dict"):
        viewer_data(G, faithfulness=0.36)


def test_one_offline_file_deterministic_and_escaped(tmp_path):
    G = random_graph()
    C = prune(G, PruneSettings(top_k=25))
    evil = ["</script><img src=x onerror=alert(1)>", "&amp;", "\u2028", " to", " the"]
    example = dict(EXAMPLE, prompt="</script><script>alert(1)</script>", clean_answer="<!--", patch_answer="&lt;")
    p = write_viewer(G, tmp_path / "v.html", circuit=C, tokens=evil, cards=CARDS, title="a <b>title</b>",
                     example=example)
    html = p.read_text(encoding="utf-8")
    assert write_viewer(G, tmp_path / "w.html", circuit=C, tokens=evil, cards=CARDS,
                        title="a <b>title</b>", example=example).read_text(encoding="utf-8") == html
    assert not list(tmp_path.glob(".*.tmp"))
    # nothing is fetched: no external script, style, font or image; a CSP forbids any request
    code = re.sub(r'(id="featcirc-data">).*?(</script>)', r"\1\2", html, flags=re.S)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\bsrc=|@import|url\(|fetch\(|XMLHttpRequest", code)
    assert set(re.findall(r"https?://[^\s\"')]+", html)) <= {"http://www.w3.org/2000/svg"}  # a namespace
    assert "default-src 'none'" in html
    assert html.count("</script>") == 3  # the error recorder, the data, the viewer: no token closed a script
    assert "<title>a &lt;b&gt;title&lt;/b&gt;</title>" in html
    assert page_data(html)["tokens"] == evil  # round trip through the escaped JSON
    assert page_data(html)["example"] == example


# --------------------------------------------------------------------------------- in a browser
class _Dom(HTMLParser):
    """The root's data-* attributes, the drawn nodes (``<g class="node ..." data-id=...>``), the
    text (outside scripts and styles), and the text of the star's label (``star``) and of the
    header's F line (``faith``)."""

    _VOID = {"meta", "input", "br", "img", "link", "hr", "path", "line", "rect", "circle", "polygon"}

    def __init__(self):
        super().__init__()
        self.root: dict = {}
        self.nodes: list[str] = []
        self.text: list[str] = []
        self.parts: dict[str, list[str]] = {"star": [], "faith": []}
        self.bands: list[list] = []  # the row labels: [y, site]
        self._open: list[Optional[str]] = []  # per open element: the part it starts, if any

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.root = a
        if tag == "g" and (a.get("class") or "").split(" ")[0] == "node":
            self.nodes.append(a["data-id"])
        if tag == "text" and "band-label" in (a.get("class") or "").split():
            self.bands.append([float(a["y"]), ""])
        if tag not in self._VOID:
            part = ("star" if "metric-label" in (a.get("class") or "").split() else
                    "faith" if a.get("id") == "faithfulness" else "code" if tag in ("script", "style") else
                    "band" if tag == "text" and "band-label" in (a.get("class") or "").split() else None)
            self._open.append(part)

    def handle_endtag(self, tag):
        if tag not in self._VOID and self._open:
            self._open.pop()

    def handle_data(self, data):
        if "code" in self._open:
            return
        self.text.append(data)
        if self._open and self._open[-1] == "band":
            self.bands[-1][1] += data
        for part in set(p for p in self._open if p and p != "band"):
            self.parts[part].append(data)

    def part(self, name: str) -> str:
        return "".join(self.parts[name])


def browse(path: Path, fragment: str = "", *, profile: Path, screenshot: Path | None = None,
           window: tuple[int, int] = (1600, 1000)) -> _Dom:
    """Load ``path`` (+ ``#fragment``) in headless Chromium with every host unresolvable, in a
    window of ``window`` pixels; return the DOM after the scripts ran (or take a screenshot)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000", f"--window-size={window[0]},{window[1]}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    run = subprocess.run(args + [path.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    dom = _Dom()
    dom.feed(run.stdout)
    if not screenshot:
        assert dom.root.get("data-ready") == "1", run.stdout[:2000]
        assert "data-errors" not in dom.root, dom.root["data-errors"]
    return dom


@needs_chromium
def test_page_draws_the_runs_circuit_and_reprunes_from_the_fragment(tmp_path):
    G = random_graph()
    C = prune(G, PruneSettings(top_k=40))
    path = write_viewer(G, tmp_path / "circuit.html", circuit=C, tokens=TOKENS, cards=CARDS, max_nodes=len(G))
    profile = tmp_path / "profile"
    dom = browse(path, profile=profile)
    assert set(dom.nodes) == set(C) and len(dom.nodes) == len(C)  # the metric is drawn too
    assert dom.root["data-drawn-nodes"] == str(len(C) - 1)
    assert dom.root["data-drawn-edges"] == str(C.number_of_edges())
    for tok in TOKENS:
        assert tok.strip() in "".join(dom.text)  # columns labelled with the prompt's tokens
    # the same rule as featcirc.circuit.prune, driven from the URL fragment; with a node pinned
    t = magnitude(G.nodes[ranked(G)[100]]["score"])
    e = sorted(abs(d["weight"]) for *_, d in G.edges(data=True))[len(G.edges) // 4]
    feat = next(n for n in ranked(G) if G.nodes[n]["kind"] == "feature" and G.nodes[n]["site"] == "resid.1")
    for fragment, settings in (("#top=8", PruneSettings(top_k=8)),
                               (f"#top=140&threshold={t!r}&edge={e!r}&node={feat}", PruneSettings(t, 140, e))):
        expect = prune(G, settings)
        dom = browse(path, fragment, profile=profile)
        assert set(dom.nodes) == set(expect), fragment
        assert dom.root["data-drawn-edges"] == str(expect.number_of_edges()), fragment
    assert len(prune(G, PruneSettings(top_k=8))) < len(C) < len(expect)
    # the pinned node's details: id, score, strongest edges and its feature card (the fixture's)
    card = CARDS["cards"][f"resid.1/{G.nodes[feat]['feature']}"]
    text = "".join(dom.text)
    assert feat in text and "inputs" in text and "outputs" in text and "feature card" in text
    assert "blue: supports the clean answer (score / weight > 0)" in text  # the legend states the convention
    assert "".join(card["top_examples"][0]["tokens"]) in text and "fixture-corpus" in text
    shot = tmp_path / "circuit.png"
    browse(path, f"#node={feat}", profile=profile, screenshot=shot)
    img = imread(shot)
    assert img.shape[:2] == (1000, 1600) and img[..., :3].std() > 0.05


@needs_chromium
def test_page_shows_the_examples_metric_and_the_exported_circuits_faithfulness(tmp_path):
    G = demo_like_graph()
    C = prune(G, PruneSettings(top_k=102))
    n = len(C) - 1
    path = write_viewer(G, tmp_path / "c.html", circuit=C, tokens=DEMO_TOKENS, example=EXAMPLE,
                        faithfulness=faithfulness_both(n))
    profile = tmp_path / "profile"
    dom = browse(path, profile=profile)
    # the star: the example prompt's own m and answers, then the mean, called a mean
    assert dom.part("star") == ('m = 7.71 on this prompt: " has" vs " have" (patch prompt: -3.73)'
                                "mean m over 32 pairs: 6.49")
    assert "metric = " not in "".join(dom.text)
    # the header: F under each ablation with its interval and the ablation named, split, pairs and the
    # circuit it belongs to
    assert dom.part("faith") == ("F = 0.357 [0.313, 0.404] under mean ablation, 0.000 [0.000, 0.001] under patch "
                                 "ablation (95% intervals; held-out, 32 pairs) for the circuit shown, the run's "
                                 f"exported circuit ({n} nodes)")
    # an older run's single record
    old = browse(write_viewer(G, tmp_path / "one.html", circuit=C, tokens=DEMO_TOKENS, faithfulness=faithfulness(n)),
                 profile=profile)
    assert old.part("faith") == ("F = 0.357 [0.313, 0.404] under mean ablation (95% interval; held-out, 32 pairs) "
                                 f"for the circuit shown, the run's exported circuit ({n} nodes)")
    assert dom.root["data-f-applies"] == "1"
    # re-pruned away from the exported circuit: F is said to be the exported circuit's, not this one's
    dom = browse(path, "#top=40", profile=profile)
    k = len(prune(G, PruneSettings(top_k=40))) - 1
    assert dom.root["data-f-applies"] == "0" and dom.root["data-drawn-nodes"] == str(k) and k < n
    assert f"F belongs to the run's exported circuit ({n} nodes), not the one shown ({k} nodes)" in dom.part("faith")
    assert browse(path, f"#top={n}", profile=profile).root["data-f-applies"] == "1"  # the same circuit again
    # the metric's details: both prompts, answers with their probabilities, both m, the means
    text = "".join(browse(path, "#node=metric", profile=profile).text)
    for shown in ('"The uncle above the benches"', '"The uncles above the benches"', '" has" (p = 0.621) clean',
                  '" have" (p = 0.0412) patch', "m on the patch prompt-3.73", "mean m over 32 pairs",
                  "clean 6.49, patch -6.15"):
        assert shown in text, shown
    # an older run directory (no example, no faithfulness): the mean as a mean, no F, no wrong label
    old = browse(write_viewer(G, tmp_path / "old.html", circuit=C, tokens=DEMO_TOKENS), profile=profile)
    assert old.part("star") == "mean m over 32 pairs: 6.49"
    assert old.part("faith") == "faithfulness: not recorded for this run" and old.root["data-f-applies"] == "none"
    assert "on this prompt" not in "".join(old.text) and "F = " not in "".join(old.text)
    # prompts and answers from the user's files are text, never markup (an <img> would be a blocked request)
    evil = dict(EXAMPLE, clean_answer='<img src="x" onerror="alert(1)">', patch_prompt="</script><b>x</b>")
    dom = browse(write_viewer(G, tmp_path / "evil.html", circuit=C, tokens=DEMO_TOKENS, example=evil),
                 "#node=metric", profile=profile)
    assert '"<img src=\\"x\\" onerror=\\"alert(1)\\">" vs " have"' in dom.part("star")
    assert '"</script><b>x</b>"' in "".join(dom.text)


_MEASURE = """<script>
/* test only: where every drawn thing lies, against the window and the graph's pane */
window.addEventListener("load", function () { setTimeout(function () {
  function box(e) { var r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
  var pane = document.getElementById("canvas"), items = [];
  [["node", ".node:not(.metric) .shape"], ["star", ".node.metric .shape"], ["metric-label", ".metric-label"],
   ["token-label", ".token-label"], ["node-label", ".node-label"], ["band-label", ".band-label"]].forEach(function (k) {
    Array.prototype.forEach.call(pane.querySelectorAll(k[1]), function (e) { items.push([k[0], box(e)]); });
  });
  var doc = document.scrollingElement;
  document.documentElement.setAttribute("data-measure", JSON.stringify({
    window: [window.innerWidth, window.innerHeight], pane: box(pane), overflow: getComputedStyle(pane).overflowY,
    client: [pane.clientWidth, pane.clientHeight], scroll: [pane.scrollWidth, pane.scrollHeight, pane.scrollTop],
    page: [doc.scrollWidth, doc.scrollHeight, document.body.scrollWidth, document.body.scrollHeight],
    items: items}));
}, 300); });
</script>
"""


def window_for(viewport: tuple[int, int], profile: Path) -> tuple[int, int]:
    """The --window-size whose page area is ``viewport`` (headless Chromium's window keeps room for
    a browser's bars; its --screenshot does not)."""
    probe = profile.parent / "viewport.html"
    probe.write_text("<html><body><script>document.documentElement.setAttribute('data-ready', '1');"
                     "document.documentElement.setAttribute('data-size', innerWidth + 'x' + innerHeight)"
                     "</script></body></html>")
    got = browse(probe, profile=profile, window=viewport).root["data-size"]
    w, h = map(int, got.split("x"))
    return 2 * viewport[0] - w, 2 * viewport[1] - h


def measure(path: Path, fragment: str = "", *, viewport: tuple[int, int], profile: Path) -> tuple[dict, _Dom]:
    """Where the page draws everything (boxes in page pixels) in a window whose page area is
    ``viewport``, read by a test-only script."""
    probe = path.with_name(path.stem + "-measured.html")
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    dom = browse(probe, fragment, profile=profile, window=window_for(viewport, profile))
    return json.loads(dom.root["data-measure"]), dom


def _overlap(a, b, tol: float = 0.5) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


@needs_chromium
@pytest.mark.parametrize("window", [(1024, 700), (1280, 800), (1280, 657)])
def test_a_demo_sized_circuit_fits_a_laptop_window_with_its_labels(tmp_path, window):
    """Every node, the star and its label, every token and row label lie inside the graph's pane,
    across its width; the pane lies inside the window (so its scrollbar is on screen) and what it
    cannot show scrolls into view in it. At 1280x800 nothing needs scrolling (1280x657: a 1280x800
    browser window less its bars). At each size more than 90% of the nodes carry a label, and no
    two labels overlap nor cover a node."""
    G = demo_like_graph()
    C = prune(G, PruneSettings(top_k=102))
    n = len(C) - 1
    path = write_viewer(G, tmp_path / "c.html", circuit=C, tokens=DEMO_TOKENS, example=EXAMPLE,
                        faithfulness=faithfulness_both(n))  # the header's F line names both ablations
    m, dom = measure(path, viewport=window, profile=tmp_path / "profile")
    W, H = window
    assert "under patch ablation" in dom.part("faith")  # the header's F line names both ablations
    assert m["window"] == [W, H]
    kinds = {k for k, _ in m["items"]}
    assert {"node", "star", "metric-label", "token-label", "node-label", "band-label"} <= kinds
    assert sum(k == "node" for k, _ in m["items"]) == n
    assert sum(k == "token-label" for k, _ in m["items"]) == 2 * len(DEMO_TOKENS)  # below and above
    px0, py0, px1, py1 = m["pane"]
    cw, ch = m["client"]
    sw, sh, top = m["scroll"]
    for kind, (x0, y0, x1, y1) in m["items"]:
        assert x0 >= max(px0, 0) - 0.5 and x1 <= min(px0 + cw, W) + 0.5, (kind, x0, x1, m["pane"])  # across: in view
        assert y0 - py0 + top >= -0.5 and y1 - py0 + top <= sh + 0.5, (kind, y0, y1)  # down: in the pane's reach
        if window == (1280, 800):
            assert y1 <= py0 + ch + 0.5, (kind, y1, m["pane"])  # the whole circuit at once
    # the pane (and so its scrollbar) lies in the window; the page itself does not scroll
    assert px0 >= 0 and py0 >= 0 and px1 <= W + 0.5 and py1 <= H + 0.5, m["pane"]
    assert m["page"][0] <= W and m["page"][1] <= H, m["page"]
    assert sw <= cw  # never wider than the pane
    if sh > ch:
        assert m["overflow"] in ("auto", "scroll")
    labels = [b for k, b in m["items"] if k == "node-label"]
    assert int(dom.root["data-labels"]) == len(labels) >= 0.9 * n
    for a, b in itertools.combinations(labels + [b for k, b in m["items"] if k == "metric-label"], 2):
        assert not _overlap(a, b), (a, b)
    shapes = [b for k, b in m["items"] if k in ("node", "star")]
    for a in labels:
        assert not any(_overlap(a, s, tol=1.0) for s in shapes), a


@needs_chromium
def test_page_runs_for_summed_and_edgeless_graphs_and_a_capped_one(tmp_path):
    profile = tmp_path / "profile"
    summed = random_graph("sum")
    C = prune(summed, PruneSettings(top_k=30))
    dom = browse(write_viewer(summed, tmp_path / "s.html", circuit=C), profile=profile)
    assert set(dom.nodes) == set(C)
    assert "all positions (summed)" in "".join(dom.text)
    nodes, _ = random_scores()
    bare = full_graph(nodes)  # no edge scores: pruning keeps nodes by score alone
    Cb = prune(bare, PruneSettings(top_k=12))
    dom = browse(write_viewer(bare, tmp_path / "b.html", circuit=Cb, tokens=TOKENS), profile=profile)
    assert set(dom.nodes) == set(Cb) and len(Cb) == 13 and dom.root["data-drawn-edges"] == "0"
    # capped at 60 nodes: top k <= 60 is still exactly featcirc's prune of the full graph
    G = random_graph()
    path = write_viewer(G, tmp_path / "c.html", circuit=prune(G, PruneSettings(top_k=20)), max_nodes=60)
    assert set(browse(path, "#top=60", profile=profile).nodes) == set(prune(G, PruneSettings(top_k=60)))


def chain_graph(sites: list, kind: str, feature: int, n_layers: int, T: int = 6) -> nx.DiGraph:
    """One chain of nodes at position 5 through ``sites`` to the metric: feature ``feature`` at the sites of
    ``kind`` (``z``, ``tc``), the error or component node elsewhere."""
    is_feat = lambda s: s.startswith(kind + ".")  # noqa: E731
    F = feature + 8
    feats = {s: torch.zeros(T, F) for s in sites if is_feat(s)}
    vecs = {s: torch.zeros(T) for s in sites}
    for i, s in enumerate(sites):
        if is_feat(s):
            feats[s][5, feature] = 1.0 + i
        else:
            vecs[s][5] = 0.5 + i
    ns = NodeScores(method="relp", level="feature", aggregation="none", sites=sites, features=feats, vectors=vecs,
                    n_pairs=4, metric_clean=2.0, info={"n_layers": n_layers})
    chain = [f"{s}/{feature}@5" if is_feat(s) else f"{s}/err@5" for s in sites] + [METRIC]
    return full_graph(ns, EdgeScores(method="relp", aggregation="none",
                                     edges={(u, v): 1.0 for u, v in zip(chain, chain[1:])}))


def z_graph() -> nx.DiGraph:
    """A 3-layer graph whose attention sites are ``z.L`` (Gemma Scope 2's heads' outputs): one chain of
    nodes at position 5, embed -> z.0/13 -> mlp.0 -> resid.0 -> z.1/13 -> ... -> resid.2 -> metric."""
    return chain_graph(["embed"] + [f"{k}.{layer}" for layer in range(3) for k in ("z", "mlp", "resid")], "z", 13, 3)


@needs_chromium
def test_z_sites_take_the_attention_rows_place(tmp_path):
    """A ``z.L`` row lies where ``attn.L``'s would (featcirc.sites.stream_index: after resid.(L-1), before
    mlp.L), also when the data lists the sites in another order (the page sorts its rows itself)."""
    G = z_graph()
    C = prune(G, PruneSettings(top_k=10))
    assert "z.2/13@5" in C
    data = viewer_data(G, circuit=C, tokens=DEMO_TOKENS)
    order = ["embed"] + [f"{k}.{layer}" for layer in range(3) for k in ("z", "mlp", "resid")]
    assert data["sites"] == order
    data["sites"] = order[::-1]
    path = tmp_path / "z.html"
    path.write_text(render_html(data), encoding="utf-8")
    dom = browse(path, profile=tmp_path / "profile")
    assert set(dom.nodes) == set(C) and "z.2/13@5" in dom.nodes
    bottom_up = [site for _, site in sorted(dom.bands, key=lambda b: -b[0])]
    assert bottom_up == order + ["metric"]
    assert "z rows: attention heads' outputs" in "".join(dom.text)


@needs_chromium
def test_blocked_requests_and_script_errors_are_recorded(tmp_path):
    """The checks above would catch a page that fetches anything or throws: show they can fail."""
    G = random_graph()
    html = render_html(viewer_data(G, tokens=TOKENS))
    fetching = tmp_path / "fetching.html"
    fetching.write_text(html.replace("<footer", '<img src="https://example.invalid/x.png"><footer', 1))
    with pytest.raises(AssertionError, match="blocked request"):
        browse(fetching, profile=tmp_path / "profile")
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace('"use strict";', '"use strict"; undefinedFunction();', 1))
    with pytest.raises(AssertionError):
        browse(broken, profile=tmp_path / "profile")


# ------------------------------------------------------------------------------- featcirc view DIR
@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory as `featcirc discover` writes it (scores, circuit, summary), model-free."""
    out = tmp_path / "runs" / "sva"
    out.mkdir(parents=True)
    nodes, edges = random_scores()
    nodes.save(out / "nodes.pt")
    edges.save(out / "edges.pt")
    G = full_graph(nodes, edges)
    write_graph_json(prune(G, PruneSettings(top_k=30)), out / "circuit.json")
    write_json(out / "run.json", {"model": "tiny", "method": "relp", "level": "feature", "task": None,
                                  "data": str(tmp_path / "pairs" / "heldout_sva.jsonl")})
    faith = {k: dict(r, data=str(tmp_path / "pairs" / "heldout_sva.jsonl") + ", held-out pairs")
             for k, r in faithfulness_both(30).items()}
    write_json(out / "summary.json", {"model": "tiny", "model_info": {"n_layers": 2}, "method": "relp",
                                      "level": "feature", "data": str(tmp_path / "pairs" / "heldout_sva.jsonl"),
                                      "prompt": "The keys to the", "prompt_tokens": TOKENS,
                                      "prune": {"node_threshold": None, "top_k": 30, "edge_threshold": 0.0},
                                      "example": dict(EXAMPLE, prompt="The keys to the", n_pairs_mean=3),
                                      "faithfulness": faith})
    return out


def test_view_command_writes_the_page(run_dir, tmp_path, capsys):
    assert main(["-q", "view", str(run_dir)]) == 0
    page = run_dir / "circuit.html"
    assert capsys.readouterr().out.strip() == str(page)
    html = page.read_text(encoding="utf-8")
    data = page_data(html)
    assert data["title"] == "tiny \u00b7 relp feature circuit \u00b7 heldout_sva.jsonl"
    assert str(tmp_path) not in html  # no absolute paths
    assert data["circuit"]["reproduced"] and data["initial"]["top_k"] == 30 and data["cards"] == {}
    assert data["tokens"] == TOKENS
    # summary.json's example and faithfulness reach the page (the data file's path does not)
    assert data["example"]["prompt"] == "The keys to the" and data["example"]["patch_answer"] == " have"
    assert data["metric"]["n_pairs"] == 3
    assert [(f["ablation"], f["n_nodes"], f["faithfulness"]["value"]) for f in data["faithfulness"]] == [
        ("mean", 30, 0.35667), ("patch", 30, 0.00045)]
    (run_dir / "cards.json").write_text(json.dumps(CARDS))
    assert main(["-q", "view", str(run_dir), "--out", str(tmp_path / "v.html"), "--max-nodes", "40"]) == 0
    data = page_data((tmp_path / "v.html").read_text(encoding="utf-8"))
    assert data["caps"]["nodes_embedded"] == 40 and data["cards"]
    (run_dir / "circuit.json").unlink()  # without it the page starts at the summary's pruning
    assert main(["-q", "view", str(run_dir)]) == 0
    assert page_data(page.read_text(encoding="utf-8"))["circuit"]["reproduced"]
    # a run directory from before both ablations were reported: its single record is read as such
    summary = json.loads((run_dir / "summary.json").read_text())
    write_json(run_dir / "summary.json", dict(summary, faithfulness=summary["faithfulness"]["mean"]))
    assert "ablation" in summary["faithfulness"]["mean"]  # the old shape: 'ablation' at the top level
    assert main(["-q", "view", str(run_dir)]) == 0
    data = page_data(page.read_text(encoding="utf-8"))
    assert [(f["ablation"], f["n_nodes"], f["faithfulness"]["value"]) for f in data["faithfulness"]] == [
        ("mean", 30, 0.35667)]
    # a run directory from before summary.json had an example: neither shown, nothing made up
    del summary["example"], summary["faithfulness"]
    write_json(run_dir / "summary.json", summary)
    assert main(["-q", "view", str(run_dir)]) == 0
    data = page_data(page.read_text(encoding="utf-8"))
    assert data["example"] is None and data["faithfulness"] is None and data["metric"]["n_pairs"] == 3


def test_view_command_errors_name_the_fix(run_dir, tmp_path, capsys):
    assert main(["-q", "view", str(tmp_path / "missing")]) == 2
    assert "featcirc discover" in capsys.readouterr().err
    (run_dir / "nodes.pt").rename(tmp_path / "nodes.pt")
    assert main(["-q", "view", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "nodes.pt not found" in err and "featcirc discover" in err
    (tmp_path / "nodes.pt").rename(run_dir / "nodes.pt")
    (run_dir / "cards.json").write_text('{"format": "something-else/3", "cards": {}}')
    assert main(["-q", "view", str(run_dir)]) == 2
    assert "featcirc-cards/1" in capsys.readouterr().err
    (run_dir / "cards.json").write_text("{not json")
    assert main(["-q", "view", str(run_dir)]) == 2
    assert "cards.json is not valid JSON" in capsys.readouterr().err
    (run_dir / "cards.json").unlink()
    summary = json.loads((run_dir / "summary.json").read_text())
    write_json(run_dir / "summary.json", dict(summary, faithfulness=dict(summary["faithfulness"], patch=0.0)))
    assert main(["-q", "view", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "summary.json: 'faithfulness' -> 'patch' is a number, not a JSON object" in err
    write_json(run_dir / "summary.json", summary)
    assert main(["-q", "view", str(run_dir), "--max-nodes", "0"]) == 2
    assert "--max-nodes" in capsys.readouterr().err
    assert main(["-q", "view", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["-q", "view", str(run_dir), "--out", str(tmp_path / "no" / "v.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (run_dir / "edges.pt").write_bytes(b"not a torch file")
    assert main(["-q", "view", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "edges.pt" in err and "featcirc discover" in err
    assert not (run_dir / "circuit.html").exists()


@pytest.mark.parametrize("args,message", [
    (["--max-nodes", "0"], "--max-nodes must be a positive integer, got 0"),
    (["--max-nodes", "-5"], "--max-nodes must be a positive integer, got -5"),
    (["--out", "{tmp}/missing/v.html"], "the directory {tmp}/missing does not exist"),
    (["--out", "{tmp}"], "is a directory"),
    ([], None),  # DIR is not a run directory
])
def test_view_input_errors_come_before_torch_is_imported(run_dir, tmp_path, args, message):
    """`featcirc view` checks its options and DIR with nothing heavy imported: one line, exit 2."""
    target = str(run_dir) if message else str(tmp_path / "missing")
    argv = ["-q", "view", target] + [a.format(tmp=tmp_path) for a in args]
    code = ("import sys; from featcirc.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, sorted(m for m in ('torch', 'networkx', 'numpy', 'featcirc.attribution.scores', "
            "'featcirc.circuit', 'featcirc.view') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code] + argv, capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "2 []", (run.stdout, run.stderr)
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featcirc view: error: "), run.stderr
    assert (message or "is not a run directory").format(tmp=tmp_path) in err[0]


@needs_chromium
def test_star_label_fits_beside_the_star_in_a_narrow_graph(tmp_path):
    """Positions summed (one column, the star mid-graph): the label wraps, the column moves right,
    and the label lies inside the pane, clear of the star and the row labels."""
    G = random_graph("sum")
    C = prune(G, PruneSettings(top_k=30))
    path = write_viewer(G, tmp_path / "s.html", circuit=C, example=EXAMPLE, faithfulness=faithfulness(len(C) - 1))
    m, dom = measure(path, viewport=(1024, 700), profile=tmp_path / "profile")
    assert dom.part("star") == ('m = 7.71 on this prompt: " has" vs " have"(patch prompt: -3.73)'
                                "mean m over 32 pairs: 1.70")
    (label,) = [b for k, b in m["items"] if k == "metric-label"]
    px0, py0, _, _ = m["pane"]
    assert label[0] >= px0 and label[2] <= px0 + m["client"][0]
    for kind, b in m["items"]:
        if kind in ("star", "band-label", "node-label"):
            assert not _overlap(label, b), (kind, b)


@needs_chromium
def test_many_empty_columns_fit_across_a_laptop_window(tmp_path):
    """A role-aligned IOI run has ~26 columns, most without a node: empty columns are narrow, so the
    nodes at S2 and END, the star and every column label fit across a 1280x800 window (no sideways
    scrolling), the tokens of the empty columns kept in their tooltips."""
    T, F = 26, 50
    sites = ["embed"] + [f"{k}.{layer}" for layer in range(4) for k in ("attn", "mlp", "resid")]
    feats = {s: torch.zeros(T, F) for s in sites}
    for i, s in enumerate(sites):
        feats[s][21, i % F] = 0.5 + 0.01 * i
        feats[s][25, (i + 7) % F] = 0.4 + 0.01 * i
    ns = NodeScores(method="relp", level="feature", aggregation="none", sites=sites, features=feats,
                    vectors={s: torch.zeros(T) for s in sites}, n_pairs=8, metric_clean=3.0, metric_patch=-3.0,
                    info={"n_layers": 4})
    G0 = full_graph(ns)
    G = full_graph(ns, EdgeScores(method="relp", aggregation="none",
                                  edges={(n, METRIC): 1.0 for n in G0 if n != METRIC and G0.nodes[n]["score"] != 0}))
    tokens = [f"[{'S2' if t == 21 else 'END' if t == 25 else t}] tok{t}" for t in range(T)]
    path = write_viewer(G, tmp_path / "c.html", circuit=prune(G, PruneSettings(top_k=100)), tokens=tokens)
    m, _ = measure(path, viewport=(1280, 800), profile=tmp_path / "profile")
    px0 = m["pane"][0]
    cw = m["client"][0]
    assert m["scroll"][0] <= cw  # no sideways scrolling
    kinds = [k for k, _ in m["items"]]
    assert kinds.count("node") == 2 * len(sites) and kinds.count("token-label") == 2 * T
    for kind, (x0, _, x1, _) in m["items"]:
        assert x0 >= max(px0, 0) - 0.5 and x1 <= min(px0 + cw, 1280) + 0.5, (kind, x0, x1)
