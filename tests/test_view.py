"""The circuit viewer: what the page embeds (caps, the run's pruning, cards), that it is one
offline file, and, in headless Chromium, that it runs without errors, draws exactly the circuit
featcirc.circuit.prune gives for the run's settings and for settings from the URL fragment, shows a
node's details and card, and records blocked network requests. ``featcirc view DIR`` end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import networkx as nx
import pytest
from matplotlib.image import imread

from featcirc.circuit import PruneSettings, full_graph, magnitude, prune
from featcirc.cli import main
from featcirc.export.formats import write_json as write_graph_json
from featcirc.io import write_json
from featcirc.sites import METRIC
from featcirc.view import render_html, viewer_data, write_viewer
from test_plot import TOKENS, random_graph, random_scores

CARDS = json.loads((Path(__file__).parent / "fixtures" / "view_cards.json").read_text())
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                    "(apt-get install chromium); the browser checks of the viewer need it")


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


def test_one_offline_file_deterministic_and_escaped(tmp_path):
    G = random_graph()
    C = prune(G, PruneSettings(top_k=25))
    evil = ["</script><img src=x onerror=alert(1)>", "&amp;", "\u2028", " to", " the"]
    p = write_viewer(G, tmp_path / "v.html", circuit=C, tokens=evil, cards=CARDS, title="a <b>title</b>")
    html = p.read_text(encoding="utf-8")
    assert write_viewer(G, tmp_path / "w.html", circuit=C, tokens=evil, cards=CARDS,
                        title="a <b>title</b>").read_text(encoding="utf-8") == html
    assert not list(tmp_path.glob(".*.tmp"))
    # nothing is fetched: no external script, style, font or image; a CSP forbids any request
    code = re.sub(r'(id="featcirc-data">).*?(</script>)', r"\1\2", html, flags=re.S)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\bsrc=|@import|url\(|fetch\(|XMLHttpRequest", code)
    assert set(re.findall(r"https?://[^\s\"')]+", html)) <= {"http://www.w3.org/2000/svg"}  # a namespace
    assert "default-src 'none'" in html
    assert html.count("</script>") == 3  # the error recorder, the data, the viewer: no token closed a script
    assert "<title>a &lt;b&gt;title&lt;/b&gt;</title>" in html
    assert page_data(html)["tokens"] == evil  # round trip through the escaped JSON


# --------------------------------------------------------------------------------- in a browser
class _Dom(HTMLParser):
    """The root's data-* attributes and the drawn nodes (``<g class="node ..." data-id=...>``)."""

    def __init__(self):
        super().__init__()
        self.root: dict = {}
        self.nodes: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.root = a
        if tag == "g" and (a.get("class") or "").split(" ")[0] == "node":
            self.nodes.append(a["data-id"])

    def handle_data(self, data):
        self.text.append(data)


def browse(path: Path, fragment: str = "", *, profile: Path, screenshot: Path | None = None) -> _Dom:
    """Load ``path`` (+ ``#fragment``) in headless Chromium with every host unresolvable; return
    the DOM after the scripts ran (or take a screenshot)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000", "--window-size=1600,1000"]
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
    write_json(out / "summary.json", {"model": "tiny", "model_info": {"n_layers": 2}, "method": "relp",
                                      "level": "feature", "data": str(tmp_path / "pairs" / "heldout_sva.jsonl"),
                                      "prompt": "The keys to the", "prompt_tokens": TOKENS,
                                      "prune": {"node_threshold": None, "top_k": 30, "edge_threshold": 0.0}})
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
    (run_dir / "cards.json").write_text(json.dumps(CARDS))
    assert main(["-q", "view", str(run_dir), "--out", str(tmp_path / "v.html"), "--max-nodes", "40"]) == 0
    data = page_data((tmp_path / "v.html").read_text(encoding="utf-8"))
    assert data["caps"]["nodes_embedded"] == 40 and data["cards"]
    (run_dir / "circuit.json").unlink()  # without it the page starts at the summary's pruning
    assert main(["-q", "view", str(run_dir)]) == 0
    assert page_data(page.read_text(encoding="utf-8"))["circuit"]["reproduced"]


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
    assert main(["-q", "view", str(run_dir), "--max-nodes", "0"]) == 2
    assert "--max-nodes" in capsys.readouterr().err
    assert main(["-q", "view", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    (run_dir / "edges.pt").write_bytes(b"not a torch file")
    assert main(["-q", "view", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "edges.pt" in err and "featcirc discover" in err
    assert not (run_dir / "circuit.html").exists()
