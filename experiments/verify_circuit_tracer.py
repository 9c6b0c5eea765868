"""Open a featcirc run in circuit-tracer's own viewer and take a headless-Chromium screenshot.

What it checks, in the real consumer (not featcirc's idea of it):

1. the run's ``graph_files/`` (written by ``featcirc.export.graph_files.export_run_graphs``, with
   feature files from ``featcirc features``) parse with circuit-tracer's own pydantic models
   (``frontend/graph_models.py`` for the graph, ``frontend/feature_models.py`` for every feature
   file), when pydantic is installed;
2. circuit-tracer's local server (its ``CircuitGraphHandler`` from ``frontend/local_server.py``,
   bound to 127.0.0.1) serves the directory to its viewer (``frontend/assets``), loaded by
   headless Chromium with the feature panel opened on the graph's top feature node; the rendered
   DOM must show the prompt tokens under the graph, one node per (site, layer, feature, position)
   and a filled feature panel (examples and token predictions);
3. a screenshot of that page is written (``experiments/results/circuit-tracer/`` by default).

circuit-tracer is not a featcirc dependency: ``--circuit-tracer`` names a copy of it, either a
directory holding ``circuit_tracer/frontend`` (a git checkout of safety-research/circuit-tracer,
an unpacked wheel), a ``.whl`` file, a bare git directory, or ``pypi`` /
``pypi==VERSION`` (``pip download circuit-tracer --no-deps`` into a temporary directory). The
viewer's ``index.html`` loads d3, d3-jetpack, dagre and pako from the internet; they are served
from local npm copies (``npm install d3@7 d3-jetpack@2.3.0 dagre@0.8.5 pako@2.1.0 esbuild`` into
``--vendor``): d3 v7 and d3-jetpack's selection helpers are bundled with esbuild into one
``d3.js`` with a single d3-selection (the bundle d3-jetpack ships patches a second, older copy of
d3-selection, so ``append('div.x')`` would not work); the dev live-reload client and the ``.npy``
loader (unused by attribution graphs) are left out. Nothing is copied into featcirc.

Needs Debian's ``chromium`` (``apt-get install chromium``) and node's ``npm``.

    python experiments/verify_circuit_tracer.py RUN_DIR --circuit-tracer pypi==0.5.0
    python experiments/verify_circuit_tracer.py --demo --circuit-tracer /path/to/circuit-tracer

``--demo`` first runs ``featcirc demo`` and ``featcirc features`` into a temporary directory.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "experiments" / "results" / "circuit-tracer"
VENDOR_PACKAGES = ("d3@7", "d3-jetpack@2.3.0", "dagre@0.8.5", "pako@2.1.0", "esbuild@0.25")
# remote script of index.html (matched by its file name) -> local file under the npm prefix, or None to drop it
VENDOR_SCRIPTS = {
    "d3.js": "d3-jetpack-bundle.js",  # built by d3_bundle()
    "jetpack_2024-07-20.js": None,  # in the bundle above
    "hotserver-client-ws.js": None,  # live reload while editing the viewer
    "npy_v0.js": None,  # .npy loader, for circuit-tracer's addition demo only
    "dagre.js": "node_modules/dagre/dist/dagre.min.js",
    "dagre.min.js": "node_modules/dagre/dist/dagre.min.js",
    "pako.min.js": "node_modules/pako/dist/pako.min.js",
}
# added to index.html: script errors of the page end up in the DOM, where check_dom reads them
ERROR_REPORTER = """<script>
(function(){
  function note(msg){ var p = document.getElementById('verify-errors') || document.body.appendChild(
      Object.assign(document.createElement('pre'), {id: 'verify-errors'})); p.textContent += msg + '\\n' }
  window.addEventListener('error', function(e){ note('error: ' + e.message + ' at ' + e.filename + ':' + e.lineno) })
  window.addEventListener('unhandledrejection', function(e){ note('rejection: ' + (e.reason && (e.reason.stack || e.reason))) })
})()
</script>"""
# d3 v7 plus the d3-jetpack helpers the viewer uses (selection shorthands, conventions, nestBy, clamp)
D3_ENTRY = """
import * as d3 from "d3";
import * as essentials from "d3-jetpack/essentials";
import {transition} from "d3-transition";
import at from "./node_modules/d3-jetpack/src/at.js";
import st from "./node_modules/d3-jetpack/src/st.js";
import translateSelection from "./node_modules/d3-jetpack/src/translate-selection.js";
import conventions from "./node_modules/d3-jetpack/src/conventions.js";
import drawAxis from "./node_modules/d3-jetpack/src/drawAxis.js";
import wordwrap from "./node_modules/d3-jetpack/src/wordwrap.js";
transition.prototype.at = at;
transition.prototype.st = st;
transition.prototype.translate = translateSelection;
// the viewer's jetpack build (transformer-circuits.pub) also gives conventions() a c.drawAxis(svg)
function conventionsWithAxis(c) {
  c = conventions(c);
  c.drawAxis = svg => drawAxis(Object.assign({}, c, {svg: svg || c.svg}));
  return c;
}
window.d3 = Object.assign({}, d3, essentials, {conventions: conventionsWithAxis, drawAxis, wordwrap});
"""


def log(msg: str) -> None:
    print(f"verify_circuit_tracer: {msg}", flush=True)


# ------------------------------------------------------------------------------- circuit-tracer copy
def circuit_tracer_root(spec: str, work: Path) -> Path:
    """A directory holding ``circuit_tracer/frontend`` from ``spec`` (see the module doc)."""
    if spec.startswith("pypi"):
        version = spec.partition("==")[2]
        dest = work / "pypi"
        dest.mkdir()
        req = f"circuit-tracer=={version}" if version else "circuit-tracer"
        subprocess.run([sys.executable, "-m", "pip", "download", req, "--no-deps", "-d", str(dest), "-q"], check=True)
        spec = str(next(dest.glob("*.whl")))
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".whl":
        dest = work / "wheel"
        with zipfile.ZipFile(p) as z:
            z.extractall(dest)
        return dest
    if (p / "circuit_tracer" / "frontend").is_dir():
        return p
    if (p / "HEAD").is_file() and (p / "objects").is_dir():  # a bare git directory
        dest = work / "git"
        dest.mkdir()
        tar = subprocess.run(["git", "--git-dir", str(p), "archive", "HEAD", "circuit_tracer/frontend"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
        return dest
    raise SystemExit(f"--circuit-tracer {spec}: not a directory with circuit_tracer/frontend, a .whl, "
                     "a bare git directory or pypi[==VERSION]")


def vendor_dir(path: "Path | None", work: Path) -> Path:
    """An npm prefix with the viewer's remote scripts (installed with npm when missing) and the
    d3 + jetpack bundle (built with esbuild, d3-selection and d3-transition resolved to d3 v7's)."""
    prefix = (path or (work / "vendor")).resolve()
    mods = prefix / "node_modules"
    if not all((mods / p.rsplit("@", 1)[0]).is_dir() for p in VENDOR_PACKAGES):
        log(f"npm install {' '.join(VENDOR_PACKAGES)} into {prefix}")
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                        *VENDOR_PACKAGES], check=True)
    bundle = prefix / "d3-jetpack-bundle.js"
    if not bundle.exists():
        (prefix / "d3-entry.js").write_text(D3_ENTRY)
        aliases = []
        for dep in ("d3-selection", "d3-transition"):
            nested = mods / "d3" / "node_modules" / dep
            aliases.append(f"--alias:{dep}={nested if nested.is_dir() else mods / dep}")
        subprocess.run([str(mods / ".bin" / "esbuild"), "d3-entry.js", "--bundle", "--format=iife",
                        "--log-level=warning", *aliases, f"--outfile={bundle}"], check=True, cwd=prefix)
    return prefix


