"""`thresher report RUN`: report/index.html and a feature browser per SAE, from stats/*.parquet.

The index holds the sweep table (each SAE linked to its browser), the SAEs on the Pareto front
of FVE against L0 (the ones to read first: no other SAE explains as much with as few active
latents), the training curves (stats/curves.parquet), and density and MonoScore histograms.
Every page is a static file that works from file:// (thresher/analysis/report/browser.py).

Examples are shown by the stream's modality (thresher/modalities/<name>/report.py), their inputs
resolved as the run resolved them: relative paths against the config file recorded in run.json,
whatever folder `thresher report` starts in. What cannot be rendered says why on the page.
"""

from __future__ import annotations

import html
import importlib.resources
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from thresher import uri_io
from thresher.analysis.report import browser, plots
from thresher.analysis.report.modality import example_renderer
from thresher.config import SWEEP_KEY, ConfigError

__all__ = ["write_report"]

SWEEP_COLUMNS = ("sae_id", *SWEEP_KEY, "fve", "nmse", "l0", "l1", "l2_ratio",
                 "dead_fraction", "dense_fraction_10pct", "mono_score_mean", "ce_loss_recovered")
STATIC_FILES = ("browser.js", "report.css")


def write_report(run_dir: str | Path) -> Path:
    """Write the report of a finished run; returns report/index.html (in the working copy
    where the run directory is a URI; every file is published to it)."""
    import matplotlib

    matplotlib.use("Agg")
    from thresher.rundir import RunDirError, load_run_config, open_run

    run_dir = open_run(run_dir)  # a URI: its working copy, brought up to date
    stats = run_dir / "stats"
    if not (stats / "summary.parquet").is_file():
        raise FileNotFoundError(f"{stats}/summary.parquet is missing: run `thresher analyze "
                                f"{run_dir}` first (or pass a finished run directory)")
    summary = pq.read_table(stats / "summary.parquet").to_pandas().sort_values("sae_id")
    features = pq.read_table(stats / "features.parquet").to_pandas()
    examples = _read_optional(stats / "examples.parquet")
    curves = _read_optional(stats / "curves.parquet")
    try:
        record, cfg, problem = *load_run_config(run_dir), None
    except (ConfigError, RunDirError) as exc:  # e.g. the run's inputs were moved since
        record, cfg = {}, None
        problem = (f"examples show ids only: the run's config no longer loads ({exc}); put "
                   "the inputs back where run.json's config names them")
    out = run_dir / "report"
    for folder in ("static", "data", "features", "images"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    _copy_static(out / "static")
    for stream_id in summary["stream_id"].unique():
        stream_id = str(stream_id)
        ids = summary.sae_id[summary.stream_id == stream_id]
        mine = None if examples is None else examples[examples.sae_id.isin(ids)]
        show = example_renderer(run_dir, record, cfg, stream_id, mine, out, problem)
        refs = [] if mine is None else list(zip(mine.example_id.astype(int),
                                                mine.position.astype(int), strict=True))
        browser.write_stream_data(out, stream_id, show.data(refs))
        for _, sae in summary[summary.stream_id == stream_id].iterrows():
            browser.write_browser(out, sae, browser.sae_data(sae, features, examples,
                                                             show.label_name))
    front = plots.pareto_front(summary)
    images = {"pareto": plots.pareto_plot(summary, front, out / "pareto.png"),
              "density": plots.histograms(features, summary, "log10_density",
                                          out / "density.png",
                                          "log10 feature density (dead features left out)"),
              "mono": plots.histograms(features, summary, "mono_score", out / "monoscore.png",
                                       "MonoScore (undefined left out)")}
    if curves is not None and len(curves):
        images["curves"] = plots.curves_plot(curves, out / "curves.png")
    index = uri_io.save(out / "index.html", _index_page(summary, front, images).encode())
    uri_io.publish_tree(out)  # the images and browser files, where the run dir is remote
    return index


def _read_optional(path: Path) -> pd.DataFrame | None:
    return pq.read_table(path).to_pandas() if path.is_file() else None


def _copy_static(folder: Path) -> None:
    package = importlib.resources.files("thresher.analysis.report") / "static"
    for name in STATIC_FILES:
        uri_io.save(folder / name, (package / name).read_bytes())


def _index_page(summary: pd.DataFrame, front: pd.DataFrame, images: dict[str, Path]) -> str:
    first = summary.iloc[0]
    name = html.escape(str(first["run_name"]))
    front_items = "".join(
        f"<li><a class='browse' href='features/{html.escape(str(r.sae_id))}.html'>"
        f"{html.escape(str(r.sae_id))}</a> <span class='meta'>L0 {r.l0:.1f}, FVE {r.fve:.3f}, "
        f"dense {r.dense_fraction_10pct:.1%}, dead {r.dead_fraction:.1%}</span></li>"
        for r in front.itertuples(index=False))
    curves = (_img(images["curves"], "training curves") if "curves" in images else
              "<p class='problem'>No training curves: stats/curves.parquet is missing (runs "
              "record them every train.curve_every steps; set it above 0).</p>")
    body = [
        f"<h1>thresher report: {name}</h1>",
        f"<p>{len(summary)} SAEs on {html.escape(str(first['model']))}; statistics over "
        f"{int(first['eval_rows'])} held-out rows with frozen weights.</p>",
        "<h2>Read first: the Pareto front of FVE against L0</h2>",
        "<p class='meta'>No other SAE of the sweep explains as much variance with as few "
        "active latents; each links to its feature browser.</p>",
        f"<ol id='front'>{front_items}</ol>",
        "<h2>Sweep</h2>", _sweep_table(summary, set(front.sae_id)),
        *_extra_tables(summary),
        "<h2>Sparsity against reconstruction</h2>", _img(images["pareto"], "Pareto plot"),
        "<h2>Training curves</h2>", curves,
        "<h2>Feature density</h2>", _img(images["density"], "density histograms"),
        "<h2>MonoScore</h2>", _img(images["mono"], "MonoScore histograms"),
    ]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>thresher report</title>"
            "<link rel='stylesheet' href='static/report.css'></head><body>"
            + "\n".join(body) + _IMAGE_CHECK + "</body></html>")


