"""`thresher report RUN`: report/index.html with its PNGs, from stats/*.parquet.

Sections: the sweep table, a Pareto plot of L0 against fraction of variance explained, log10
feature-density and MonoScore histograms per SAE, and feature cards of the best SAE (by FVE)
with its top examples, resolved through the stream's inputs manifest
(inputs/<stream_id>.parquet) by modality:

- text (the manifest has `token_ids`): the token in its context, highlighted, decoded with the
  run's tokenizer;
- images (`label_name`): a thumbnail of the model's square view of the image, read again from
  its origin, with a box on the activating patch (report/cards/*.png);
- EEG (`channels`, `num_patches`): the token's channel over its window, read again from the
  recording, its patch shaded (inline SVG).

Inputs that cannot be read any more (moved files) fall back to example ids, never to an error.
"""

from __future__ import annotations

import html
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from thresher import storage

log = logging.getLogger(__name__)

SWEEP_COLUMNS = ("sae_id", "arch", "d_sae", "k", "l1_coef", "lr", "fve", "nmse", "l0", "l1",
                 "l2_ratio", "dead_fraction", "dense_fraction_10pct", "mono_score_mean",
                 "ce_loss_recovered")
CARDS = 12  # feature cards of the best SAE
CARD_EXAMPLES = 6  # top examples shown per card
CONTEXT = 12  # tokens shown on each side of the activating one
THUMB = 112  # thumbnail side, pixels