def prepare_frontend(ct_root: Path, vendor: Path, work: Path) -> Path:
    """A runnable copy of circuit-tracer's frontend package: ``{work}/ct/circuit_tracer/frontend``
    with an empty ``circuit_tracer/__init__.py`` (so its local server imports without the model
    code), and ``assets/index.html`` loading local copies of its remote scripts."""
    pkg = work / "ct" / "circuit_tracer"
    shutil.copytree(ct_root / "circuit_tracer" / "frontend", pkg / "frontend")
    (pkg / "__init__.py").write_text("")
    assets = pkg / "frontend" / "assets"
    local_dir = assets / "_vendor"
    local_dir.mkdir()
    html = (assets / "index.html").read_text(encoding="utf-8")

    def local(m: re.Match) -> str:
        name = m.group(2).rsplit("/", 1)[-1]
        if name not in VENDOR_SCRIPTS:
            raise SystemExit(f"index.html loads {m.group(2)}, which this script has no local copy for")
        target = VENDOR_SCRIPTS[name]
        if target is None:
            return ""
        shutil.copy(vendor / target, local_dir / Path(target).name)
        return f"<script src='./_vendor/{Path(target).name}'></script>"

    html = re.sub(r"<script src=(['\"])(https?://[^'\"]+)\1></script>", local, html)
    if "https://" in html or "http://" in html:
        raise SystemExit("index.html still loads something remote after the rewrite")
    html = html.replace("<div class='tooltip", ERROR_REPORTER + "\n<div class='tooltip", 1)
    (assets / "index.html").write_text(html, encoding="utf-8")
    return pkg.parent


