"""`thresher report RUN`: report/index.html with its PNGs, from stats/*.parquet.

Sections: the sweep table, a Pareto plot of L0 against fraction of variance explained, log10
feature-density and MonoScore histograms per SAE, and feature cards of the best SAE (by FVE) with
their top examples as highlighted token contexts (text runs: inputs.parquet + the run's
tokenizer). Image thumbnails (vision) and channel/time snippets (EEG) are not drawn yet.
"""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

SWEEP_COLUMNS = ("sae_id", "arch", "d_sae", "k", "l1_coef", "lr", "fve", "nmse", "l0", "l1",
                 "l2_ratio", "dead_fraction", "dense_fraction_10pct", "mono_score_mean",
                 "ce_loss_recovered")
CARDS = 12  # feature cards of the best SAE
CONTEXT = 12  # tokens shown on each side of the activating one


def write_report(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    stats = run_dir / "stats"
    if not (stats / "summary.parquet").is_file():
        raise FileNotFoundError(f"{stats}/summary.parquet is missing: run `thresher analyze "
                                f"{run_dir}` first (or pass a finished run directory)")
    summary = pq.read_table(stats / "summary.parquet").to_pandas().sort_values("sae_id")
    features = pq.read_table(stats / "features.parquet").to_pandas()
    examples = (pq.read_table(stats / "examples.parquet").to_pandas()
                if (stats / "examples.parquet").is_file() else None)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    images = {"pareto": _pareto(summary, out / "pareto.png"),
              "density": _histograms(features, summary, "log10_density", out / "density.png",
                                     "log10 feature density (dead features left out)"),
              "mono": _histograms(features, summary, "mono_score", out / "monoscore.png",
                                  "MonoScore (undefined left out)")}
    best = summary.sort_values("fve", ascending=False).iloc[0]
    cards = _cards(run_dir, best["sae_id"], features, examples)
    name = html.escape(str(summary["run_name"].iloc[0]))
    body = [
        f"<h1>thresher report: {name}</h1>",
        f"<p>{len(summary)} SAEs on {html.escape(str(best['model']))} "
        f"{html.escape(str(best['hook']))}; statistics over {int(best['eval_rows'])} held-out "
        "rows with frozen weights.</p>",
        "<h2>Sweep</h2>", _sweep_table(summary),
        "<h2>Sparsity against reconstruction</h2>", _img(images["pareto"], "Pareto plot"),
        "<h2>Feature density</h2>", _img(images["density"], "density histograms"),
        "<h2>MonoScore</h2>", _img(images["mono"], "MonoScore histograms"),
        f"<h2>Features of the best SAE ({html.escape(str(best['sae_id']))}, by FVE)</h2>",
        cards,
    ]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>thresher report</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(body) + _IMAGE_CHECK
            + "</body></html>")
    return _write_text_atomic(out / "index.html", page)


_CSS = """
body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#eee}.card{border:1px solid #bbb;border-radius:6px;padding:8px;margin:8px 0}
.ctx{font-family:monospace;font-size:12px;white-space:pre-wrap;margin:2px 0}
mark{background:#f8b862;font-weight:bold}.meta{color:#555;font-size:12px}
"""


# After load, the body records how many images rendered and how many failed; a headless
# browser's DOM dump shows it (tests/test_report.py).
_IMAGE_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesBroken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
});</script>"""


def _img(path: Path, alt: str) -> str:
    return f"<img src='{html.escape(path.name)}' alt='{html.escape(alt)}' width='900'>"


def _sweep_table(summary: pd.DataFrame) -> str:
    cols = [c for c in SWEEP_COLUMNS if c in summary]
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for _, row in summary.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else
                         f"<td>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _pareto(summary: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch, group in summary.groupby("arch"):
        ax.scatter(group["l0"], group["fve"], label=arch, s=40)
        for _, row in group.iterrows():
            ax.annotate(row["sae_id"], (row["l0"], row["fve"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ordered = summary.sort_values("l0")
    front = ordered[ordered["fve"] >= ordered["fve"].cummax()]
    ax.plot(front["l0"], front["fve"], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="L0 (active latents per row)", ylabel="fraction of variance explained")
    ax.legend()
    return _save(fig, path)


def _histograms(features: pd.DataFrame, summary: pd.DataFrame, column: str, path: Path,
                title: str) -> Path:
    import matplotlib.pyplot as plt

    ids = list(summary["sae_id"])
    cols = min(3, len(ids))
    rows = -(-len(ids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, sid in zip(axes.flat, ids, strict=False):
        values = features.loc[features.sae_id == sid, column].to_numpy()
        values = values[np.isfinite(values)]
        ax.hist(values, bins=40)
        ax.set_title(sid, fontsize=9)
    for ax in list(axes.flat)[len(ids):]:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _cards(run_dir: Path, sae_id: str, features: pd.DataFrame,
           examples: pd.DataFrame | None) -> str:
    mine = features[(features.sae_id == sae_id) & ~features.is_dead]
    chosen = mine.sort_values("fire_count", ascending=False).head(CARDS)
    decode = _text_decoder(run_dir)
    out = []
    for _, feat in chosen.iterrows():
        j = int(feat["feature"])
        head = (f"<b>feature {j}</b> <span class='meta'>density {feat['firing_rate']:.4f}, "
                f"max {feat['max_act']:.3g}, MonoScore {feat['mono_score']:.3f}, "
                f"max decoder cos {feat['max_decoder_cos']:.3f}</span>")
        lines = []
        if examples is not None:
            top = examples[(examples.sae_id == sae_id) & (examples.feature == j)
                           & (examples.kind == "top")].sort_values("rank").head(6)
            for _, ex in top.iterrows():
                ctx = decode(int(ex["example_id"]), int(ex["position"])) if decode else None
                text = ctx or f"example {int(ex['example_id'])}, position {int(ex['position'])}"
                lines.append(f"<div class='ctx'>{ex['activation']:.3g}: {text}</div>")
        out.append(f"<div class='card'>{head}{''.join(lines)}</div>")
    return "\n".join(out)


def _text_decoder(run_dir: Path) -> Any:
    """(example_id, position) -> HTML with the token highlighted; None without a manifest."""
    manifest = run_dir / "inputs.parquet"
    if not manifest.is_file():
        return None
    from thresher.analysis.analyze import run_config
    from thresher.harvest.backbones import load_tokenizer

    try:
        tokenizer = load_tokenizer(run_config(run_dir)[1].source.backbone)
    except Exception:  # the report still renders, with example ids instead of text
        return None
    table = pq.read_table(manifest, columns=["example_id", "token_ids"]).to_pydict()
    by_id = dict(zip(table["example_id"], table["token_ids"], strict=True))

    def decode(example_id: int, position: int) -> str | None:
        ids = by_id.get(example_id)
        if ids is None or not 0 <= position < len(ids):
            return None
        lo, hi = max(0, position - CONTEXT), min(len(ids), position + CONTEXT + 1)
        before = tokenizer.decode(ids[lo:position])
        token = tokenizer.decode(ids[position:position + 1])
        after = tokenizer.decode(ids[position + 1:hi])
        return (f"{html.escape(before)} <mark>{html.escape(token)}</mark> "
                f"{html.escape(after)}")

    return decode


def _write_text_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
