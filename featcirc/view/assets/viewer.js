/* featcirc circuit viewer: plain JS + SVG, no library, no network.
 *
 * Reads the graph embedded in <script id="featcirc-data"> (written by featcirc.view.write_viewer),
 * prunes it in the page with the rule of featcirc.circuit.prune, lays it out by layer (rows, one
 * sub-row per site: attn (or z), mlp (or a transcoder's tc), resid in forward order) and token position (columns), fitted to the
 * window (redone on resize), and shows a node's details and feature card on hover / click. The
 * header gives the exported circuit's faithfulness F under each ablation measured (each named) and
 * whether the circuit shown is that one;
 * the metric's star gives the example prompt's own m and answers, and the mean over the pairs.
 *
 * URL fragment (read on load and on every change, written back when a control moves):
 *   #top=N | top=all      keep the N nodes of largest |score| (ties by id)
 *   &threshold=T          keep nodes with |score| >= T
 *   &edge=E               keep edges with |weight| >= E
 *   &node=ID              select (pin) a node
 * After each drawing the root element carries data-drawn-nodes (metric excluded),
 * data-drawn-edges, data-labels (node labels drawn), data-f-applies ("1": F is the shown
 * circuit's, "0": it is not, "none": no F, "unknown": no exported circuit given) and
 * data-ready="1"; script errors are recorded in data-errors.
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var D = JSON.parse(document.getElementById("featcirc-data").textContent);
  var root = document.documentElement;
  var STYLE = D.style;
  var BAND_FILL = {}, BAND_INK = {};  // row colours of a site kind (featcirc.colours.SITE_COLOURS)
  Object.keys(STYLE.bands).forEach(function (k) { BAND_FILL[k] = STYLE.bands[k][0]; BAND_INK[k] = STYLE.bands[k][1]; });
  var MAX_PER_LINE = 12;       // nodes side by side in one (site, position) cell before wrapping
  var MIN_PER_LINE = 3;        // wrap down to this many per line before dropping labels
  var MIN_COL_W = 30;          // px, a token column's least width
  var EMPTY_COL_W = 18;        // px, a column without drawn nodes (its token stays in its tooltip)
  var R_MIN = 3.5, R_MAX = 10; // node radius range (area grows with |score|)
  var LABEL_CHAR_W = 5.9;      // px per character of a 9.5px node label
  var TOKEN_CHAR_W = 7.4;      // px per character of a 12px monospace token label
  var METRIC_CHAR_W = 6.6;     // px per character of the 11px bold metric label

  // ------------------------------------------------------------------------------ the data
  var cols = D.nodes;
  var N = cols.id.length;
  var nodes = [];
  var METRIC = -1;
  for (var i = 0; i < N; i++) {
    var s = cols.score[i];
    var n = {
      i: i, id: cols.id[i], site: cols.site[i], layer: cols.layer[i], kind: cols.kind[i],
      feature: cols.feature[i], position: cols.position[i], score: s, activation: cols.activation[i],
      mag: magnitude(s), ins: [], outs: []
    };
    if (n.kind === "metric") METRIC = i;
    nodes.push(n);
  }
  var edges = [];
  for (var k = 0; k < D.edges.source.length; k++) {
    var e = { k: k, u: D.edges.source[k], v: D.edges.target[k], w: D.edges.weight[k] };
    e.mag = magnitude(e.w);
    edges.push(e);
    nodes[e.u].outs.push(e);
    nodes[e.v].ins.push(e);
  }
  nodes.forEach(function (n) {
    n.ins.sort(byEdgeMag);
    n.outs.sort(byEdgeMag);
  });
  // candidates in prune order: |score| descending, ties by id (featcirc.circuit.prune)
  var ranked = nodes.filter(function (n) { return n.i !== METRIC && isScored(n.score); });
  ranked.sort(function (a, b) { return (b.mag - a.mag) || cmp(a.id, b.id); });
  var scoreMax = ranked.length ? ranked[0].mag : 1;
  var scoreMin = ranked.length ? ranked[ranked.length - 1].mag : 0;
  var weightMax = edges.reduce(function (m, e) { return Math.max(m, e.mag); }, 0);
  var weightMin = edges.reduce(function (m, e) { return e.mag > 0 ? Math.min(m, e.mag) : m; }, Infinity);

  function magnitude(x) { return (typeof x === "number" && isFinite(x)) ? Math.abs(x) : 0; }
  function isScored(x) { return typeof x === "number" && isFinite(x); }
  function cmp(a, b) { return a < b ? -1 : (a > b ? 1 : 0); }
  function byEdgeMag(a, b) { return (b.mag - a.mag) || (a.k - b.k); }

  // --------------------------------------------------------------------------- pruning
  /* featcirc.circuit.prune on the embedded graph: candidates by |score| >= threshold and/or the
     top k (ties by id; unscored nodes never pass), the metric always kept; edges among kept nodes
     with |weight| >= edge; then every node with no directed path to the metric is dropped
     (skipped when the run has no edge scores). */
  function prune(settings) {
    var cands = ranked;
    if (settings.threshold !== null) {
      cands = cands.filter(function (n) { return n.mag >= settings.threshold; });
    }
    if (settings.top !== null) cands = cands.slice(0, settings.top);
    var keep = new Uint8Array(N);
    cands.forEach(function (n) { keep[n.i] = 1; });
    keep[METRIC] = 1;
    var kept = edges.filter(function (e) { return keep[e.u] && keep[e.v] && isScored(e.w) && e.mag >= settings.edge; });
    if (!D.has_edges) {
      return { nodes: cands.map(function (n) { return n.i; }), edges: [] };
    }
    var upstream = {};
    kept.forEach(function (e) { (upstream[e.v] = upstream[e.v] || []).push(e.u); });
    var alive = new Uint8Array(N);
    alive[METRIC] = 1;
    var stack = [METRIC];
    while (stack.length) {
      var v = stack.pop();
      (upstream[v] || []).forEach(function (u) {
        if (!alive[u]) { alive[u] = 1; stack.push(u); }
      });
    }
    return {
      nodes: cands.filter(function (n) { return alive[n.i]; }).map(function (n) { return n.i; }),
      edges: kept.filter(function (e) { return alive[e.u] && alive[e.v]; })
    };
  }

  // ---------------------------------------------------------------------------- layout
  // featcirc.sites.stream_index (z.L in attn.L's place, a transcoder's tc.L in mlp.L's)
  var SITE_KIND_ORDER = { embed: 0, attn: 1, z: 1, mlp: 2, tc: 2, resid: 3 };
  var TC_TEXT = "transcoder: MLP input \u2192 MLP output";
  function siteKind(site) { return site.split(".")[0]; }
  function streamIndex(site) {
    if (site === "metric") return 3 * D.n_layers + 1;
    var kind = siteKind(site);
    if (kind === "embed") return 0;
    return 3 * parseInt(site.split(".")[1], 10) + SITE_KIND_ORDER[kind];
  }
  // one sub-row per site, forward order from the bottom; the metric on top
  var rowSites = D.sites.slice();
  nodes.forEach(function (n) { if (rowSites.indexOf(n.site) < 0 && n.i !== METRIC) rowSites.push(n.site); });
  rowSites.sort(function (a, b) { return streamIndex(a) - streamIndex(b); });
  rowSites.push("metric");
  var perPosition = D.aggregation !== "sum";
  var nCols = perPosition ? Math.max(1, D.n_positions) : 1;

  function tokenText(c) {
    if (!perPosition) return "all positions (summed)";
    var t = D.tokens ? D.tokens[c] : null;
    if (t === null || t === undefined) return "@" + c;
    var shown = t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
    return /^\s*$/.test(t) ? shown.replace(/ /g, "\u2423") : shown;
  }

  function nodeLabel(n) {
    if (n.kind === "feature") return "f" + n.feature;
    if (n.kind === "error") return "err";
    if (n.kind === "component") return n.site;
    return "metric";
  }

  function fullLabel(n) {
    if (n.kind === "metric") return "metric";
    var parts = [n.site];
    if (n.kind === "feature") parts.push("f" + n.feature);
    if (n.kind === "error") parts.push("error");
    if (n.position >= 0) parts.push("@" + n.position + (D.tokens && D.tokens[n.position] !== undefined ?
      " " + JSON.stringify(D.tokens[n.position]) : ""));
    return parts.join(" ");
  }

  function textWidth(str, charW) { return str.length * charW; }

  function truncate(str, width, charW) {
    var n = Math.max(1, Math.floor(width / charW));
    return str.length <= n ? str : str.slice(0, Math.max(1, n - 1)) + "\u2026";
  }

  /* Positions of the drawn nodes, fitted to the graph pane (availW x availH) as far as it goes.
     Columns: token positions; rows: sites in forward order, the metric on top. The nodes of a
     (site, position) cell sit side by side in slots wide enough for their labels, wrapped into
     stacked lines. To fit availW the page tries the longest lines first (MAX_PER_LINE nodes),
     then shortens the longest (down to MIN_PER_LINE), then cuts token labels short (full text on
     hover), and only then narrows the slots, where the labels of a line are drawn largest |score| first
     while they do not overlap. Row spacing shrinks (down to a minimum) to fit availH; whatever
     still does not fit scrolls inside the pane, whose scrollbars are on screen. */
  function layout(drawn, availW, availH, captions) {
    var rowOf = {};
    rowSites.forEach(function (s, r) { rowOf[s] = r; });
    var cells = {};
    drawn.forEach(function (i) {
      var n = nodes[i];
      var c = perPosition ? Math.max(0, n.position) : 0;
      if (i === METRIC) c = nCols - 1;
      var key = rowOf[n.site] + ":" + c;
      (cells[key] = cells[key] || []).push(n);
    });
    var colMax = [];
    for (var c = 0; c < nCols; c++) colMax.push(0);
    Object.keys(cells).forEach(function (key) {
      var c = parseInt(key.split(":")[1], 10);
      colMax[c] = Math.max(colMax[c], cells[key].length);
      cells[key].sort(function (a, b) {
        var ka = a.kind === "feature" ? 1 : 0, kb = b.kind === "feature" ? 1 : 0;
        return (ka - kb) || (b.mag - a.mag) || cmp(a.id, b.id);
      });
    });
    var labelW = 0, siteW = 0;
    drawn.forEach(function (i) { if (i !== METRIC) labelW = Math.max(labelW, textWidth(nodeLabel(nodes[i]), LABEL_CHAR_W)); });
    rowSites.forEach(function (s) { siteW = Math.max(siteW, textWidth(s, 7)); });
    var margin = { left: Math.max(48, siteW + 16), right: 18, top: 36, bottom: 34 };
    var tokW = [];
    for (c = 0; c < nCols; c++) tokW.push(Math.min(150, textWidth(tokenText(c), TOKEN_CHAR_W) + 12));
    function columnWidths(perLine, slot, fullTokens) {
      return perLine.map(function (m, c) {
        return colMax[c] === 0 ? EMPTY_COL_W : Math.max(MIN_COL_W, m * slot + 12, fullTokens ? tokW[c] : 0);
      });
    }
    function totalWidth(w) { return w.reduce(function (a, b) { return a + b; }, 0) + margin.left + margin.right; }
    /* nodes per line in each column: the longest lines whose columns fit availW, shortening the
       longest line first (down to MIN_PER_LINE); null if even those do not fit */
    function lineLengths(slot, fullTokens) {
      var per = colMax.map(function (m) { return Math.max(1, Math.min(MAX_PER_LINE, m)); });
      while (totalWidth(columnWidths(per, slot, fullTokens)) > availW) {
        var widest = -1;
        per.forEach(function (m, c) { if (m > MIN_PER_LINE && (widest < 0 || m > per[widest])) widest = c; });
        if (widest < 0) return null;
        per[widest]--;
      }
      return per;
    }
    var compactSlot = 2 * R_MAX + 3, labelSlot = Math.max(compactSlot, labelW + 5);
    var choice = null;
    for (var pass = 0; pass < 2 && !choice; pass++) {  // every label drawn: shorter lines, then shorter tokens
      var per = lineLengths(labelSlot, pass === 0);
      if (per) choice = { perLine: per, slot: labelSlot, fullTokens: pass === 0 };
    }
    if (!choice) {  // narrower slots: the widest that fits (or the narrowest, and the pane scrolls)
      var lo = compactSlot, hi = labelSlot;
      for (var it = 0; it < 20; it++) {
        var mid = (lo + hi) / 2;
        if (lineLengths(mid, false)) lo = mid; else hi = mid;
      }
      choice = { perLine: lineLengths(lo, false) || colMax.map(function (m) { return Math.max(1, Math.min(MIN_PER_LINE, m)); }),
                 slot: lo, fullTokens: false };
    }
    var slot = choice.slot, perLine = choice.perLine;
    var colW = columnWidths(perLine, slot, choice.fullTokens);
    var colX = [];
    var x = margin.left;
    colW.forEach(function (w) { colX.push(x); x += w; });
    var width = x + margin.right;
    // the star's label goes left of the star (last column): where it has too little room there,
    // the patch prompt's m takes a line of its own and the columns move right, as far as availW allows
    function captionW(lines) {
      return Math.max.apply(null, lines.map(function (t) { return textWidth(t, METRIC_CHAR_W); })) + 26;
    }
    var caption = captions[0], room = colX[nCols - 1] + colW[nCols - 1] / 2 - margin.left;
    if (captionW(caption) > room) {
      caption = captions[1];
      var lead = Math.max(0, Math.min(captionW(caption) - room, availW - width));
      colX = colX.map(function (cx) { return cx + lead; });
      width += lead;
    }
    var metricLines = caption.length;
    // rows: as many lines as the most wrapped cell; spacing between natural (t = 1) and tight (t = 0)
    var rowLines = rowSites.map(function () { return 0; });
    Object.keys(cells).forEach(function (key) {
      var r = parseInt(key.split(":")[0], 10), c = parseInt(key.split(":")[1], 10);
      rowLines[r] = Math.max(rowLines[r], Math.ceil(cells[key].length / perLine[c]));
    });
    function rowHeights(t) {
      var lineH = 33 + 3 * t, pad = 3 + 5 * t, empty = 14 + 8 * t;
      return rowLines.map(function (l, r) {
        if (rowSites[r] === "metric") return 12 + 13 * metricLines + 6 * t;
        return l === 0 ? empty : l * lineH + pad;
      });
    }
    function totalHeight(t) {
      return rowHeights(t).reduce(function (a, b) { return a + b; }, 0) + margin.top + margin.bottom;
    }
    var t = 1;
    if (totalHeight(1) > availH) {
      var h0 = totalHeight(0), h1 = totalHeight(1);
      t = h0 >= availH ? 0 : (availH - h0) / (h1 - h0);
    }
    var lineH = 33 + 3 * t;
    var rowH = rowHeights(t);
    var rowY = [];  // top of each row; row 0 (embed) at the bottom
    var y = margin.top;
    for (var r = rowSites.length - 1; r >= 0; r--) { rowY[r] = y; y += rowH[r]; }
    var height = y + margin.bottom;
    var xy = {}, labelFits = {};
    Object.keys(cells).forEach(function (key) {
      var r = parseInt(key.split(":")[0], 10), c = parseInt(key.split(":")[1], 10);
      var members = cells[key], m = perLine[c];
      var nLines = Math.ceil(members.length / m);
      var lines = [];
      members.forEach(function (n, j) {
        var line = Math.floor(j / m), idx = j % m;
        var inLine = Math.min(m, members.length - line * m);
        var cx = colX[c] + colW[c] / 2 + (idx - (inLine - 1) / 2) * slot;
        var cy = rowY[r] + rowH[r] / 2 + (line - (nLines - 1) / 2) * lineH - 5;
        if (n.i === METRIC) cy = rowY[r] + rowH[r] / 2;
        xy[n.i] = [cx, cy];
        (lines[line] = lines[line] || []).push(n);
      });
      // labels: largest |score| first, each where it overlaps no other label of its line
      lines.forEach(function (line) {
        var placed = [];
        line.slice().sort(function (a, b) { return (b.mag - a.mag) || cmp(a.id, b.id); }).forEach(function (n) {
          if (n.i === METRIC) return;
          var w = textWidth(nodeLabel(n), LABEL_CHAR_W), x0 = xy[n.i][0] - w / 2, x1 = x0 + w;
          if (x0 < colX[c] + 1 || x1 > colX[c] + colW[c] - 1) return;
          if (placed.some(function (p) { return x0 < p[1] + 3 && x1 > p[0] - 3; })) return;
          placed.push([x0, x1]);
          labelFits[n.i] = true;
        });
      });
    });
    return { xy: xy, colX: colX, colW: colW, rowY: rowY, rowH: rowH, width: width, height: height,
             labelFits: labelFits, margin: margin, fullTokens: choice.fullTokens, caption: caption };
  }

  // --------------------------------------------------------------------------- drawing
  function el(tag, attrs, parent) {
    var node = document.createElementNS(SVG_NS, tag);
    for (var a in attrs) if (Object.prototype.hasOwnProperty.call(attrs, a)) node.setAttribute(a, attrs[a]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function signColour(x) {
    if (!isScored(x) || x === 0) return STYLE.neutral;
    return x > 0 ? STYLE.positive : STYLE.negative;
  }
  function fmt(x) {
    if (x === null || x === undefined || !isFinite(x)) return "n/a";
    var a = Math.abs(x);
    if (a === 0) return "0";
    if (a >= 1e-3 && a < 1e4) return x.toPrecision(3);
    return x.toExponential(2);
  }
  function signed(x) { return (x > 0 ? "+" : "") + fmt(x); }

  function shapeFor(n, r, g) {
    if (n.kind === "metric") {
      var pts = [];
      for (var q = 0; q < 10; q++) {
        var rad = q % 2 ? 6 : 14, ang = Math.PI / 2 + q * Math.PI / 5;
        pts.push((rad * Math.cos(ang)).toFixed(2) + "," + (-rad * Math.sin(ang)).toFixed(2));
      }
      return el("polygon", { points: pts.join(" "), "class": "shape", fill: STYLE.metric }, g);
    }
    if (n.kind === "error") return el("rect", { x: -r, y: -r, width: 2 * r, height: 2 * r, "class": "shape" }, g);
    if (n.kind === "component") {
      var d = r * 1.3;
      return el("polygon", { points: "0," + (-d) + " " + d + ",0 0," + d + " " + (-d) + ",0", "class": "shape" }, g);
    }
    return el("circle", { r: r, "class": "shape" }, g);
  }

  // ------------------------------------------------------------- the metric and F
  function quoted(t) { return JSON.stringify(t); }
  function hasText(x) { return typeof x === "string"; }
  function meanOver() { return D.metric.n_pairs ? "over " + D.metric.n_pairs + " pairs" : "over the pairs"; }

  /* The star's label: the example prompt's own m and answers (when the run recorded them), then
     the mean over the pairs, called a mean (featcirc.export.style.metric_caption); narrow: the
     patch prompt's m on a line of its own. */
  function metricCaption(narrow) {
    var ex = D.example || {}, lines = [];
    if (isScored(ex.metric_clean)) {
      var answers = hasText(ex.clean_answer) && hasText(ex.patch_answer) ?
        ": " + quoted(ex.clean_answer) + " vs " + quoted(ex.patch_answer) : "";
      lines.push("m = " + fmt(ex.metric_clean) + " on this prompt" + answers);
      if (isScored(ex.metric_patch)) {
        var patch = "(patch prompt: " + fmt(ex.metric_patch) + ")";
        if (narrow) lines.push(patch); else lines[lines.length - 1] += " " + patch;
      }
    }
    if (isScored(D.metric.clean)) lines.push("mean m " + meanOver() + ": " + fmt(D.metric.clean));
    return lines.length ? lines : ["metric"];
  }

  /* [name, value] rows on the metric: the example's prompts, answers, probabilities and m, the means. */
  function metricFacts() {
    var ex = D.example || {}, rows = [];
    if (hasText(ex.prompt)) rows.push(["this prompt", quoted(ex.prompt)]);
    if (hasText(ex.clean_answer) || hasText(ex.patch_answer)) {
      var p = function (a, pr) { return hasText(a) ? quoted(a) + (isScored(pr) ? " (p = " + fmt(pr) + ")" : "") : "?"; };
      rows.push(["answers", p(ex.clean_answer, ex.p_clean_answer) + " clean vs " + p(ex.patch_answer, ex.p_patch_answer) +
                 " patch" + (isScored(ex.p_clean_answer) || isScored(ex.p_patch_answer) ? "; p at this prompt's last token" : "")]);
    }
    if (isScored(ex.metric_clean)) rows.push(["m on this prompt", fmt(ex.metric_clean)]);
    if (hasText(ex.patch_prompt)) rows.push(["patch prompt", quoted(ex.patch_prompt)]);
    if (isScored(ex.metric_patch)) rows.push(["m on the patch prompt", fmt(ex.metric_patch)]);
    rows.push(["mean m " + meanOver(), "clean " + fmt(D.metric.clean) + ", patch " + fmt(D.metric.patch)]);
    rows.push(["definition", "m = logit(clean answer) \u2212 logit(patch answer)"]);
    return rows;
  }

  function metricLabel(g, lines, starX, L) {
    var est = Math.max.apply(null, lines.map(function (s) { return textWidth(s, METRIC_CHAR_W); }));
    var leftRoom = starX - L.margin.left - 20, rightRoom = L.width - starX - 22;
    var left = leftRoom >= est || leftRoom >= rightRoom;
    var t = el("text", { x: 0, y: 0, "text-anchor": left ? "end" : "start", "class": "metric-label" }, g);
    lines.forEach(function (line, j) {
      var ts = el("tspan", { x: left ? -18 : 18, dy: j === 0 ? 4 - 6.5 * (lines.length - 1) : 13 }, t);
      ts.textContent = line;
    });
  }

  /* Once drawn: a metric label running off the graph goes to the star's other side, or to the edge. */
  function fitMetricLabel(svg, L) {
    var label = svg.querySelector(".metric-label");
    if (!label || !label.getBoundingClientRect) return;
    var sx = svg.getBoundingClientRect().left;
    function box() { var b = label.getBoundingClientRect(); return [b.left - sx, b.right - sx]; }
    function place(anchor, x) {
      label.setAttribute("text-anchor", anchor);
      Array.prototype.forEach.call(label.childNodes, function (ts) { ts.setAttribute("x", x); });
    }
    var b = box(), starX = L.xy[METRIC][0];
    if (b[0] >= 0 && b[1] <= L.width) return;
    if (b[0] < 0) place("start", 18); else place("end", -18);
    b = box();
    if (b[0] < 0 || b[1] > L.width) place("start", 4 - starX);
  }

  var circuitKey = D.circuit && D.circuit.nodes ? D.circuit.nodes.slice().sort(byNumber).join(",") : null;
  function byNumber(a, b) { return a - b; }

  /* The header's line on the exported circuit's faithfulness under each ablation measured (each F
     with its ablation named), and whether it is the circuit shown. */
  function showFaithfulness(shown) {
    var box = document.getElementById("faithfulness");
    box.textContent = "";
    var Fs = D.faithfulness ? (Array.isArray(D.faithfulness) ? D.faithfulness : [D.faithfulness]) : [];
    if (!Fs.length) {
      h("span", { "class": "muted" }, "faithfulness: not recorded for this run", box);
      root.setAttribute("data-f-applies", "none");
      return;
    }
    function where(F) {
      return [F.split, F.pairs !== null && F.pairs !== undefined ? F.pairs + " pairs" : null].filter(Boolean).join(", ");
    }
    function f3(x) {  // a share of the metric to 3 decimals, as the PNG's title (-0.0001 is 0.000, not -0.000)
      return isScored(x) ? (Math.round(x * 1000) / 1000 + 0).toFixed(3).replace(/^-(0\.0+)$/, "$1") : "n/a";
    }
    function interval(v) {
      return isScored(v.value) && isScored(v.lo) && isScored(v.hi) ? " [" + f3(v.lo) + ", " + f3(v.hi) + "]" : "";
    }
    var shared = Fs.every(function (F) { return where(F) === where(Fs[0]); });
    Fs.forEach(function (F, i) {
      var f = F.faithfulness || {};
      if (i > 0) h("span", null, ", ", box);
      h("b", null, (i === 0 ? "F = " : "") + f3(f.value), box);
      var rest = interval(f) + (F.ablation ? " under " + F.ablation + " ablation" : "");
      if (!shared && where(F)) rest += " (" + where(F) + ")";
      h("span", { "class": "f-ablation", "data-ablation": F.ablation || "" }, rest, box);
    });
    var withCi = Fs.filter(function (F) { return F.confidence && F.faithfulness && isScored(F.faithfulness.lo); });
    var how = [];
    if (withCi.length) how.push(withCi[0].confidence + " interval" + (withCi.length > 1 ? "s" : ""));
    if (shared && where(Fs[0])) how.push(where(Fs[0]));
    var n = null;
    Fs.forEach(function (F) { if (n === null && F.n_nodes !== null && F.n_nodes !== undefined) n = F.n_nodes; });
    if (how.length) h("span", null, " (" + how.join("; ") + ")", box);
    var exported = "the run's exported circuit" + (n !== null ? " (" + n + " nodes)" : "");
    var applies = circuitKey === null ? "unknown" : (shown.slice().sort(byNumber).join(",") === circuitKey &&
      (n === null || n === D.circuit.n_nodes) ? "1" : "0");
    if (applies === "1") {
      h("span", null, " for the circuit shown, " + exported, box);
    } else if (applies === "0") {
      h("span", { "class": "stale" }, " \u26a0 F belongs to " + exported + ", not the one shown (" + shown.length +
        " nodes); \u201crun's circuit\u201d shows it again", box);
    } else {
      h("span", null, " for " + exported, box);
    }
    var tips = Fs.map(function (F) {
      var c = F.completeness || {};
      return isScored(c.value) ? "completeness F(M \\ C) = " + f3(c.value) + interval(c) +
        (F.ablation ? " under " + F.ablation + " ablation" : "") : null;
    }).filter(Boolean);
    box.title = "Faithfulness F = (m(C) \u2212 m(\u2205)) / (m(M) \u2212 m(\u2205)) of the run's exported circuit" +
      (tips.length ? "; " + tips.join("; ") : "") + (Fs[0].intervals ? "; intervals: " + Fs[0].intervals : "") +
      ". Mean ablation is the gentlest test; patch ablation (each pair's own counterfactual) is the one MIB and " +
      "most papers use. `featcirc evaluate DIR` measures other sizes and ablations.";
    root.setAttribute("data-f-applies", applies);
  }

  var state = { top: null, threshold: null, edge: 0, pinned: null };
  var view = null;  // {svg, nodeEls, edgeEls, drawn (Set), drawnEdges}

  var scrollbar = null;  // px a scrollbar takes in this browser
  function scrollbarWidth() {
    if (scrollbar === null) {
      var probe = document.createElement("div");
      probe.style.cssText = "position:absolute;top:-200px;width:100px;height:100px;overflow:scroll;visibility:hidden";
      document.body.appendChild(probe);
      scrollbar = probe.offsetWidth - probe.clientWidth;
      document.body.removeChild(probe);
    }
    return scrollbar;
  }

  /* The graph's layout fitted to the pane, leaving room for a scrollbar where one will show. */
  function paneSize() {
    var box = document.getElementById("canvas").getBoundingClientRect();
    return [Math.max(200, Math.floor(box.width) || window.innerWidth - 400),
            Math.max(150, Math.floor(box.height) || window.innerHeight - 200)];
  }

  function fittedLayout(drawn, captions) {
    var size = paneSize(), W = size[0], H = size[1];
    var sb = scrollbarWidth();
    var L = layout(drawn, W, H, captions);
    if (L.height > H) L = layout(drawn, W - sb, H, captions);  // a vertical scrollbar will show
    var vertical = L.height > H;
    if (L.width > W - (vertical ? sb : 0)) L = layout(drawn, W - (vertical ? sb : 0), H - sb, captions);
    L.pane = size;
    return L;
  }

  function draw(again) {
    var t0 = window.performance.now();
    var result = prune(state);
    var drawn = result.nodes.concat([METRIC]);
    var canvas = document.getElementById("canvas");
    showFaithfulness(result.nodes);  // header text first: its height sets the pane's
    var L = fittedLayout(drawn, [metricCaption(false), metricCaption(true)]);
    var svg = el("svg", { width: L.width, height: L.height, viewBox: "0 0 " + L.width + " " + L.height,
                          role: "img", "aria-label": "circuit graph" });
    var bg = el("g", { "class": "background" }, svg);
    // row bands and labels
    rowSites.forEach(function (site, r) {
      var kind = site === "metric" ? "metric" : siteKind(site);
      el("rect", { x: L.margin.left, y: L.rowY[r], width: L.width - L.margin.left - L.margin.right,
                   height: L.rowH[r], fill: BAND_FILL[kind] }, bg);
      if (kind === "resid" || kind === "embed" || kind === "metric") {  // a darker line closes each layer
        el("line", { x1: 8, x2: L.width - L.margin.right, y1: L.rowY[r], y2: L.rowY[r], stroke: "#b9bcc8",
                     "stroke-width": 1 }, bg);
      }
      var t = el("text", { x: L.margin.left - 8, y: L.rowY[r] + L.rowH[r] / 2 + 4, "text-anchor": "end",
                           "class": "band-label", fill: BAND_INK[kind] }, bg);
      t.style.fill = BAND_INK[kind];
      t.textContent = site;
    });
    // columns: separators and token labels (bottom and top)
    for (var c = 0; c < nCols; c++) {
      if (c > 0) el("line", { x1: L.colX[c], x2: L.colX[c], y1: L.margin.top, y2: L.height - L.margin.bottom,
                              stroke: "#ffffff", "stroke-width": 2 }, bg);
      var cx = L.colX[c] + L.colW[c] / 2;
      [L.height - L.margin.bottom + 16, L.margin.top - 10].forEach(function (ty, which) {
        var tl = el("text", { x: cx, y: ty, "text-anchor": "middle", "class": "token-label" }, bg);
        var full = L.fullTokens && L.colW[c] > EMPTY_COL_W;  // an empty column is narrow: its token is cut
        tl.textContent = full ? tokenText(c) : truncate(tokenText(c), L.colW[c] - 4, TOKEN_CHAR_W);
        var title = el("title", {}, tl);
        title.textContent = perPosition ? "position " + c + ": " + JSON.stringify(D.tokens ? D.tokens[c] : null)
                                        : "scores summed over positions";
        if (perPosition) {
          var ti = el("text", { x: cx, y: ty + (which === 0 ? 12 : -12),
                                "text-anchor": "middle", "class": "token-index" }, bg);
          ti.textContent = String(c);
        }
      });
    }
    // edges, weakest first so the strong ones lie on top
    var eg = el("g", { "class": "edges" }, svg);
    var drawnEdges = result.edges.slice().sort(function (a, b) { return (a.mag - b.mag) || (b.k - a.k); });
    var wmax = drawnEdges.reduce(function (m, e) { return Math.max(m, e.mag); }, 0) || 1;
    var edgeEls = {};
    var markup = drawnEdges.map(function (e) {  // one string parsed at once: much faster than 10k createElementNS
      var p = L.xy[e.u], q = L.xy[e.v], rel = e.mag / wmax;
      var my = ((p[1] + q[1]) / 2).toFixed(1);
      return '<path class="edge" d="M' + p[0].toFixed(1) + " " + p[1].toFixed(1) + " C" + p[0].toFixed(1) + " " + my +
        " " + q[0].toFixed(1) + " " + my + " " + q[0].toFixed(1) + " " + q[1].toFixed(1) + '" stroke="' +
        signColour(e.w) + '" stroke-width="' + (0.5 + 5.5 * rel).toFixed(2) + '" stroke-opacity="' +
        (0.1 + 0.75 * Math.sqrt(rel)).toFixed(3) + '"></path>';
    });
    eg.innerHTML = markup.join("");
    drawnEdges.forEach(function (e, j) { edgeEls[e.k] = eg.childNodes[j]; });
    // nodes
    var ng = el("g", { "class": "nodes" }, svg);
    var smax = result.nodes.reduce(function (m, i) { return Math.max(m, nodes[i].mag); }, 0) || 1;
    var nodeEls = {}, nLabels = 0;
    drawn.forEach(function (i) {
      var n = nodes[i], p = L.xy[i];
      var g = el("g", { "class": "node " + n.kind, transform: "translate(" + p[0].toFixed(1) + "," + p[1].toFixed(1) + ")",
                        "data-id": n.id }, ng);
      var rel = n.mag / smax;
      var r = R_MIN + (R_MAX - R_MIN) * Math.sqrt(rel);
      var shape = shapeFor(n, r, g);
      if (n.kind !== "metric") {
        shape.setAttribute("fill", signColour(n.score));
        shape.setAttribute("fill-opacity", (0.35 + 0.65 * rel).toFixed(3));
      }
      if (n.kind === "metric") {
        metricLabel(g, L.caption, p[0], L);
      } else if (L.labelFits[i]) {
        nLabels++;
        var lab = el("text", { x: 0, y: R_MAX + 10, "text-anchor": "middle", "class": "node-label" }, g);
        lab.textContent = nodeLabel(n);
      }
      var tt = el("title", {}, g);
      tt.textContent = n.kind === "metric" ? metricFacts().map(function (row) { return row[0] + ": " + row[1]; }).join("\n") : fullLabel(n) + "\nscore " + signed(n.score);
      g.addEventListener("mouseenter", function () { focus(i); });
      g.addEventListener("mouseleave", function () { focus(state.pinned); });
      g.addEventListener("click", function (ev) { ev.stopPropagation(); pin(state.pinned === i ? null : i); });
      nodeEls[i] = g;
    });
    svg.addEventListener("click", function () { pin(null); });
    canvas.textContent = "";
    canvas.appendChild(svg);
    fitMetricLabel(svg, L);
    view = { svg: svg, nodeEls: nodeEls, edgeEls: edgeEls, drawn: new Set(drawn), drawnEdges: result.edges };
    if (state.pinned !== null && !view.drawn.has(state.pinned)) {
      // a pinned node that the new pruning hides keeps its details, without highlighting
    }
    focus(state.pinned);
    var nE = result.edges.length;
    document.getElementById("status").textContent = "drawn: " + result.nodes.length + " nodes + metric, " +
      nE + " edge" + (nE === 1 ? "" : "s") + (nLabels < result.nodes.length ? "; " + nLabels + " labelled (where they fit), hover for the rest" : "") + " \u00b7";
    var now = paneSize();
    if (!again && (now[0] !== L.pane[0] || now[1] !== L.pane[1])) return draw(true);  // the header rewrapped
    root.setAttribute("data-drawn-nodes", String(result.nodes.length));
    root.setAttribute("data-drawn-edges", String(nE));
    root.setAttribute("data-labels", String(nLabels));
    root.setAttribute("data-draw-ms", String(Math.round(window.performance.now() - t0)));
    root.setAttribute("data-ready", "1");
  }

  // --------------------------------------------------------------------- interaction
  function focus(i) {
    if (!view) return;
    var svg = view.svg;
    Array.prototype.forEach.call(svg.querySelectorAll(".hl, .nb"), function (x) { x.classList.remove("hl", "nb"); });
    Array.prototype.forEach.call(svg.querySelectorAll(".pinned"), function (x) { x.classList.remove("pinned"); });
    if (state.pinned !== null && view.nodeEls[state.pinned]) view.nodeEls[state.pinned].classList.add("pinned");
    if (i === null || i === undefined) {
      svg.classList.remove("focus");
      showPanel(null);
      return;
    }
    if (view.nodeEls[i]) {
      svg.classList.add("focus");
      view.nodeEls[i].classList.add("hl");
      var n = nodes[i];
      n.ins.concat(n.outs).forEach(function (e) {
        var pe = view.edgeEls[e.k];
        if (!pe) return;
        pe.classList.add("hl");
        var other = e.u === i ? e.v : e.u;
        if (view.nodeEls[other]) view.nodeEls[other].classList.add("nb");
      });
    } else {
      svg.classList.remove("focus");
    }
    showPanel(i);
  }

  function pin(i) {
    state.pinned = (i === undefined) ? null : i;
    writeHash();
    focus(state.pinned);
  }

  // --------------------------------------------------------------------------- the panel
  function h(tag, attrs, text, parent) {
    var x = document.createElement(tag);
    if (attrs) for (var a in attrs) if (Object.prototype.hasOwnProperty.call(attrs, a)) x.setAttribute(a, attrs[a]);
    if (text !== null && text !== undefined) x.textContent = text;
    if (parent) parent.appendChild(x);
    return x;
  }

  function legend(parent) {
    var box = h("div", { "class": "legend" }, null, parent);
    function row(drawIcon, text) {
      var d = h("div", null, null, box);
      var s = el("svg", { width: 26, height: 18, viewBox: "-13 -9 26 18" }, d);
      drawIcon(s);
      h("span", null, text, d);
    }
    row(function (s) { el("line", { x1: -12, x2: 12, y1: 0, y2: 0, stroke: STYLE.positive, "stroke-width": 3 }, s);
                       el("circle", { r: 5, fill: STYLE.positive }, s); },
        STYLE.sign_legend[0]);
    row(function (s) { el("line", { x1: -12, x2: 12, y1: 0, y2: 0, stroke: STYLE.negative, "stroke-width": 3 }, s);
                       el("circle", { r: 5, fill: STYLE.negative }, s); },
        STYLE.sign_legend[1]);
    // feature and error nodes: an SAE's, a transcoder's (tc.L) or, in a mixed circuit, either
    var dictKinds = {};
    nodes.forEach(function (n) { if (n.kind === "feature" || n.kind === "error") dictKinds[siteKind(n.site)] = 1; });
    var hasTc = rowSites.some(function (site) { return siteKind(site) === "tc"; });
    var onlyTc = dictKinds.tc && Object.keys(dictKinds).length === 1;
    var dict = onlyTc ? "transcoder" : (dictKinds.tc ? "SAE or transcoder" : "SAE");
    row(function (s) { el("circle", { r: 6, fill: "#999", stroke: "#2b2b2b", "stroke-width": 0.7 }, s); },
        dict + " feature (size and opacity grow with |score|)");
    row(function (s) { el("rect", { x: -6, y: -6, width: 12, height: 12, fill: "#999", stroke: "#000", "stroke-width": 1.6 }, s); },
        dict + " error node (what the " + dict + " does not reconstruct)");
    row(function (s) { el("polygon", { points: "0,-8 8,0 0,8 -8,0", fill: "#999", stroke: "#2b2b2b", "stroke-width": 0.7 }, s); },
        "component node (a whole site, no SAE)");
    row(function (s) {
      var pts = [];
      for (var q = 0; q < 10; q++) { var rad = q % 2 ? 3.5 : 8, ang = Math.PI / 2 + q * Math.PI / 5;
        pts.push((rad * Math.cos(ang)).toFixed(2) + "," + (-rad * Math.sin(ang)).toFixed(2)); }
      el("polygon", { points: pts.join(" "), fill: STYLE.metric, stroke: "#6b4d00" }, s);
    }, "metric: logit(clean answer) \u2212 logit(patch answer)");
    var hasZ = rowSites.some(function (site) { return siteKind(site) === "z"; });
    ["attn"].concat(hasZ ? ["z"] : [], ["mlp"], hasTc ? ["tc"] : [], ["resid"]).forEach(function (kind) {
      row(function (s) { el("rect", { x: -12, y: -7, width: 24, height: 14, fill: BAND_FILL[kind], stroke: BAND_INK[kind] }, s); },
          kind + " rows: " + { attn: "attention output", z: "attention heads' outputs before W_O (hook_z)", mlp: "MLP output",
                               tc: TC_TEXT + " (in the MLP's place)",
                               resid: "residual stream after the block (embed: before block 0)" }[kind]);
    });
    h("p", { "class": "help" }, "Edge width and opacity grow with |weight|. Rows run from the embedding (bottom) " +
      "to the metric (top); columns are the example prompt's tokens.", box);
  }

  function edgeTable(parent, title, list, self, upstream) {
    h("h3", null, title + (list.length ? " (" + Math.min(8, list.length) + " strongest of " + list.length + ")" : ""), parent);
    if (!list.length) { h("div", { "class": "help" }, "none in the embedded graph", parent); return; }
    var table = h("table", null, null, parent);
    list.slice(0, 8).forEach(function (e) {
      var other = upstream ? e.u : e.v;
      var shown = view && view.drawn.has(other) && view.drawn.has(self) &&
        view.drawnEdges.indexOf(e) >= 0;
      var tr = h("tr", { "class": "link" + (shown ? "" : " hidden-node"), title: shown ? "" : "not drawn at this threshold" }, null, table);
      h("td", { "class": "num " + (e.w > 0 ? "pos" : (e.w < 0 ? "neg" : "")) }, signed(e.w), tr);
      h("td", null, fullLabel(nodes[other]) + (shown ? "" : " (hidden)"), tr);
      tr.addEventListener("click", function () { pin(other); });
    });
  }

  function shade(a, amax) {
    var rel = amax > 0 ? Math.max(0, Math.min(1, a / amax)) : 0;
    return "rgba(255, 160, 0, " + (0.08 + 0.72 * rel).toFixed(3) + ")";
  }

  function example(parent, ex, amax) {
    var toks = ex.tokens || [], acts = ex.activations || [];
    var box = h("div", { "class": "example" }, null, parent);
    toks.forEach(function (t, j) {
      var a = typeof acts[j] === "number" ? acts[j] : 0;
      var sp = h("span", { title: JSON.stringify(t) + ": " + fmt(a) }, t, box);
      if (a > 0) sp.style.background = shade(a, amax);
      if (j === ex.max_index) sp.className = "max";
    });
  }

  function card(parent, c) {
    h("h3", null, "feature card", parent);
    var facts = [];
    if (typeof c.density === "number") facts.push("density " + (100 * c.density).toPrecision(3) + "%");
    if (typeof c.max_activation === "number") facts.push("max activation " + fmt(c.max_activation));
    if (D.cards_info && D.cards_info.corpus) facts.push("corpus " + D.cards_info.corpus);
    if (facts.length) h("div", { "class": "help" }, facts.join(" \u00b7 "), parent);
    var amax = typeof c.max_activation === "number" ? c.max_activation : 0;
    var tops = Array.isArray(c.top_examples) ? c.top_examples : [];
    if (!amax) tops.forEach(function (ex) { (ex.activations || []).forEach(function (a) { if (a > amax) amax = a; }); });
    if (tops.length) {
      h("div", { "class": "help" }, "top activations", parent);
      tops.forEach(function (ex) { example(parent, ex, amax); });
    }
    (Array.isArray(c.quantiles) ? c.quantiles : []).forEach(function (qt) {
      var det = h("details", null, null, parent);
      h("summary", null, (qt.label || "quantile") + " (" + ((qt.examples || []).length) + ")", det);
      (qt.examples || []).forEach(function (ex) { example(det, ex, amax); });
    });
    if (c.logit_lens && (c.logit_lens.top || c.logit_lens.bottom)) {
      h("div", { "class": "help" }, "logit lens (decoder direction through the unembedding)", parent);
      var lens = h("div", { "class": "lens" }, null, parent);
      [["top", "pos"], ["bottom", "neg"]].forEach(function (pair) {
        var t = h("table", null, null, lens);
        (c.logit_lens[pair[0]] || []).forEach(function (row) {
          var tr = h("tr", null, null, t);
          h("td", null, JSON.stringify(row[0]), tr);
          h("td", { "class": "num " + pair[1] }, fmt(row[1]), tr);
        });
      });
    }
  }

  function showPanel(i) {
    var panel = document.getElementById("panel");
    panel.textContent = "";
    if (i === null || i === undefined) {
      h("h2", null, "How to read this", panel);
      h("p", { "class": "help" }, "Hover a node for its details; click to pin it (click the background to " +
        "unpin). The sliders re-prune the circuit with featcirc's rule: the top k nodes by |score| and/or " +
        "|score| \u2265 a bound, edges with |weight| \u2265 a bound, then nodes with no path to the metric dropped.", panel);
      legend(panel);
      return;
    }
    var n = nodes[i];
    h("h2", null, fullLabel(n), panel);
    h("div", { "class": "id" }, n.id, panel);
    var t = h("table", null, null, panel);
    function fact(k, v, cls) { var tr = h("tr", null, null, t); h("td", null, k, tr); h("td", { "class": cls || "" }, v, tr); }
    if (n.kind === "metric") {
      metricFacts().forEach(function (row) { fact(row[0], row[1]); });
    } else {
      fact("kind", n.kind + (n.kind === "feature" ? " " + n.feature : ""));
      fact("site", n.site + (siteKind(n.site) === "tc" ? "  (" + TC_TEXT + ")" : ""));
      if (n.position >= 0) fact("position", n.position + (D.tokens ? "  " + JSON.stringify(D.tokens[n.position]) : ""));
      fact("score", signed(n.score), n.score > 0 ? "pos" : (n.score < 0 ? "neg" : ""));
      fact("", n.score > 0 ? "supports the clean answer" : (n.score < 0 ? "opposes the clean answer" : "no effect"));
      fact("activation", fmt(n.activation) + (n.kind === "feature" ? " (mean, clean)" : " (L2 norm, clean)"));
      if (view && !view.drawn.has(i)) fact("", "not drawn at this threshold");
    }
    edgeTable(panel, "inputs", n.ins, i, true);
    edgeTable(panel, "outputs", n.outs, i, false);
    if (n.kind === "feature") {
      var c = D.cards[n.site + "/" + n.feature];
      if (c) card(panel, c);
      else h("p", { "class": "help" }, D.cards_info ? "no card for this feature in cards.json" :
        "no feature cards in this run (cards.json absent)", panel);
    }
  }

  // ------------------------------------------------------------------ controls and URL
  var topSlider = document.getElementById("top-slider");
  var thrSlider = document.getElementById("threshold-slider");
  var edgeSlider = document.getElementById("edge-slider");
  var nRanked = ranked.length;
  topSlider.max = String(Math.max(1, nRanked));

  /* log scale between lo and hi over slider steps 1..1000; step 0 is "no bound" (0) */
  function logScale(lo, hi) {
    lo = lo > 0 && isFinite(lo) ? lo : 1e-6;
    hi = hi > lo ? hi : lo * 10;
    return {
      value: function (s) { return s <= 0 ? 0 : Math.exp(Math.log(lo) + (Math.log(hi) - Math.log(lo)) * (s - 1) / 999); },
      step: function (v) {
        if (!(v > 0)) return 0;
        var s = 1 + 999 * (Math.log(v) - Math.log(lo)) / (Math.log(hi) - Math.log(lo));
        return Math.max(1, Math.min(1000, Math.round(s)));
      }
    };
  }
  var thrScale = logScale(scoreMin > 0 ? scoreMin : scoreMax * 1e-4, scoreMax);
  var edgeScale = logScale(isFinite(weightMin) ? weightMin : 1e-6, weightMax || 1);

  function syncControls() {
    topSlider.value = String(state.top === null ? nRanked : state.top);
    document.getElementById("top-value").textContent = state.top === null || state.top >= nRanked ?
      "all " + nRanked : String(state.top);
    thrSlider.value = String(thrScale.step(state.threshold === null ? 0 : state.threshold));
    document.getElementById("threshold-value").textContent = state.threshold ? fmt(state.threshold) : "none";
    edgeSlider.value = String(edgeScale.step(state.edge));
    document.getElementById("edge-value").textContent = state.edge ? fmt(state.edge) : "none";
  }

  function writeHash() {
    var parts = ["top=" + (state.top === null ? "all" : state.top)];
    if (state.threshold) parts.push("threshold=" + state.threshold);
    if (state.edge) parts.push("edge=" + state.edge);
    if (state.pinned !== null) parts.push("node=" + encodeURIComponent(nodes[state.pinned].id));
    var hash = "#" + parts.join("&");
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  function initialState() {
    var init = D.initial;
    return { top: init.top_k === null ? null : init.top_k, threshold: init.node_threshold,
             edge: init.edge_threshold || 0, pinned: null };
  }

  function readHash() {
    var s = initialState();
    var hash = location.hash.replace(/^#/, "");
    if (!hash) return s;
    hash.split("&").forEach(function (part) {
      var eq = part.indexOf("=");
      if (eq < 0) return;
      var key = part.slice(0, eq), raw = decodeURIComponent(part.slice(eq + 1));
      if (key === "top") {
        if (raw === "all") s.top = null;
        else if (/^\d+$/.test(raw)) s.top = parseInt(raw, 10);
      } else if (key === "threshold") {
        var t = parseFloat(raw);
        if (isFinite(t) && t >= 0) s.threshold = t > 0 ? t : null;
      } else if (key === "edge") {
        var ew = parseFloat(raw);
        if (isFinite(ew) && ew >= 0) s.edge = ew;
      } else if (key === "node") {
        for (var j = 0; j < N; j++) if (nodes[j].id === raw) s.pinned = j;
      }
    });
    return s;
  }

  var pending = false;
  function redraw() {
    syncControls();
    writeHash();
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () { pending = false; draw(); });
  }

  topSlider.addEventListener("input", function () {
    var v = parseInt(topSlider.value, 10);
    state.top = v >= nRanked ? null : v;
    redraw();
  });
  thrSlider.addEventListener("input", function () {
    var v = thrScale.value(parseInt(thrSlider.value, 10));
    state.threshold = v > 0 ? v : null;
    redraw();
  });
  edgeSlider.addEventListener("input", function () {
    state.edge = edgeScale.value(parseInt(edgeSlider.value, 10));
    redraw();
  });
  document.getElementById("reset").addEventListener("click", function () {
    var pinned = state.pinned;
    state = initialState();
    state.pinned = pinned;
    redraw();
  });
  var resizing = false;
  window.addEventListener("resize", function () {  // the layout fits the window: redo it
    if (resizing) return;
    resizing = true;
    window.requestAnimationFrame(function () { resizing = false; draw(); });
  });
  window.addEventListener("hashchange", function () {
    state = readHash();
    syncControls();
    draw();
  });

  // ------------------------------------------------------------------------ the texts
  document.getElementById("subtitle").textContent = D.subtitle;
  (function key() {  // always-visible one-line legend, after the status
    var k = document.getElementById("legend-line");
    var pos = h("b", null, STYLE.sign_legend[0], k);
    pos.style.color = STYLE.positive;
    h("span", null, " \u00b7 ", k);
    var neg = h("b", null, STYLE.sign_legend[1], k);
    neg.style.color = STYLE.negative;
    var tcRows = rowSites.some(function (site) { return siteKind(site) === "tc"; });
    h("span", null, " \u00b7 \u25cf feature \u25a0 " + (tcRows ? "SAE or transcoder error" : "SAE error") +
      " \u25c6 component \u2605 metric \u00b7 size |score|, width |weight|" + (tcRows ? " \u00b7 tc: " + TC_TEXT : ""), k);
  })();
  var notes = document.getElementById("notes");
  var caps = D.caps;
  h("p", null, "This page embeds the " + caps.nodes_embedded + " of " + caps.nodes_scored +
    " scored nodes with the largest |score|" + (caps.min_embedded_abs_score !== null ?
    " (|score| \u2265 " + fmt(caps.min_embedded_abs_score) + ")" : "") + (caps.circuit_extra ?
    " plus " + caps.circuit_extra + " of the run's circuit" : "") + ", at most " + caps.max_nodes +
    ", and " + (caps.edges_embedded === caps.edges_among_embedded ? "all " + caps.edges_embedded +
    " edges among them" : "the " + caps.edges_embedded + " strongest of the " + caps.edges_among_embedded +
    " edges among them (cap " + caps.max_edges + ")") + "; the run scored " + caps.edges_scored +
    " edges in all. Thresholds below these bounds show only what is embedded.", notes);
  if (D.circuit) {
    h("p", null, "The controls start at the run's pruning (" + D.circuit.settings + "): " +
      (D.circuit.reproduced ? "the run's circuit, " + D.circuit.n_nodes + " nodes and " + D.circuit.n_edges + " edges."
        : "this does not reproduce the run's circuit exactly (it has " + D.circuit.n_nodes + " nodes); the page shows the pruning of the embedded graph."), notes);
  }
  h("p", null, "Sign convention: " + STYLE.sign_legend.join("; ") + ". " +
    "Metric m = logit(clean answer) \u2212 logit(patch answer); the star gives " + (D.example ?
    "its value on the example prompt (the token columns) and " : "") + "its mean " + meanOver() +
    " (subtitle: clean and patch prompts).", notes);

  state = readHash();
  syncControls();
  draw();
})();