def load_ct_module(ct_pkg_parent: Path, name: str):
    sys.path.insert(0, str(ct_pkg_parent))
    try:
        return importlib.import_module(f"circuit_tracer.frontend.{name}")
    finally:
        sys.path.remove(str(ct_pkg_parent))


# ------------------------------------------------------------------------------- checks
def check_models(ct_pkg_parent: Path, graph_path: Path, feature_dir: Path) -> str:
    """Parse the graph and every feature file with circuit-tracer's pydantic models."""
    try:
        graph_models = load_ct_module(ct_pkg_parent, "graph_models")
        feature_models = load_ct_module(ct_pkg_parent, "feature_models")
    except ImportError as e:
        return f"skipped (circuit-tracer's models need pydantic: {e})"
    graph_models.Model.model_validate(json.loads(graph_path.read_text()))
    files = sorted(feature_dir.glob("*.json"))
    for f in files:
        feature_models.Model.model_validate(json.loads(f.read_text()))
    return f"graph and {len(files)} feature files parse with circuit-tracer's pydantic models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(ct_pkg_parent: Path, data_dir: Path, port: int):
    """circuit-tracer's CircuitGraphHandler on 127.0.0.1:port (its ``serve()`` binds all interfaces)."""
    ls = load_ct_module(ct_pkg_parent, "local_server")
    kw = dict(frontend_dir=ct_pkg_parent / "circuit_tracer" / "frontend" / "assets", data_dir=str(data_dir))
    if "features_dir" in inspect.signature(ls.CircuitGraphHandler.__init__).parameters:
        kw["features_dir"] = None
    httpd = ls.ReusableTCPServer(("127.0.0.1", port), functools.partial(ls.CircuitGraphHandler, **kw))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def chromium_binary(name: "str | None") -> str:
    for c in ([name] if name else ["chromium", "chromium-browser", "google-chrome"]):
        if c and shutil.which(c):
            return shutil.which(c)
    raise SystemExit("no chromium found: apt-get install chromium (or pass --chromium PATH)")