# After load, the body records how many images rendered and how many failed; a headless
# browser's DOM dump shows it (tests/analysis/test_analyze.py).
_IMAGE_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesBroken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
});</script>"""


def _img(path: Path, alt: str) -> str:
    return f"<img src='{html.escape(path.name)}' alt='{html.escape(alt)}' width='900'>"


# Optional summary sections: (table id, title, column prefix); shown when a run filled any of
# their columns (ground truth of a synthetic source, sparse probing).
EXTRA_TABLES = (("ground-truth", "Ground truth (synthetic source)", "gt_"),
                ("probing", "Sparse probing", "probe_"))


def _extra_tables(summary: pd.DataFrame) -> list[str]:
    parts = []
    for table_id, title, prefix in EXTRA_TABLES:
        cols = [c for c in summary.columns if c.startswith(prefix)]
        if not cols or not summary[cols].notna().to_numpy().any():
            continue
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ("sae_id", *cols))
        rows = "".join(
            "<tr>" + f"<td>{html.escape(str(row['sae_id']))}</td>" + "".join(
                f"<td>{row[c]:.4g}</td>" if isinstance(row[c], float) else
                f"<td>{html.escape(str(row[c]))}</td>" for c in cols) + "</tr>"
            for _, row in summary.iterrows())
        parts += [f"<h2>{html.escape(title)}</h2>",
                  f"<table id='{table_id}'><tr>{head}</tr>{rows}</table>"]
    return parts


def _sweep_table(summary: pd.DataFrame, front: set[str]) -> str:
    cols = [c for c in SWEEP_COLUMNS if c in summary]
    head = "".join(f"<th>{c}</th>" for c in cols) + "<th>front</th>"
    rows = []
    for _, row in summary.iterrows():
        cells = []
        for c in cols:
            v: Any = row[c]
            if c == "sae_id":
                cells.append(f"<td><a href='features/{html.escape(str(v))}.html'>"
                             f"{html.escape(str(v))}</a></td>")
            elif pd.isna(v):  # a sweep key this SAE's architecture does not read
                cells.append("<td></td>")
            else:
                cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else
                             f"<td>{html.escape(str(v))}</td>")
        cells.append("<td>★</td>" if row["sae_id"] in front else "<td></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table id='sweep'><tr>{head}</tr>{''.join(rows)}</table>"
