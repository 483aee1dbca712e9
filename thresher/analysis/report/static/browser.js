// thresher feature browser: a sortable, filterable feature table and a feature view.
// Data comes from two plain scripts loaded before this one (file:// allows no fetch):
// window.THRESHER_STREAM (how the stream's examples look) and window.THRESHER_SAE.
(function () {
  "use strict";
  var STREAM = window.THRESHER_STREAM, SAE = window.THRESHER_SAE;
  var CONTEXT = 12;  // tokens each side of the firing one
  var HEADERS = {feature: "feature", firing_rate: "density", max_act: "max act",
    mean_act_when_active: "mean act (firing)", mono_score: "MonoScore",
    label_purity: "label purity", top_label: "top label", max_decoder_cos: "max dec cos",
    is_dead: "dead"};
  var col = {};
  SAE.columns.forEach(function (c, i) { col[c] = i; });
  var sortKey = "firing_rate", sortDesc = true;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svgEl(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "boolean") return v ? "yes" : "";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(3);
    return String(v);
  }
  function num(id) {
    var v = document.getElementById(id).value;
    return v === "" ? null : Number(v);
  }

  function header() {
    var tr = el("tr");
    SAE.columns.forEach(function (c) {
      var th = el("th", {"data-key": c, "class": "sortable"},
                  HEADERS[c] + (c === sortKey ? (sortDesc ? " ▼" : " ▲") : ""));
      th.addEventListener("click", function () {
        sortDesc = c === sortKey ? !sortDesc : true;
        sortKey = c;
        header();
        table();
      });
      tr.appendChild(th);
    });
    var thead = document.querySelector("#features thead");
    thead.innerHTML = "";
    thead.appendChild(tr);
  }

  function passes(row) {
    if (document.getElementById("hide-dead").checked && row[col.is_dead]) return false;
    var checks = [["min-density", "firing_rate", 1], ["max-density", "firing_rate", -1],
                  ["min-mono", "mono_score", 1], ["min-purity", "label_purity", 1]];
    for (var i = 0; i < checks.length; i++) {
      var bound = num(checks[i][0]);
      if (bound === null) continue;
      var v = row[col[checks[i][1]]];
      if (v === null || (v - bound) * checks[i][2] < 0) return false;
    }
    var find = document.getElementById("find").value.trim();
    return find === "" || String(row[col.feature]).indexOf(find) === 0;
  }

  function table() {
    var k = col[sortKey];
    var rows = SAE.features.filter(passes).sort(function (a, b) {
      var x = a[k], y = b[k];
      if (x === y) return a[0] - b[0];
      if (x === null) return 1;  // undefined values last either way
      if (y === null) return -1;
      return (x < y ? -1 : 1) * (sortDesc ? -1 : 1);
    });
    var tbody = document.querySelector("#features tbody");
    tbody.innerHTML = "";
    rows.slice(0, 2000).forEach(function (row) {
      var tr = el("tr", {"data-feature": row[0]});
      row.forEach(function (v, i) {
        var td = el("td");
        if (i === 0) td.appendChild(el("a", {href: "#f" + v}, String(v)));
        else td.textContent = fmt(v);
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    document.getElementById("shown").textContent =
      rows.length + " of " + SAE.features.length + " features" +
      (rows.length > 2000 ? " (first 2000 listed)" : "");
  }

  function histogram(hist, maxAct) {
    var w = 320, h = 80, svg = svgEl("svg", {"class": "hist", width: w, height: h + 14,
                                             viewBox: "0 0 " + w + " " + (h + 14)});
    var top = Math.max.apply(null, hist.concat([1e-9]));
    hist.forEach(function (v, i) {
      var bh = v / top * h, bw = w / hist.length;
      svg.appendChild(svgEl("rect", {x: i * bw + 1, y: h - bh, width: bw - 2, height: bh,
                                     "data-share": v}));
    });
    var label = svgEl("text", {x: 0, y: h + 12});
    label.textContent = "0";
    svg.appendChild(label);
    var right = svgEl("text", {x: w, y: h + 12, "text-anchor": "end"});
    right.textContent = fmt(maxAct);
    svg.appendChild(right);
    return svg;
  }

  function textExample(ex, position) {
    var tokens = ex.tokens, box = el("span", {"class": "ctx"});
    var lo = Math.max(0, position - CONTEXT), hi = Math.min(tokens.length, position + CONTEXT + 1);
    box.appendChild(document.createTextNode(tokens.slice(lo, position).join("")));
    box.appendChild(el("mark", {}, tokens[position]));
    box.appendChild(document.createTextNode(tokens.slice(position + 1, hi).join("")));
    return box;
  }

  function imageExample(ex, position) {
    var s = STREAM.thumb, fig = el("figure");
    var wrap = el("div", {"class": "thumb", style: "width:" + s + "px;height:" + s + "px"});
    wrap.appendChild(el("img", {src: "../" + ex.src, width: s, height: s,
                                alt: "example " + ex.id}));
    var caption = ex.label || "";
    if (STREAM.grid) {
      var patch = position - STREAM.prefix;
      if (patch >= 0 && patch < STREAM.grid * STREAM.grid) {
        var side = s / STREAM.grid, r = Math.floor(patch / STREAM.grid), c = patch % STREAM.grid;
        wrap.appendChild(el("div", {"class": "patch", "data-row": r, "data-col": c,
          style: "left:" + c * side + "px;top:" + r * side + "px;width:" + side +
                 "px;height:" + side + "px"}));
        caption += " patch (" + r + ", " + c + ")";
      } else {
        caption += position < STREAM.prefix ? " CLS" : " token " + position;
      }
    }
    fig.appendChild(wrap);
    fig.appendChild(el("figcaption", {}, caption));
    return fig;
  }

  function eegExample(ex, position) {
    var channel = Math.floor(position / ex.num_patches), patch = position % ex.num_patches;
    var trace = ex.traces[String(channel)], w = 360, h = 64, box = el("div");
    var lo = Math.min.apply(null, trace), hi = Math.max.apply(null, trace);
    var span = hi > lo ? hi - lo : 1, last = Math.max(trace.length - 1, 1);
    var svg = svgEl("svg", {"class": "eeg", width: w, height: h, viewBox: "0 0 " + w + " " + h});
    var x0 = patch * STREAM.patch_stride / last * w;
    var x1 = (patch * STREAM.patch_stride + STREAM.patch_length) / last * w;
    svg.appendChild(svgEl("rect", {"class": "patch", x: x0.toFixed(1), y: 0,
                                   width: (x1 - x0).toFixed(1), height: h}));
    svg.appendChild(svgEl("polyline", {points: trace.map(function (v, i) {
      return (i / last * w).toFixed(1) + "," + (h - 4 - (v - lo) / span * (h - 8)).toFixed(1);
    }).join(" ")}));
    box.appendChild(svg);
    var first = ex.start + patch * STREAM.patch_stride;
    box.appendChild(el("span", {"class": "meta"}, ex.recording + " channel " +
      ex.channels[channel] + ", patch " + patch + ", samples " + first + "..." +
      (first + STREAM.patch_length - 1) + " (window from " + ex.start + ")"));
    return box;
  }

  function example(item) {
    var kind = item[0], exampleId = item[2], position = item[3], act = item[4];
    var ex = STREAM.examples[String(exampleId)] || {};
    ex.id = exampleId;
    var div = el("div", {"class": "ex " + STREAM.kind, "data-example": exampleId,
                         "data-position": position});
    div.appendChild(el("span", {"class": "act"}, fmt(act)));
    if (ex.error) {
      div.appendChild(el("span", {"class": "problem"}, "example " + exampleId + ": " + ex.error));
    } else if (STREAM.kind === "text" && ex.tokens) {
      div.appendChild(textExample(ex, position));
    } else if (STREAM.kind === "image" && ex.src) {
      div.appendChild(imageExample(ex, position));
    } else if (STREAM.kind === "eeg" && ex.traces && ex.traces[String(
        Math.floor(position / ex.num_patches))]) {
      div.appendChild(eegExample(ex, position));
    } else {
      div.appendChild(document.createTextNode("example " + exampleId + ", position " +
        position + (ex.origin ? " (" + ex.origin + ")" : "")));
    }
    return div;
  }

  function show(feature) {
    var box = document.getElementById("feature");
    box.innerHTML = "";
    var row = SAE.features.find(function (r) { return r[0] === feature; });
    if (!row) { box.appendChild(el("p", {"class": "problem"}, "no feature " + feature)); return; }
    box.dataset.feature = feature;
    box.appendChild(el("h2", {}, "feature " + feature));
    box.appendChild(el("p", {"class": "meta"}, SAE.columns.slice(1).map(function (c) {
      return HEADERS[c] + " " + fmt(row[col[c]]);
    }).join(", ")));
    var info = SAE.per_feature[String(feature)];
    if (!info) {
      box.appendChild(el("p", {"class": "problem"}, row[col.is_dead] ?
        "This feature never fired on the held-out rows: no examples." :
        "No examples recorded (stats/examples.parquet is missing)."));
      return;
    }
    if (info.hist.length) {
      box.appendChild(el("h3", {}, "activation histogram of its firing rows"));
      box.appendChild(el("p", {"class": "meta"}, "fires on " + fmt(row[col.firing_rate] * 100) +
        "% of held-out rows; shares per bin of [0, max act], estimated from its quantile sample"));
      box.appendChild(histogram(info.hist, row[col.max_act]));
    }
    ["top", "quantile"].forEach(function (kind) {
      var items = info.examples.filter(function (e) { return e[0] === kind; });
      if (!items.length) return;
      box.appendChild(el("h3", {}, kind === "top" ? "top examples" : "quantile examples"));
      var list = el("div", {"class": "examples " + STREAM.kind, "data-kind": kind});
      items.forEach(function (e) { list.appendChild(example(e)); });
      box.appendChild(list);
    });
    document.body.dataset.shownFeature = feature;
  }

  function route() {
    var m = /^#f(\d+)$/.exec(window.location.hash);
    if (m) show(Number(m[1]));
  }

  var s = SAE.sae;
  document.getElementById("sae-info").textContent = s.arch + " on " + s.hook + ", d_sae " +
    s.d_sae + ", L0 " + fmt(s.l0) + ", FVE " + fmt(s.fve) + ", dead " + fmt(s.dead_fraction) +
    ", dense " + fmt(s.dense_fraction_10pct) + " (" + s.eval_rows + " held-out rows)";
  if (STREAM.problem) {
    var p = document.getElementById("problem");
    p.textContent = STREAM.problem;
    p.hidden = false;
  }
  ["hide-dead", "min-density", "max-density", "min-mono", "min-purity", "find"].forEach(
    function (id) { document.getElementById(id).addEventListener("input", table); });
  header();
  table();
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "1";
})();