def write_report(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from thresher.rundir import open_run

    run_dir = open_run(run_dir)  # a URI: its working copy, brought up to date
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
    cards = _cards(run_dir, str(best["sae_id"]), str(best["stream_id"]), features, examples,
                   out)
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
    index = _write_text_atomic(out / "index.html", page)
    storage.publish_tree(out)  # the images, where the run directory is remote
    return index


_CSS = """
body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#eee}.card{border:1px solid #bbb;border-radius:6px;padding:8px;margin:8px 0}
.ex{margin:3px 0}.act{display:inline-block;min-width:4em;color:#333;font-size:12px}
.ctx{font-family:monospace;font-size:12px;white-space:pre-wrap}
mark{background:#f8b862;font-weight:bold}.meta{color:#555;font-size:12px}
.examples.image,.examples.eeg{display:flex;flex-wrap:wrap;gap:6px}.examples.image .ex{width:120px}
figure{margin:0}figcaption{font-size:11px;color:#555}
svg.eeg{display:block;background:#fafafa;border:1px solid #ddd}
svg.eeg polyline{fill:none;stroke:#246;stroke-width:1}svg.eeg rect.patch{fill:#f8b862}
"""


# After load, the body records how many images rendered and how many failed; a headless
# browser's DOM dump shows it (tests/test_analysis.py, tests/test_analysis_report.py).
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
        finite = values[np.isfinite(values)]
        ax.hist(finite, bins=40)
        left_out = len(values) - len(finite)
        ax.set_title(f"{sid} ({left_out} left out)" if left_out else sid, fontsize=9)
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


def _cards(run_dir: Path, sae_id: str, stream_id: str, features: pd.DataFrame,
           examples: pd.DataFrame | None, out: Path) -> str:
    mine = features[(features.sae_id == sae_id) & ~features.is_dead]
    chosen = mine.sort_values("fire_count", ascending=False).head(CARDS)
    show = _example_renderer(run_dir, stream_id, examples, out)
    cards = []
    for _, feat in chosen.iterrows():
        j = int(feat["feature"])
        label = ""
        if int(feat["top_label"]) >= 0:
            label = (f", top label {html.escape(show.label_name(int(feat['top_label'])))} "
                     f"(purity {feat['label_purity']:.2f})")
        head = (f"<b>feature {j}</b> <span class='meta'>density {feat['firing_rate']:.4f}, "
                f"max {feat['max_act']:.3g}, MonoScore {feat['mono_score']:.3f}, "
                f"max decoder cos {feat['max_decoder_cos']:.3f}{label}</span>")
        items = []
        if examples is not None:
            top = examples[(examples.sae_id == sae_id) & (examples.feature == j)
                           & (examples.kind == "top")].sort_values("rank").head(CARD_EXAMPLES)
            for _, ex in top.iterrows():
                items.append(show(j, int(ex["rank"]), int(ex["example_id"]),
                                  int(ex["position"]), float(ex["activation"])))
        cards.append(f"<div class='card' data-feature='{j}'>{head}"
                     f"<div class='examples {show.kind}'>{''.join(items)}</div></div>")
    return "\n".join(cards)


class _Examples:
    """Renders one top example as HTML: an id line, unless a modality below knows better."""

    kind = "plain"

    def __init__(self, manifest: pd.DataFrame | None) -> None:
        self.manifest = manifest
        self.label_names: dict[int, str] = {}
        if manifest is not None and {"label", "label_name"} <= set(manifest.columns):
            named = manifest.dropna(subset=["label_name"]).drop_duplicates("label")
            self.label_names = dict(zip(named["label"].astype(int), named["label_name"],
                                        strict=True))

    def label_name(self, label: int) -> str:
        return self.label_names.get(label, str(label))

    def row(self, example_id: int) -> dict[str, Any] | None:
        if self.manifest is None or example_id not in self.manifest.index:
            return None
        return dict(self.manifest.loc[example_id])

    def __call__(self, feature: int, rank: int, example_id: int, position: int,
                 activation: float) -> str:
        body = self.render(feature, rank, example_id, position)
        if body is None:
            row = self.row(example_id)
            origin = f" ({html.escape(str(row['origin']))})" if row and "origin" in row else ""
            body = f"example {example_id}, position {position}{origin}"
        return f"<div class='ex'><span class='act'>{activation:.3g}</span> {body}</div>"

    def render(self, feature: int, rank: int, example_id: int, position: int) -> str | None:
        return None


class _TextExamples(_Examples):
    """Token contexts from the manifest's token ids, the activating token highlighted."""

    kind = "text"

    def __init__(self, manifest: pd.DataFrame, tokenizer: Any) -> None:
        super().__init__(manifest)
        self.tokenizer = tokenizer

    def render(self, feature: int, rank: int, example_id: int, position: int) -> str | None:
        row = self.row(example_id)
        if row is None:
            return None
        ids = [int(i) for i in row["token_ids"]]
        if not 0 <= position < len(ids):
            return None
        lo, hi = max(0, position - CONTEXT), min(len(ids), position + CONTEXT + 1)
        before = self.tokenizer.decode(ids[lo:position])
        token = self.tokenizer.decode(ids[position:position + 1])
        after = self.tokenizer.decode(ids[position + 1:hi])
        return (f"<span class='ctx'>{html.escape(before)} <mark>{html.escape(token)}</mark> "
                f"{html.escape(after)}</span>")


class _ImageExamples(_Examples):
    """Thumbnails (PNG files under report/cards/) of the manifest's images; for a patch token,
    a box on its patch of the model's square input."""

    kind = "image"

    def __init__(self, manifest: pd.DataFrame, read: Any, layout: tuple[int, int] | None,
                 crop: bool, out: Path) -> None:
        super().__init__(manifest)
        self.read, self.layout, self.crop = read, layout, crop
        self.folder = out / "cards"
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("f*_r*.png"):  # a previous report's thumbnails
            stale.unlink()

    def render(self, feature: int, rank: int, example_id: int, position: int) -> str | None:
        from PIL import ImageDraw

        row = self.row(example_id)
        if row is None:
            return None
        try:
            image = _square(self.read(str(row["origin"])), self.crop)
        except Exception:  # moved or unreadable since the run: the card shows the id instead
            return None
        caption = html.escape(str(row.get("label_name") or ""))
        if self.layout is not None:
            n_prefix, grid = self.layout
            patch = position - n_prefix
            if 0 <= patch < grid * grid:
                side = image.size[0] / grid
                r, c = divmod(patch, grid)
                ImageDraw.Draw(image).rectangle(
                    [c * side, r * side, (c + 1) * side - 1, (r + 1) * side - 1],
                    outline=(255, 40, 40), width=max(2, THUMB // 48))
                caption += f" patch ({r}, {c})"
            else:
                caption += " CLS" if position < n_prefix else f" token {position}"
        name = f"f{feature}_r{rank}.png"
        tmp = self.folder / f".{name}.{uuid.uuid4().hex}.tmp.png"
        image.save(tmp)
        os.replace(tmp, self.folder / name)
        return (f"<figure><img src='cards/{name}' width='{THUMB}' height='{THUMB}' "
                f"alt='example {example_id}'><figcaption>{caption}</figcaption></figure>")


class _EEGExamples(_Examples):
    """The token's channel over its window (inline SVG), its patch shaded."""

    kind = "eeg"

    def __init__(self, manifest: pd.DataFrame, signals: dict[str, Any], patch: tuple[int, int]
                 ) -> None:
        super().__init__(manifest)
        self.signals, (self.patch_length, self.patch_stride) = signals, patch

    def render(self, feature: int, rank: int, example_id: int, position: int) -> str | None:
        row = self.row(example_id)
        if row is None or str(row["recording"]) not in self.signals:
            return None
        channels = list(row["channels"])
        channel, patch = divmod(position, int(row["num_patches"]))
        start, length = int(row["start"]), int(row["length"])
        if not 0 <= channel < len(channels):
            return None
        trace = np.asarray(self.signals[str(row["recording"])][channel, start:start + length],
                           dtype=np.float64)
        if not len(trace):
            return None
        lo, hi = float(trace.min()), float(trace.max())
        width, height = 360, 64
        xs = np.linspace(0, width, len(trace))
        ys = height - 4 - (trace - lo) / (hi - lo if hi > lo else 1.0) * (height - 8)
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys, strict=True))
        x0 = patch * self.patch_stride / max(len(trace) - 1, 1) * width
        x1 = (patch * self.patch_stride + self.patch_length) / max(len(trace) - 1, 1) * width
        first = start + patch * self.patch_stride
        return (f"<svg class='eeg' width='{width}' height='{height}' "
                f"viewBox='0 0 {width} {height}'><rect class='patch' x='{x0:.1f}' y='0' "
                f"width='{x1 - x0:.1f}' height='{height}'/><polyline points='{points}'/></svg>"
                f"<span class='meta'>{html.escape(str(row['recording']))} "
                f"{html.escape(str(channels[channel]))}, samples {first}..."
                f"{first + self.patch_length - 1} (window from {start})</span>")


def _example_renderer(run_dir: Path, stream_id: str, examples: pd.DataFrame | None,
                      out: Path) -> _Examples:
    """The renderer for the stream's modality, chosen by its inputs manifest; the plain one
    (ids only) where the manifest, the run's config or its inputs cannot be read."""
    from thresher.harvest.inputs import manifest_path as stream_manifest

    manifest_path = stream_manifest(run_dir, stream_id)
    if not manifest_path.is_file():
        return _Examples(None)
    manifest = pq.read_table(manifest_path).to_pandas().set_index("example_id", drop=False)
    try:
        record, cfg = _run_record(run_dir)
        source = cfg.source_named(stream_id)
        if "token_ids" in manifest:
            from thresher.harvest.backbones import load_tokenizer

            return _TextExamples(manifest, load_tokenizer(source.backbone))
        if {"channels", "num_patches"} <= set(manifest.columns):
            return _eeg_examples(manifest, cfg, source)
        if "label_name" in manifest:
            return _image_examples(manifest, cfg, source, record, stream_id, examples, out)
    except Exception as exc:  # the report still renders, with example ids instead
        log.warning("feature cards show example ids only: %s: %s", type(exc).__name__, exc)
    return _Examples(manifest)


def _run_record(run_dir: Path) -> tuple[dict[str, Any], Any]:
    from thresher.analysis.analyze import run_config

    return run_config(run_dir)


def _eeg_examples(manifest: pd.DataFrame, cfg: Any, source: Any) -> _Examples:
    from thresher.config import config_dir
    from thresher.harvest.eeg import patchtst_config, read_recordings

    recordings, _ = read_recordings(source, config_dir(cfg))
    config = patchtst_config(source.backbone)
    return _EEGExamples(manifest, {rec.name: rec.signals for rec in recordings},
                        (int(config.patch_length), int(config.patch_stride)))


def _image_examples(manifest: pd.DataFrame, cfg: Any, source: Any, record: dict[str, Any],
                    stream_id: str, examples: pd.DataFrame | None, out: Path) -> _Examples:
    from PIL import Image

    from thresher.config import config_dir
    from thresher.harvest.vision import _read_image, image_spec

    spec = image_spec(source, config_dir(cfg))
    roots = list(spec.roots)

    def read(origin: str) -> Any:
        if source.inputs.kind == "image_folder":
            path = Path(origin)
            path = path if path.is_file() else config_dir(cfg) / path
            with Image.open(path) as image:
                return image.convert("RGB")
        root, _, key = origin.rpartition("::")  # lmdb_path::key or dataset_path::row
        return _read_image(spec, f"{roots.index(root)}:{key}")

    return _ImageExamples(manifest, read, _token_layout(source, record, stream_id, examples),
                          crop=source.backbone.kind == "open_clip", out=out)


def _token_layout(source: Any, record: dict[str, Any], stream_id: str,
                  examples: pd.DataFrame | None) -> tuple[int, int] | None:
    """(prefix tokens, patch grid side) of a ViT hook's rows, from the rows harvested per image
    (run.json); None for one row per image (`embedding`, tokens `cls`)."""
    if source.hooks == ("embedding",) or source.tokens == "cls":
        return None
    harvest = (record.get("streams", {}).get(stream_id) or {}).get("harvest") \
        or record.get("harvest") or {}
    rows, images = int(harvest.get("rows", 0)), int(harvest.get("examples", 0))
    if images <= 0 or rows % images:
        return None
    tokens = rows // images
    grid = math.isqrt(tokens)
    if source.tokens == "patches":
        # Rows are the patches alone, at positions n_prefix.. : the smallest position seen.
        if grid * grid != tokens or examples is None or not len(examples):
            return None
        return int(examples["position"].min()), grid
    return (tokens - grid * grid, grid) if grid > 0 and tokens - grid * grid <= 8 else None


def _square(image: Any, crop: bool) -> Any:
    """The model's square view: centre crop (open_clip) or squashed (transformers), THUMB px."""
    from PIL import Image

    if crop:
        w, h = image.size
        side = min(w, h)
        image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side,
                            (h - side) // 2 + side))
    return image.resize((THUMB, THUMB), Image.BICUBIC)


def _write_text_atomic(path: Path, text: str) -> Path:
    return storage.save(path, text.encode("utf-8"))
