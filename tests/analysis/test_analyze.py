"""A small inline run, `thresher analyze` on it, and the Parquet files checked against brute force.

The brute force applies the same frozen (exported) weights to the same held-out rows all at once
and computes every statistic from its definition; MonoScore by the O(N²) pairwise sum.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import thresher
from tests.run_configs import smoke_config
from tests.stats_data import assert_equal_to_brute_force, brute_force
from thresher.analysis.analyze import analyze_run, run_config
from thresher.analysis.frozen import load_run_saes
from thresher.analysis.parquet import (
    EXAMPLES_SCHEMA,
    FEATURES_SCHEMA,
    SUMMARY_SCHEMA,
)
from thresher.analysis.stats import StatsOptions
from thresher.cli import main
from thresher.harvest.collect import collect_holdout


@pytest.fixture(scope="module")
def analyzed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis")
    cfg = smoke_config(out, stream={"holdout_rows": 1024}, train={"rows": 4096, "d_sae": 128})
    run_dir = thresher.run(cfg, inline=True, progress=False)
    analyze_run(run_dir)
    return run_dir


def test_parquet_files_match_schemas_and_readers(analyzed_run: Path) -> None:
    import duckdb
    import pandas as pd
    import polars as pl

    stats = analyzed_run / "stats"
    for name, schema in (("summary", SUMMARY_SCHEMA), ("features", FEATURES_SCHEMA),
                         ("examples", EXAMPLES_SCHEMA)):
        path = stats / f"{name}.parquet"
        assert pq.read_table(path).schema.equals(schema), name
        n = pq.read_metadata(path).num_rows
        assert len(pd.read_parquet(path)) == n and pl.read_parquet(path).height == n
        assert duckdb.sql(f"select count(*) from '{path}'").fetchall()[0][0] == n
    assert not (stats / "labels.parquet").exists()  # text rows carry no labels


def test_every_statistic_equals_brute_force(analyzed_run: Path) -> None:
    """Every column of summary, features and examples for every SAE: the same frozen weights
    on the same held-out rows, all at once, each statistic from its definition (MonoScore by
    the O(N²) pairwise sum over every feature)."""
    _, cfg = run_config(analyzed_run)
    holdout = collect_holdout(cfg)
    x = torch.from_numpy(holdout.float32().astype(np.float32))
    x64 = x.double().numpy()
    summary = {r["sae_id"]: r for r in pq.read_table(analyzed_run / "stats/summary.parquet")
               .to_pylist()}
    features = pq.read_table(analyzed_run / "stats/features.parquet").to_pandas()
    examples = pq.read_table(analyzed_run / "stats/examples.parquet").to_pandas()
    for sae in load_run_saes(analyzed_run):
        sid = sae.sae.sae_id
        f_t, x_hat_t = sae.encode_decode(x)
        f, x_hat = f_t.double().numpy(), x_hat_t.double().numpy()
        ref = brute_force({"x": x64, "f": f, "x_hat": x_hat, "example_id": holdout.example_id,
                           "position": holdout.position, "label": None}, StatsOptions())
        assert (ref["fire_count"] > 0).sum() > 20  # plenty of live features to compare
        row = summary[sid]
        assert row["eval_rows"] == len(f)
        mine = features[features.sae_id == sid].sort_values("feature")
        assert list(mine.feature) == list(range(sae.sae.d_sae))
        assert_equal_to_brute_force({c: mine[c].to_numpy() for c in mine.columns}, row,
                                    {c: examples.loc[examples.sae_id == sid, c].to_numpy()
                                     for c in examples.columns}, ref, rtol=1e-9)
        w = sae.W_dec.double().numpy()
        np.testing.assert_allclose(mine.decoder_norm,
                                   np.linalg.norm(w, axis=1) * sae.input_scale, rtol=1e-9)
        unit = w / np.linalg.norm(w, axis=1, keepdims=True)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        np.testing.assert_allclose(mine.max_decoder_cos, sims.max(1), rtol=1e-9)
        assert row["mean_max_decoder_cos"] == pytest.approx(sims.max(1).mean(), rel=1e-9)


def test_trained_run_and_analyze_agree(analyzed_run: Path, tmp_path: Path) -> None:
    """The run's own stats (the bank, training units) and analyze's (exports, raw units)."""
    run = pq.read_table(analyzed_run / "stats/summary.parquet").to_pandas()
    assert (run.eval_rows > 0).all() and run.fve.between(0, 1).all()
    assert run.mono_score_mean.between(0, 1).all()
    assert run.ce_loss_recovered.isna().all()  # MiniLM is an encoder: no next-token loss


def test_duckdb_answers_densest_features_of_best_sae(analyzed_run: Path) -> None:
    import duckdb

    stats = analyzed_run / "stats"
    query = f"""
        with best as (select sae_id from '{stats}/summary.parquet' order by fve desc limit 1)
        select f.feature, f.firing_rate, list(e.example_id order by e.rank) as top_examples
        from '{stats}/features.parquet' f
        join best using (sae_id)
        left join '{stats}/examples.parquet' e
          on e.sae_id = f.sae_id and e.feature = f.feature and e.kind = 'top'
        group by f.feature, f.firing_rate
        order by f.firing_rate desc, f.feature
        limit 10
    """
    got = duckdb.sql(query).fetchall()
    summary = pq.read_table(stats / "summary.parquet").to_pandas()
    best = summary.sort_values("fve", ascending=False).sae_id.iloc[0]
    features = pq.read_table(stats / "features.parquet").to_pandas()
    expected = (features[features.sae_id == best]
                .sort_values(["firing_rate", "feature"], ascending=[False, True]).head(10))
    assert [g[0] for g in got] == list(expected.feature)
    assert all(len(g[2]) > 0 for g in got)  # every dense feature has top examples


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def assert_renders_without_missing_image(index: Path, shot: Path) -> int:
    """Every <img> of the page names a file, and headless Chromium loads every one of them
    (the page's own onload check, read from the DOM dump) and takes a 1200x2000 screenshot.
    Returns the number of images."""
    page = index.read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert images and all((index.parent / name).is_file() for name in images)
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", index.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None
    assert f'data-images-loaded="{len(images)}"' in body.group(0), body.group(0)
    assert 'data-images-broken="0"' in body.group(0)
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2000", index.as_uri()],
                   capture_output=True, timeout=120, check=True)
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 2000)
    return len(images)


def test_report_renders_with_no_missing_image(analyzed_run: Path, tmp_path: Path) -> None:
    assert main(["report", str(analyzed_run)]) == 0
    index = analyzed_run / "report" / "index.html"
    page = index.read_text()
    for section in ("<h2>Sweep</h2>", "pareto.png", "density.png", "monoscore.png",
                    "curves.png"):
        assert section in page
    assert page.count("<tr>") == 1 + 3  # header + one row per SAE
    # Every SAE links to its feature browser (clicked through in
    # tests/analysis/test_report_browser.py).
    for sae_id in pq.read_table(analyzed_run / "stats/summary.parquet").column("sae_id"):
        assert f"href='features/{sae_id}.html'" in page
        assert (index.parent / "features" / f"{sae_id}.html").is_file()
    assert assert_renders_without_missing_image(index, tmp_path / "report.png") == 4
