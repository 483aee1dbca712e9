"""Training curves (TrainingCurves -> stats/curves.parquet) against the bank's own metrics and a
brute-force recomputation, and the wandb logger: offline runs hold the curves and final metrics;
a missing, logged-out or failing wandb never takes a run down."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.wandb_files import history_and_summary
from thresher.analysis.curves import STEP_METRICS, TrainingCurves
from thresher.analysis.evaluate import TrainerResult, write_run_stats
from thresher.analysis.parquet import CURVES_SCHEMA
from thresher.analysis.wandb_log import WandbLogger
from thresher.config import SAEConfig, TrainConfig
from thresher.stream.stats import estimate_stream_stats
from thresher.train.bank import SAEBank

D_IN = 10


def _bank() -> tuple[SAEBank, list[torch.Tensor]]:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(20, D_IN))
    x = ((rng.exponential(size=(640, 20)) * (rng.random((640, 20)) < 0.15)) @ basis
         ).astype(np.float32)
    saes = [SAEConfig(sae_id="a-topk", arch="topk", d_sae=24, arch_keys={"k": 3}, lr=3e-3,
                      seed=0),
            SAEConfig(sae_id="b-relu", arch="relu", d_sae=32, arch_keys={"l1_coef": 0.05},
                      lr=3e-3, seed=1)]
    bank = SAEBank(saes, estimate_stream_stats(x[:256]), TrainConfig(warmup_steps=1), 20)
    return bank, [torch.from_numpy(x[i * 128:(i + 1) * 128]) for i in range(5)]


def test_curve_points_equal_the_bank_metrics_and_brute_force(tmp_path: Path) -> None:
    bank, batches = _bank()
    curves = TrainingCurves("t0", bank.sae_ids, D_IN, [24, 32], every=2)
    metrics, observed, points = [], [], []
    for i, x in enumerate(batches):
        metrics.append(bank.step(x))
        if i != 2:  # step 3 is not observed: its window's statistics cover step 4 alone
            latents = bank.encode_decode(x)
            curves.observe(x, latents)
            observed.append((i, x, latents))
        points += curves.record_step(metrics[-1], len(x))
    points += curves.finish()
    assert [(p["sae_id"], p["step"]) for p in points] == [
        ("a-topk", 2), ("b-relu", 2), ("a-topk", 4), ("b-relu", 4), ("a-topk", 5),
        ("b-relu", 5)]
    windows = {2: [0, 1], 4: [2, 3], 5: [4]}
    for point in points:
        j = bank.sae_ids.index(point["sae_id"])
        steps = windows[point["step"]]
        assert point["window_steps"] == len(steps)
        for name, column in STEP_METRICS.items():
            expected = np.mean([metrics[s][name][j] for s in steps])
            np.testing.assert_allclose(point[column], expected, rtol=1e-12, err_msg=column)
        seen = [(x, lat[j]) for i, x, lat in observed if i in steps]
        x = torch.cat([x for x, _ in seen]).double().numpy()
        f = torch.cat([lat[0] for _, lat in seen]).double().numpy()
        x_hat = torch.cat([lat[1] for _, lat in seen]).double().numpy()
        assert point["window_rows"] == len(x)
        total = ((x - x.mean(0)) ** 2).sum()
        assert point["fve"] == pytest.approx(1 - ((x - x_hat) ** 2).sum() / total, rel=1e-10)
        assert point["l0"] == pytest.approx((f > 0).sum(1).mean(), rel=1e-12)
        assert point["window_dead_fraction"] == pytest.approx(((f > 0).sum(0) == 0).mean())
    assert points[-1]["rows_seen"] == 5 * 128

    result = TrainerResult("t0", [], [], curve_rows=curves.rows)
    written = write_run_stats(tmp_path, [result])
    table = pq.read_table(written["curves"])
    assert table.schema.equals(CURVES_SCHEMA)
    assert table.num_rows == 6 and table.column("step").to_pylist() == [2, 4, 5] * 2


# -- wandb -------------------------------------------------------------------------------------


def test_offline_wandb_holds_curves_and_final_metrics(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    configs = {"a-topk": {"arch": "topk", "k": 3}, "b-relu": {"arch": "relu", "l1_coef": 0.05}}
    logger = WandbLogger(configs, mode="offline", project="thresher-test", group="smoke",
                         directory=tmp_path)
    assert logger.active
    logger.log_points([{"sae_id": sid, "step": step, "fve": 0.1 * step + i, "l0": float("nan")}
                       for step in (2, 4) for i, sid in enumerate(configs)])
    logger.log_final([{"sae_id": "a-topk", "fve": 0.75, "dead_fraction": 0.125}])
    logger.finish()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    by_name = {name: (history, summary)
               for name, history, summary in map(history_and_summary, runs)}
    history, summary = by_name["smoke/a-topk"]
    assert [(h["_step"], h["fve"]) for h in history] == [(2, pytest.approx(0.2)),
                                                         (4, pytest.approx(0.4))]
    assert all("l0" not in h for h in history)  # NaN is left out
    assert summary["final/fve"] == 0.75 and summary["final/dead_fraction"] == 0.125
    assert summary["fve"] == pytest.approx(0.4)  # the last curve point
    history, _ = by_name["smoke/b-relu"]
    assert [h["fve"] for h in history] == [pytest.approx(1.2), pytest.approx(1.4)]


def test_wandb_failing_half_way_only_warns(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("wandb")
    logger = WandbLogger({"a": {}}, mode="offline", group="g", directory=tmp_path)
    logger.runs["a"].finish()  # the run goes away under the logger: wandb refuses to log
    with caplog.at_level(logging.WARNING):
        logger.log_points([{"sae_id": "a", "step": 1, "fve": 0.5}])
        logger.log_points([{"sae_id": "a", "step": 2, "fve": 0.5}])
        logger.log_final([{"sae_id": "a", "fve": 0.5}])
        logger.finish()
    warnings = [r for r in caplog.records if "wandb: could not" in r.getMessage()]
    assert len(warnings) == 1 and not logger.active


def test_missing_wandb_only_warns(monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with caplog.at_level(logging.WARNING):
        logger = WandbLogger({"a": {}}, mode="online")
    assert not logger.active and "not installed" in caplog.text
    logger.log_points([{"sae_id": "a", "step": 1, "fve": 0.5}])
    logger.log_final([{"sae_id": "a", "fve": 0.5}])
    logger.finish()
    assert WandbLogger({"a": {}}).mode == "disabled"  # off by default: wandb never imported
    with pytest.raises(ValueError, match="offline"):
        WandbLogger({"a": {}}, mode="on")


def test_logged_out_online_wandb_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    with caplog.at_level(logging.WARNING):
        logger = WandbLogger({"a": {}}, mode="online", group="g", directory=tmp_path,
                             init_timeout=20)
    assert not logger.active and "wandb: could not start" in caplog.text
    logger.log_points([{"sae_id": "a", "step": 1, "fve": 0.5}])
    logger.finish()


# -- a whole run -------------------------------------------------------------------------------


def test_a_run_writes_curves_and_logs_them_to_offline_wandb(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    import thresher
    from tests.stored_data import stored_config, write_shards

    shards = write_shards(tmp_path / "shards", d=32, shards=16)
    cfg = stored_config(tmp_path / "runs", shards, train={"rows": 20 * 256, "curve_every": 8,
                                                          "curve_batches": 2},
                        run={"name": "curvy", "out": str(tmp_path / "runs"),
                             "wandb": {"mode": "offline", "project": "thresher-test"}})
    run_dir = thresher.run(cfg, inline=True, progress=False)
    curves = pq.read_table(run_dir / "stats" / "curves.parquet").to_pylist()
    summary = {r["sae_id"]: r for r in pq.read_table(run_dir / "stats" / "summary.parquet")
               .to_pylist()}
    assert sorted({c["sae_id"] for c in curves}) == sorted(summary)
    for sae_id in summary:
        points = [c for c in curves if c["sae_id"] == sae_id]
        # a point every 8 steps and one for the partial last window; 2 batches observed each
        assert [(p["step"], p["window_steps"], p["window_rows"]) for p in points] == [
            (8, 8, 512), (16, 8, 512), (20, 4, 512)]
        k = summary[sae_id]["k"]
        assert all(p["l0"] == p["train_l0"] == k for p in points)  # TopK: exactly k active
        assert points[0]["fve"] < points[-1]["fve"] < 1.0  # it learns
    runs = sorted((run_dir / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == len(summary)
    for name, history, final in map(history_and_summary, runs):
        sae_id = name.removeprefix("curvy/")
        assert [h["_step"] for h in history] == [8, 16, 20]
        assert final["final/fve"] == pytest.approx(summary[sae_id]["fve"])
