"""The report's feature browser, clicked through in headless Chromium for a text, an image and an
EEG run, each written by `thresher report` started from another folder than the run's.

Each run comes from a config file whose input paths are relative to it; the report must read the
inputs as the run did (run.json records the config file). A click on the index's Pareto front
opens an SAE's browser, a header click sorts the feature table, a row opens a feature, and its
examples are checked against stats/examples.parquet and the stream's inputs manifest. The table's
columns, cells and filters are the registered statistics' declarations and features.parquet's
values, and a statistic registered only here reaches the page with no edit to the browser.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.chromium import Browser
from tests.image_data import example_image_folder
from tests.stats_data import accumulate, synthetic
from tests.tiny_models import TINY_CLIP, TINY_PATCHTST
from thresher.analysis.feature_columns import (
    FEATURE_STATISTICS,
    Column,
    FeatureStatistic,
    Shared,
    feature_columns,
    feature_statistic,
)
from thresher.analysis.report.browser import (
    HIST_BINS,
    activation_histogram,
    sae_data,
    write_browser,
    write_stream_data,
)
from thresher.analysis.report.plots import pareto_front
from thresher.analysis.stats import StatsOptions
from thresher.cli import main
from thresher.modalities.image.report import THUMB
from thresher.modalities.text.spec import HFTextConfig

RESOURCES = {"harvesters": 1, "trainers": 1, "cpus_per_harvester": 1, "cpus_per_trainer": 0,
             "harvester_threads": 1, "trainer_threads": 1}


def _config_file(project: Path, name: str, source: dict[str, Any], holdout: int) -> Path:
    """A config file in `project` whose run lands in project/runs/<name>."""
    cfg = {"run": {"name": name, "out": "runs", "seed": 0}, "source": source,
           "stream": {"chunk_rows": 128, "capacity_chunks": 8, "mix_chunks": 2,
                      "holdout_rows": holdout, "norm_rows": 128},
           "train": {"batch_size": 64, "rows": 512, "checkpoint_every": 4, "warmup_steps": 1,
                     "d_sae": 64, "k": 4, "curve_every": 2},
           "sweep": [{"arch": "topk", "k": [4, 8]}, {"arch": "relu", "l1_coef": 3.0}],
           "resources": RESOURCES}
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_and_report(tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str] | None = None) -> Path:
    """`thresher run --inline CONFIG` from the config's folder, then `thresher report` from
    another one (the run directory given as an absolute path, the inputs left relative).
    With `capsys`, the run writes its own report too and must name the file."""
    monkeypatch.chdir(config.parent)
    flags = ["--no-report"] if capsys is None else []
    assert main(["run", "--inline", "--no-progress", *flags, str(config)]) == 0
    run_dir = config.parent / "runs" / config.stem
    if capsys is not None:
        printed = capsys.readouterr().out.splitlines()
        index = (run_dir / "report" / "index.html").resolve()
        assert printed[-1].startswith(f"report: {index}") and index.is_file()
        index.unlink()  # written again below, from another folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(run_dir)]) == 0
    return run_dir


def shown_number(value: float) -> float | None:
    """A float as the table shows it: the page's data holds 5 significant digits and the cell
    3 (JavaScript's toPrecision, ties away from zero; integers in full); None for '–'."""
    if not math.isfinite(value):
        return None
    held = float(f"{value:.5g}")
    if held == 0 or held.is_integer():
        return held
    exact = Decimal(held)
    return float(exact.quantize(Decimal(1).scaleb(exact.adjusted() - 2), ROUND_HALF_UP))


def shown_cell(column: Column, value: Any) -> Any:
    """What the table's cell for `value` reads, as a number where it is one."""
    if pa.types.is_boolean(column.type):
        return "yes" if value else ""
    if pa.types.is_floating(column.type):
        return shown_number(float(value))
    return str(value)


def read_cell(column: Column, text: str) -> Any:
    if pa.types.is_floating(column.type):
        return None if text == "–" else float(text)
    return text


def _assert_table_is_the_declared_columns(browser: Browser, mine: pd.DataFrame) -> None:
    """Headers (with the declared meaning as tooltip), filters and every cell of the listed
    rows come from the declarations and features.parquet."""
    table = [c for c in feature_columns() if c.browse == "table"]
    headers = browser.evaluate("Array.from(document.querySelectorAll('#features thead th'))"
                               ".map(th => [th.dataset.key, th.title])")
    assert headers == [[c.name, c.meaning] for c in table]
    assert "activation_entropy" in [key for key, _ in headers]
    filters = browser.evaluate("Array.from(document.querySelectorAll('#filters input'))"
                               ".map(i => i.id)")
    expected = [f"{bound}-{c.name}" for c in feature_columns()
                for bound in {"hide": ["hide"], "min": ["min"], "range": ["min", "max"]}.get(
                    c.filter, [])]
    assert filters == [*expected, "find"]
    listed = browser.evaluate("Array.from(document.querySelectorAll('#features tbody tr'))"
                              ".map(r => [Number(r.dataset.feature), "
                              "Array.from(r.children).map(td => td.textContent)])")
    by_feature = mine.set_index("feature")
    for feature, cells in listed:
        assert int(cells[0]) == feature
        for column, text in zip(table[1:], cells[1:], strict=True):
            if column.display == "label_name":
                continue  # a label's name: the stream's, checked by the renderer tests
            value = by_feature.loc[feature, column.name]
            assert read_cell(column, text) == shown_cell(column, value), (feature, column.name)


def _open_a_feature(browser: Browser, run_dir: Path) -> tuple[str, int]:
    """Index → first SAE on the Pareto front → sort by max activation → first feature.
    Returns (sae_id, feature) shown."""
    summary = pq.read_table(run_dir / "stats/summary.parquet").to_pandas()
    browser.open((run_dir / "report/index.html").as_uri())
    browser.wait_for("document.body.dataset.imagesLoaded !== undefined")
    assert browser.evaluate("document.body.dataset.imagesBroken") == "0"
    front = browser.evaluate("Array.from(document.querySelectorAll('#front a.browse'))"
                             ".map(a => a.textContent)")
    assert front == list(pareto_front(summary).sae_id)
    browser.click("#front a.browse")
    browser.wait_for("document.body.dataset.ready === '1'")
    assert browser.evaluate("location.pathname").endswith(f"/features/{front[0]}.html")
    assert browser.evaluate("document.getElementById('problem').hidden") is True
    features = pq.read_table(run_dir / "stats/features.parquet").to_pandas()
    mine = features[(features.sae_id == front[0]) & ~features.is_dead]
    assert browser.evaluate("document.querySelectorAll('#features tbody tr').length") == len(mine)
    _assert_table_is_the_declared_columns(browser, mine)
    browser.click("th[data-key='max_act']")  # sorted by max activation, largest first
    listed = browser.evaluate("Array.from(document.querySelectorAll('#features tbody tr'))"
                              ".map(r => Number(r.dataset.feature))")
    expected = mine.sort_values(["max_act", "feature"], ascending=[False, True]).feature
    assert listed == [int(f) for f in expected]
    # Filter: density at least the median of the live features' densities (as the page
    # holds them, to 5 significant digits).
    shown_rates = mine.firing_rate.map(lambda v: float(f"{v:.5g}"))
    median = float(np.median(shown_rates))
    browser.evaluate(f"(() => {{ const e = document.getElementById('min-firing_rate'); "
                     f"e.value = '{median!r}'; e.dispatchEvent(new Event('input')); }})()")
    kept = browser.evaluate("document.querySelectorAll('#features tbody tr').length")
    assert kept == int((shown_rates >= median).sum()) < len(mine)
    browser.click("#features tbody tr a")
    feature = int(browser.wait_for("document.body.dataset.shownFeature"))
    assert feature == listed[0] or feature in set(mine.feature)
    # The histogram: HIST_BINS bars whose shares add up to one.
    shares = browser.evaluate("Array.from(document.querySelectorAll('#feature svg.hist rect'))"
                              ".map(r => Number(r.dataset.share))")
    assert len(shares) == HIST_BINS and sum(shares) == pytest.approx(1, abs=1e-3)
    return front[0], feature


def _shown_examples(browser: Browser, kind: str) -> list[tuple[int, int]]:
    return [tuple(e) for e in browser.evaluate(
        f"Array.from(document.querySelectorAll(\"#feature .examples[data-kind='{kind}'] .ex\"))"
        ".map(e => [Number(e.dataset.example), Number(e.dataset.position)])")]


def _recorded_examples(run_dir: Path, sae_id: str, feature: int, kind: str
                       ) -> list[tuple[int, int]]:
    examples = pq.read_table(run_dir / "stats/examples.parquet").to_pandas()
    mine = examples[(examples.sae_id == sae_id) & (examples.feature == feature)
                    & (examples.kind == kind)].sort_values("rank")
    return list(zip(mine.example_id.astype(int), mine.position.astype(int), strict=True))


def _manifest(run_dir: Path) -> pd.DataFrame:
    return pq.read_table(run_dir / "inputs/s0.parquet").to_pandas().set_index("example_id")


@pytest.fixture
def browser() -> Any:
    b = Browser()
    yield b
    b.close()


@pytest.mark.slow
def test_text_browser_highlights_the_firing_token(tmp_path: Path, browser: Browser,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from thresher.modalities.text.kind import load_tokenizer

    project = tmp_path / "project"
    project.mkdir()
    (project / "docs.txt").write_text("\n\n".join(
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog number {i * 7}, and the "
        f"parser reads line {i} of the file before it returns." for i in range(60)))
    config = _config_file(project, "text", {
        "backbone": {"kind": "hf_text", "model": "minilm"}, "hook": "layer.1",
        "inputs": {"kind": "text_files", "paths": ["docs.txt"], "context": 32},
        "batch_size": 16}, holdout=256)
    run_dir = _run_and_report(tmp_path, config, monkeypatch, capsys)
    sae_id, feature = _open_a_feature(browser, run_dir)
    manifest, tokenizer = _manifest(run_dir), load_tokenizer(HFTextConfig(
                                                                            model="minilm"))
    for kind in ("top", "quantile"):
        shown = _shown_examples(browser, kind)
        assert shown == _recorded_examples(run_dir, sae_id, feature, kind) and shown
        marks = browser.evaluate(
            f"Array.from(document.querySelectorAll(\"#feature .examples[data-kind='{kind}'] "
            "mark\")).map(m => m.textContent)")
        assert len(marks) == len(shown)
        for mark, (example, position) in zip(marks, shown, strict=True):
            token = tokenizer.decode([int(manifest.token_ids[example][position])])
            assert mark.strip() == token.strip().removeprefix("##")


@pytest.mark.slow
def test_image_browser_outlines_the_firing_patch(tmp_path: Path, browser: Browser,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    project = tmp_path / "project"
    example_image_folder(project / "data" / "images", crops=3)
    config = _config_file(project, "images", {
        "backbone": {"kind": "open_clip", "model": "ViT-B-32", "config": TINY_CLIP},
        "hook": "layer.1", "inputs": {"kind": "image_folder", "paths": ["data/images"]},
        "batch_size": 8}, holdout=170)  # 10 images x (CLS + 4 x 4 patches)
    run_dir = _run_and_report(tmp_path, config, monkeypatch)
    sae_id, feature = _open_a_feature(browser, run_dir)
    manifest = _manifest(run_dir)
    shown = _shown_examples(browser, "top")
    assert shown == _recorded_examples(run_dir, sae_id, feature, "top") and shown
    browser.wait_for("Array.from(document.querySelectorAll('#feature img'))"
                     ".every(i => i.complete)")
    images = browser.evaluate(
        "Array.from(document.querySelectorAll('#feature img')).map(i => "
        "[i.getAttribute('src'), i.naturalWidth > 0])")
    assert images and all(ok for _, ok in images), images
    cells = browser.evaluate(
        "Array.from(document.querySelectorAll(\"#feature .examples[data-kind='top'] .ex\"))"
        ".map(e => { const p = e.querySelector('.patch'); "
        "return p ? [Number(p.dataset.row), Number(p.dataset.col)] : null; })")
    captions = browser.evaluate(
        "Array.from(document.querySelectorAll(\"#feature .examples[data-kind='top'] "
        "figcaption\")).map(c => c.textContent)")
    for (example, position), cell, caption in zip(shown, cells, captions, strict=True):
        assert caption.startswith(manifest.label_name[example])
        if position == 0:
            assert cell is None and caption.endswith("CLS")
        else:  # 1 prefix token, then a 4 x 4 grid
            assert cell == list(divmod(position - 1, 4))
    # A thumbnail is the manifest's image, as the model saw it (square, THUMB px).
    src, _ = images[0]
    thumb = np.asarray(Image.open(run_dir / "report" / src.removeprefix("../")).convert("RGB"),
                       dtype=np.int64)
    original = Image.open(manifest.origin[shown[0][0]]).convert("RGB").resize(
        (THUMB, THUMB), Image.BICUBIC)
    np.testing.assert_array_equal(thumb, np.asarray(original, dtype=np.int64))


@pytest.mark.slow
def test_eeg_browser_marks_channel_and_patch(tmp_path: Path, browser: Browser,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from thresher.modalities.eeg.recordings import spkit_eeg_sample

    project = tmp_path / "project"
    project.mkdir()
    config = _config_file(project, "eeg", {
        "backbone": {"kind": "patchtst", "model": "", "config": TINY_PATCHTST},
        "hook": "layer.0", "inputs": {"kind": "spkit_eeg_sample", "context": 128, "stride": 64},
        "batch_size": 8}, holdout=224)  # 2 windows x 14 channels x 8 patches
    run_dir = _run_and_report(tmp_path, config, monkeypatch)
    sae_id, feature = _open_a_feature(browser, run_dir)
    manifest, signals = _manifest(run_dir), spkit_eeg_sample().signals
    shown = _shown_examples(browser, "top")
    assert shown == _recorded_examples(run_dir, sae_id, feature, "top") and shown
    drawn = browser.evaluate(
        "Array.from(document.querySelectorAll(\"#feature .examples[data-kind='top'] .ex\"))"
        ".map(e => [e.querySelector('polyline').getAttribute('points'), "
        "Number(e.querySelector('rect.patch').getAttribute('x')), "
        "e.querySelector('.meta').textContent])")
    for (example, position), (points, x0, meta) in zip(shown, drawn, strict=True):
        row = manifest.loc[example]
        channel, patch = divmod(position, 8)  # position = channel * num_patches + patch
        assert f"channel {row.channels[channel]}, patch {patch}," in meta
        ys = np.array([float(p.split(",")[1]) for p in points.split()])
        trace = signals[channel, row.start:row.start + row.length].astype(np.float64)
        assert len(ys) == row.length and np.corrcoef(ys, trace)[0, 1] < -0.999
        assert x0 == pytest.approx(16 * patch / (row.length - 1) * 360, abs=0.1)


@pytest.mark.slow
def test_a_renderer_that_cannot_render_says_why_on_the_page(
        tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images moved after the run: the browser shows ids and a sentence naming the folder."""
    project = tmp_path / "project"
    example_image_folder(project / "data" / "images", crops=2)
    config = _config_file(project, "moved", {
        "backbone": {"kind": "open_clip", "model": "ViT-B-32", "config": TINY_CLIP},
        "hook": "layer.1", "inputs": {"kind": "image_folder", "paths": ["data/images"]},
        "batch_size": 8}, holdout=119)
    monkeypatch.chdir(project)
    assert main(["run", "--inline", "--no-progress", "--no-report", str(config)]) == 0
    (project / "data").rename(project / "gone")
    assert main(["report", str(project / "runs" / "moved")]) == 0
    browser.open((project / "runs/moved/report/features/00-topk-k4.html").as_uri())
    browser.wait_for("document.body.dataset.ready === '1'")
    problem = browser.evaluate("(() => { const p = document.getElementById('problem'); "
                               "return p.hidden ? null : p.textContent; })()")
    assert problem is not None and "data/images" in problem and "examples show ids" in problem


class Sparkle(FeatureStatistic):
    """A statistic registered only by the `sparkle` fixture, every browser setting left at its
    default: the page must list it with no edit to browser.py or browser.js."""

    COLUMNS = (Column("sparkle_index", pa.float64(),
                      "square root of firing_rate; NaN if it never fired"),)

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        rate = shared.moments.firing_rate
        return {"sparkle_index": np.where(rate > 0, np.sqrt(rate), np.nan)}


@pytest.fixture
def sparkle() -> Iterator[None]:
    feature_statistic(Sparkle)
    yield
    FEATURE_STATISTICS.remove(Sparkle)


def _features_with_sparkle() -> tuple[pd.DataFrame, list[float | None]]:
    """One SAE's features.parquet rows as the registered statistics compute them, and the
    sparkle values the page's data must hold (5 significant digits, null if it never fired)."""
    data = synthetic(rows=240)
    stats = accumulate(data, 60, StatsOptions(top_n=0, reservoir=0, monoscore=False))
    features = pd.DataFrame(stats.features())
    features.insert(0, "sae_id", "s0")
    fired = (data["f"] > 0).sum(0)
    expected = [float(f"{math.sqrt(n / len(data['f'])):.5g}") if n else None for n in fired]
    return features, expected


SPARKLE_SAE = pd.Series({"sae_id": "s0", "stream_id": "t", "arch": "topk", "hook": "layer.1",
                         "d_sae": 40, "eval_rows": 240})


def test_a_registered_statistic_reaches_the_browser_data(sparkle: None) -> None:
    features, expected = _features_with_sparkle()
    data = sae_data(SPARKLE_SAE, features, None, str)
    names = [c["name"] for c in data["columns"]]
    assert names == [c.name for c in feature_columns() if c.browse != "none"]
    assert names[0] == "feature" and "sae_id" not in names
    assert data["columns"][-1] == {"name": "sparkle_index", "header": "sparkle index",
                                   "meaning": Sparkle.COLUMNS[0].meaning, "table": True,
                                   "filter": "none"}
    assert [row[-1] for row in data["features"]] == expected
    assert [row[0] for row in data["features"]] == list(range(40))


def test_a_registered_statistic_shows_in_the_page(tmp_path: Path, browser: Browser,
                                                  sparkle: None) -> None:
    """Its header (the declared meaning as tooltip) and cells in the table, a header click sorts
    by it, and the feature view names it."""
    from thresher.analysis.report import STATIC_FILES

    features, expected = _features_with_sparkle()
    out = tmp_path / "report"
    (out / "static").mkdir(parents=True)
    static = importlib.resources.files("thresher.analysis.report") / "static"
    for name in STATIC_FILES:
        (out / "static" / name).write_bytes((static / name).read_bytes())
    write_stream_data(out, "t", {"kind": "text", "examples": {}})
    page = write_browser(out, SPARKLE_SAE, sae_data(SPARKLE_SAE, features, None, str))
    browser.open(page.as_uri())
    browser.wait_for("document.body.dataset.ready === '1'")
    header = browser.evaluate("(() => { const th = document.querySelector("
                              "\"#features th[data-key='sparkle_index']\"); "
                              "return [th.textContent, th.title]; })()")
    assert header == ["sparkle index", Sparkle.COLUMNS[0].meaning]
    browser.click("th[data-key='sparkle_index']")
    rows = browser.evaluate("Array.from(document.querySelectorAll('#features tbody tr'))"
                            ".map(r => [Number(r.dataset.feature), r.lastChild.textContent])")
    live = [(j, v) for j, v in enumerate(expected) if v is not None]  # dead ones hidden
    column = Sparkle.COLUMNS[0]
    assert [(j, shown_number(v)) for j, v in sorted(live, key=lambda jv: (-jv[1], jv[0]))] == \
        [(j, read_cell(column, text)) for j, text in rows]
    browser.click("#features tbody tr a")
    feature = int(browser.wait_for("document.body.dataset.shownFeature"))
    shown = browser.evaluate("document.querySelector(\"#feature span[data-key='sparkle_index']\")"
                             ".textContent")
    assert shown == f"sparkle index {rows[0][1]}" and feature == rows[0][0]


def test_pareto_front_keeps_only_undominated_saes() -> None:
    summary = pd.DataFrame({"sae_id": list("abcde"), "l0": [8.0, 16, 16, 64, 400],
                            "fve": [0.6, 0.7, 0.65, 0.69, 0.9]})
    assert list(pareto_front(summary).sae_id) == ["a", "b", "e"]


def test_activation_histogram_from_quantiles() -> None:
    levels = (np.arange(8) + 0.5) / 8
    values = levels * 4.0  # uniform on [0, 4]: every bin holds the same share
    hist = activation_histogram(values, levels, 4.0)
    assert len(hist) == HIST_BINS and sum(hist) == pytest.approx(1, abs=1e-3)
    np.testing.assert_allclose(hist, 1 / HIST_BINS, atol=1e-3)