def chromium(binary: str, url: str, *args: str, timeout: int = 180) -> str:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", "--window-size=1600,1100", "--virtual-time-budget=20000",
           *args, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"chromium failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def check_dom(dom: str, graph: dict) -> list[str]:
    """What the rendered page must show; returns the failures."""
    fails = []
    errors = re.search(r'<pre id="verify-errors">(.*?)</pre>', dom, re.S)
    if errors:
        fails.append("script errors on the page:\n" + errors.group(1).strip())
    labels = re.findall(r'class="prompt-token"(?:(?!class="prompt-token").)*?<text[^>]*>([^<]*)</text>', dom, re.S)
    tokens = [_html(t) for t in graph["metadata"]["prompt_tokens"]]
    if labels != tokens:
        fails.append(f"the tokens under the graph are {labels}, expected the prompt {tokens}")
    n_rendered = len(re.findall(r'<text[^>]*class="node\b', dom))
    if n_rendered != len(graph["nodes"]):
        fails.append(f"{n_rendered} nodes drawn, the graph has {len(graph['nodes'])}")
    if len(re.findall(r'class="ctx-container"', dom)) == 0 or "feature-example-list" not in dom:
        fails.append("the feature panel shows no examples")
    if "Token Predictions" not in dom:
        fails.append("the feature panel shows no token predictions (logit lens)")
    if "failed to load" in dom:
        fails.append("the viewer says a feature failed to load")
    return fails


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="a featcirc run directory (discover + features)")
    ap.add_argument("--demo", action="store_true", help="make one: featcirc demo + featcirc features in a temp dir")
    ap.add_argument("--demo-dir", type=Path, default=None, help="with --demo: make it here instead (kept)")
    ap.add_argument("--circuit-tracer", required=True, help="circuit-tracer copy (see the module doc)")
    ap.add_argument("--vendor", type=Path, default=None, help="npm prefix holding the viewer's scripts")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--name", default=None, help="screenshot file stem (default: circuit-tracer-<version>)")
    ap.add_argument("--chromium", default=None)
    args = ap.parse_args(argv)
    if bool(args.run_dir) == bool(args.demo):
        ap.error("give a RUN_DIR or --demo")

    from featcirc.export.graph_files import export_run_graphs, feature_set_name, features_dir

    with tempfile.TemporaryDirectory(prefix="featcirc-ct-") as tmp:
        work = Path(tmp)
        run_dir = Path(args.run_dir) if args.run_dir else (args.demo_dir or work / "demo")
        if args.demo:
            log(f"featcirc demo + features into {run_dir} (a few minutes)")
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            for cmd in (["demo", "--out", str(run_dir), "--force"], ["features", str(run_dir)]):
                subprocess.run([sys.executable, "-m", "featcirc", "-q", *cmd], check=True, env=env)
        paths = export_run_graphs(run_dir)
        graph_path = paths["graph_files"]
        data_dir = graph_path.parent
        graph = json.loads(graph_path.read_text())
        run = json.loads((run_dir / "run.json").read_text())
        fdir = features_dir(data_dir, feature_set_name(run["model"], run["saes"]))
        wanted = {n["feature"] for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"}
        have = {int(p.stem) for p in fdir.glob("*.json")}
        if wanted - have:
            raise SystemExit(f"{len(wanted - have)} feature nodes have no feature file: run `featcirc features {run_dir}`")

        ct_root = circuit_tracer_root(args.circuit_tracer, work)
        ct_parent = prepare_frontend(ct_root, vendor_dir(args.vendor, work), work)
        log(check_models(ct_parent, graph_path, fdir))
        port = free_port()
        httpd = serve(ct_parent, data_dir, port)
        try:
            slug, clicked = graph["metadata"]["slug"], graph["qParams"]["clickedId"]
            url = f"http://127.0.0.1:{port}/index.html?slug={slug}&clickedId={clicked}"
            binary = chromium_binary(args.chromium)
            dom = chromium(binary, url, "--dump-dom")
            version = _ct_version(ct_root)
            args.out.mkdir(parents=True, exist_ok=True)
            stem = args.name or f"circuit-tracer-{version}"
            shot = args.out / f"{stem}.png"
            chromium(binary, url, f"--screenshot={shot}")
        finally:
            httpd.shutdown()
            httpd.server_close()
        fails = check_dom(dom, graph)
        n_features = len(wanted)
        n_sites = len({n["site"] for n in graph["nodes"] if n.get("kind") in ("feature", "error")})
        log(f"circuit-tracer {version}: graph {slug}: {len(graph['nodes'])} nodes ({n_features} distinct features on "
            f"{n_sites} sites, {len(graph['metadata']['prompt_tokens'])} tokens), feature panel on {clicked}")
        log(f"screenshot -> {shot}")
        for f in fails:
            log(f"FAIL: {f}")
        if not fails:
            log("the page shows the prompt tokens, the graph and a filled feature panel")
        return 1 if fails else 0


def _ct_version(root: Path) -> str:
    dist = next(root.glob("circuit_tracer-*.dist-info"), None)
    if dist:
        return dist.name.split("-")[1].replace(".dist", "")
    return "git"


if __name__ == "__main__":
    sys.exit(main())
