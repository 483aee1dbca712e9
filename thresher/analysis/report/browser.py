"""The feature browser: one static page per SAE (report/features/<sae_id>.html).

The page loads three plain scripts, so it works from file:// (no fetch, no server):
`../static/browser.js` (the table and the feature view), `../data/<stream_id>.js` (what the
stream's examples look like, thresher/analysis/report/modality.py) and `../data/<sae_id>.js`
(the SAE's features and their examples). The columns come from the registered statistics'
declarations (thresher/analysis/feature_columns.py's `Column`: header, tooltip, table or
feature view, filter), so a new statistic shows without an edit here or in browser.js. The
table sorts on a header click and filters by the declared filters and the feature index; a row
opens the feature (`#f<index>`): its numbers, an activation histogram of its firing rows and
its top and quantile examples.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from thresher import uri_io
from thresher.analysis.feature_columns import Column, feature_columns
from thresher.config import SWEEP_KEY

HIST_BINS = 16
SORT = "firing_rate"  # the table opens sorted by it, largest first


def script(variable: str, obj: Any) -> str:
    """`window.<variable> = <json>;`: data a file:// page can load with <script src>."""
    # "</" escaped: the JSON may hold a text example's "</script>"
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f"window.{variable} = {text};\n"


def _number(value: Any, digits: int = 5) -> float | None:
    value = float(value)
    return float(f"{value:.{digits}g}") if math.isfinite(value) else None


def activation_histogram(quantiles: np.ndarray, levels: np.ndarray, max_act: float
                         ) -> list[float]:
    """Share of a feature's firing rows per bin of [0, max_act], from its quantile sample: the
    activation at levels (i + ½)/n of a uniform sample of its firing rows (stats/examples
    .parquet), with 0 at level 0 and max_act at level 1, the CDF linear in between."""
    if not len(quantiles) or not max_act > 0:
        return []
    order = np.argsort(levels)
    xs = np.concatenate([[0.0], quantiles[order], [max_act]])
    ps = np.concatenate([[0.0], levels[order], [1.0]])
    xs = np.maximum.accumulate(xs)
    edges = np.linspace(0.0, max_act, HIST_BINS + 1)
    cdf = np.interp(edges, xs, ps)
    return [round(float(v), 4) for v in np.diff(cdf)]


def browsed_columns(features: pd.DataFrame) -> list[Column]:
    """The registered columns the browser shows, in their order: `feature` first, then those
    not declared browse="none" that the features table holds (one written before a statistic
    was registered lacks its column)."""
    return [c for c in feature_columns() if c.browse != "none" and c.name in features]


def column_values(column: Column, values: pd.Series, label_name: Any) -> list[Any]:
    """One column as the page's JSON holds it: floats to 5 significant digits (null where not
    finite), label indices as names (blank where −1)."""
    if column.display == "label_name":
        return [label_name(int(v)) if int(v) >= 0 else "" for v in values]
    if pa.types.is_floating(column.type):
        return [_number(v) for v in values]
    if pa.types.is_integer(column.type):
        return [int(v) for v in values]
    if pa.types.is_boolean(column.type):
        return [bool(v) for v in values]
    return [str(v) for v in values]


def sae_data(sae: pd.Series, features: pd.DataFrame, examples: pd.DataFrame | None,
             label_name: Any) -> dict[str, Any]:
    """The browser's data for one SAE: its summary numbers, the browsed columns (name, header,
    meaning, whether the table lists it, its filter), one row per feature in that order, and
    per live feature its examples [kind, rank, example id, position, activation] and the
    histogram of its activations over [0, hist_max]."""
    mine = features[features.sae_id == sae["sae_id"]].sort_values("feature")
    columns = browsed_columns(features)
    rows = [list(row) for row in zip(*(column_values(c, mine[c.name], label_name)
                                       for c in columns), strict=True)]
    per_feature: dict[str, Any] = {}
    if examples is not None:
        max_act = dict(zip(mine.feature.astype(int), mine.max_act.astype(float), strict=True))
        # One sort, then plain arrays per feature: pandas per-group calls cost ~1 ms each,
        # seconds for a sweep of wide SAEs.
        own = examples[examples.sae_id == sae["sae_id"]]
        own = own.assign(_top=(own.kind == "top")).sort_values(
            ["feature", "_top", "rank"], ascending=[True, False, True])
        feature = own.feature.to_numpy(np.int64)
        kind, rank = own.kind.to_numpy(str), own["rank"].to_numpy(np.int64)
        example_id, position = own.example_id.to_numpy(np.int64), own.position.to_numpy(np.int64)
        activation, level = own.activation.to_numpy(np.float64), own["quantile"].to_numpy(
            np.float64)
        starts = np.flatnonzero(np.r_[True, feature[1:] != feature[:-1]]) if len(feature) \
            else np.array([], dtype=np.int64)
        for lo, hi in zip(starts, [*starts[1:], len(feature)], strict=True):
            j = int(feature[lo])
            quant = slice(lo, hi)
            is_quant = kind[quant] == "quantile"
            per_feature[str(j)] = {
                "examples": [[str(kind[r]), int(rank[r]), int(example_id[r]),
                              int(position[r]), _number(activation[r])] for r in range(lo, hi)],
                "hist": activation_histogram(activation[quant][is_quant],
                                             level[quant][is_quant], max_act.get(j, 0.0)),
                "hist_max": _number(max_act.get(j, 0.0)),
            }
    keys = ("sae_id", "stream_id", *SWEEP_KEY, "fve", "l0", "dead_fraction",
            "dense_fraction_10pct", "eval_rows", "hook")
    info = {k: (_number(sae[k]) if isinstance(sae[k], float | np.floating) else
                int(sae[k]) if isinstance(sae[k], int | np.integer) else str(sae[k]))
            for k in keys if k in sae}
    return {"sae": info, "features": rows, "per_feature": per_feature,
            "columns": [{"name": c.name, "header": c.header, "meaning": c.meaning,
                         "table": c.browse == "table", "filter": c.filter} for c in columns],
            "sort": SORT if SORT in {c.name for c in columns} else "feature",
            "examples": examples is not None}


def write_browser(out: Path, sae: pd.Series, data: dict[str, Any]) -> Path:
    """report/features/<sae_id>.html and its data script report/data/<sae_id>.js."""
    sae_id = str(sae["sae_id"])
    uri_io.save(out / "data" / f"sae-{sae_id}.js", script("THRESHER_SAE", data).encode())
    title = html.escape(f"{sae_id}: feature browser")
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>
<link rel='stylesheet' href='../static/report.css'></head>
<body class='browser'>
<p><a href='../index.html' id='back'>← report</a></p>
<h1>{title}</h1>
<p id='sae-info' class='meta'></p>
<p id='problem' class='problem' hidden></p>
<div id='filters'>
 <label>feature <input type='text' id='find' size='6'></label>
 <span id='shown' class='meta'></span>
</div>
<div id='layout'><div id='table-box'><table id='features'><thead></thead><tbody></tbody>
</table></div><div id='feature'><p class='meta'>Pick a feature in the table.</p></div></div>
<script src='../data/stream-{html.escape(str(sae["stream_id"]))}.js'></script>
<script src='../data/sae-{html.escape(sae_id)}.js'></script>
<script src='../static/browser.js'></script>
</body></html>"""
    return uri_io.save(out / "features" / f"{sae_id}.html", page.encode())


def write_stream_data(out: Path, stream_id: str, data: dict[str, Any]) -> Path:
    return uri_io.save(out / "data" / f"stream-{stream_id}.js",
                        script("THRESHER_STREAM", data).encode())
