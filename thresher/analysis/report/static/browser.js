// thresher feature browser: a sortable, filterable feature table and a feature view.
// Data comes from two plain scripts loaded before this one (file:// allows no fetch):
// window.THRESHER_STREAM (how the stream's examples look) and window.THRESHER_SAE.
// The columns, their headers, tooltips and filters are SAE.columns, as the statistics declare
// them (thresher/analysis/feature_columns.py); a row holds a value per column, `feature` first.
(function () {
  "use strict";
  var STREAM = window.THRESHER_STREAM, SAE = window.THRESHER_SAE;
  var CONTEXT = 12;  // tokens each side of the firing one
  var index = {};
  SAE.columns.forEach(function (c, i) { index[c.name] = i; });
  var sortKey = SAE.sort, sortDesc = true;
  var filters = [];  // {column, input, test(value, input)}: a row passes every one

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

  function tableColumns() {
    return SAE.columns.filter(function (c) { return c.table; });
  }

  function header() {
    var tr = el("tr");
    tableColumns().forEach(function (c) {
      var th = el("th", {"data-key": c.name, "class": "sortable", title: c.meaning},
                  c.header + (c.name === sortKey ? (sortDesc ? " ▼" : " ▲") : ""));
      th.addEventListener("click", function () {
        sortDesc = c.name === sortKey ? !sortDesc : true;
        sortKey = c.name;
        header();
        table();
      });
      tr.appendChild(th);
    });
    var thead = document.querySelector("#features thead");
    thead.innerHTML = "";
    thead.appendChild(tr);
  }

  // A bound filter passes a row whose value is on the bound's side; an undefined value
  // (null) fails once a bound is set. A "hide" box drops the rows where the flag is true.
  function addFilter(c, id, text, attrs, test) {
    var input = el("input", Object.assign({id: id}, attrs));
    var label = el("label", {title: c.meaning});
    label.appendChild(document.createTextNode(text + " "));
    label.appendChild(input);
    var find = document.getElementById("find").parentNode;
    find.parentNode.insertBefore(label, find);
    filters.push({column: index[c.name], input: input, test: test});
  }

  function makeFilters() {
    var bound = {type: "number", step: "any"};
    SAE.columns.forEach(function (c) {
      if (c.filter === "hide") {
        addFilter(c, "hide-" + c.name, "hide " + c.header, {type: "checkbox", checked: ""},
                  function (v, input) { return !(input.checked && v); });
      }
      if (c.filter === "min" || c.filter === "range") {
        addFilter(c, "min-" + c.name, c.header + " ≥", bound, function (v, input) {
          return input.value === "" || (v !== null && v >= Number(input.value));
        });
      }
      if (c.filter === "range") {
        addFilter(c, "max-" + c.name, c.header + " ≤", bound, function (v, input) {
          return input.value === "" || (v !== null && v <= Number(input.value));
        });
      }
    });
    filters.forEach(function (f) { f.input.addEventListener("input", table); });
    document.getElementById("find").addEventListener("input", table);
  }

  function passes(row) {
    for (var i = 0; i < filters.length; i++) {
      if (!filters[i].test(row[filters[i].column], filters[i].input)) return false;
    }
    var find = document.getElementById("find").value.trim();
    return find === "" || String(row[0]).indexOf(find) === 0;
  }

  function table() {
    var k = index[sortKey], shown = tableColumns().map(function (c) { return index[c.name]; });
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
      shown.forEach(function (i) {
        var td = el("td");
        if (i === 0) td.appendChild(el("a", {href: "#f" + row[i]}, String(row[i])));
        else td.textContent = fmt(row[i]);
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
    var numbers = el("p", {"class": "meta numbers"});
    SAE.columns.slice(1).forEach(function (c, i) {
      if (i > 0) numbers.appendChild(document.createTextNode(", "));
      var v = row[index[c.name]];  // blank in a table cell, spelled out in a sentence
      numbers.appendChild(el("span", {"data-key": c.name, title: c.meaning}, c.header + " " +
                             (v === false ? "no" : v === "" ? "–" : fmt(v))));
    });
    box.appendChild(numbers);
    document.body.dataset.shownFeature = feature;
    var info = SAE.per_feature[String(feature)];
    if (!info) {
      box.appendChild(el("p", {"class": "problem"}, SAE.examples ?
        "This feature never fired on the held-out rows: no examples." :
        "No examples recorded (stats/examples.parquet is missing)."));
      return;
    }
    if (info.hist.length) {
      box.appendChild(el("h3", {}, "activation histogram of its firing rows"));
      box.appendChild(el("p", {"class": "meta"}, "shares of its firing rows per bin of " +
        "[0, its largest activation], estimated from its quantile sample"));
      box.appendChild(histogram(info.hist, info.hist_max));
    }
    ["top", "quantile"].forEach(function (kind) {
      var items = info.examples.filter(function (e) { return e[0] === kind; });
      if (!items.length) return;
      box.appendChild(el("h3", {}, kind === "top" ? "top examples" : "quantile examples"));
      var list = el("div", {"class": "examples " + STREAM.kind, "data-kind": kind});
      items.forEach(function (e) { list.appendChild(example(e)); });
      box.appendChild(list);
    });
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
  makeFilters();
  header();
  table();
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "1";
})();
