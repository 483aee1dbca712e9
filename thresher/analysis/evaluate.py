"""Final statistics: frozen SAE weights applied to the stream's held-out rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.analysis.stats import SAEStats
from thresher.block import ActivationBlock
from thresher.config import Config, SAEConfig
from thresher.train.trainer import Trainer


@torch.no_grad()
def evaluate_trainer(trainer: Trainer, holdout: ActivationBlock,
                     batch_rows: int = 4096) -> dict[str, SAEStats]:
    """Accumulate SAEStats for every SAE of the trainer over the held-out rows."""
    bank = trainer.bank
    stats = {sae.sae_id: SAEStats(d_in=holdout.d, d_sae=sae.d_sae) for sae in trainer.saes}
    x_all = holdout.float32()
    for start in range(0, len(x_all), batch_rows):
        x = torch.from_numpy(np.array(x_all[start:start + batch_rows]))
        outputs = bank.encode_decode(x.to(bank.device))
        for sae_id, (f, x_hat) in zip(bank.sae_ids, outputs, strict=True):
            stats[sae_id].update(x, f, x_hat)
    return stats


@dataclass
class TrainerResult:
    """What a trainer hands back to the driver: rows for the Parquet files and counters."""

    trainer_id: str
    summary_rows: list[dict[str, Any]]
    feature_columns: list[dict[str, np.ndarray]]
    loop: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def trainer_result(cfg: Config, stream_id: str, trainer: Trainer, holdout: ActivationBlock,
                   loop: dict[str, Any], seconds: float) -> TrainerResult:
    stats = evaluate_trainer(trainer, holdout)
    norms = trainer.bank.decoder_norms()
    backbone = cfg.source.backbone
    summary_rows, feature_columns = [], []
    for sae in trainer.saes:
        metrics = stats[sae.sae_id].summary()
        summary_rows.append({
            "run_name": cfg.run.name, "stream_id": stream_id,
            "trainer_id": trainer.trainer_id, **_hyper(sae),
            "d_in": holdout.d, "backbone": backbone.kind,
            "model": backbone.model or "<random weights>", "hook": cfg.source.hook,
            "input_scale": float(trainer.stats.scale), "steps": trainer.step,
            "rows_trained": trainer.rows_seen, "train_seconds": seconds,
            **metrics.__dict__,
        })
        columns = stats[sae.sae_id].features()
        columns["decoder_norm"] = norms[sae.sae_id].astype(np.float64)
        columns["sae_id"] = np.array([sae.sae_id] * sae.d_sae, dtype=object)
        feature_columns.append(columns)
    return TrainerResult(trainer.trainer_id, summary_rows, feature_columns, loop, seconds)


def _hyper(sae: SAEConfig) -> dict[str, Any]:
    return {"sae_id": sae.sae_id, "arch": sae.arch, "d_sae": sae.d_sae, "k": sae.k,
            "l1_coef": sae.l1, "lr": sae.lr, "seed": sae.seed}


def write_run_stats(run_dir: str | Path, results: list[TrainerResult]) -> dict[str, Path]:
    """stats/summary.parquet and stats/features.parquet from every trainer's result."""
    from thresher.analysis.parquet import (
        FEATURES_SCHEMA,
        SUMMARY_SCHEMA,
        table_from_columns,
        table_from_rows,
        write_table_atomic,
    )

    stats_dir = Path(run_dir) / "stats"
    rows = [row for r in results for row in r.summary_rows]
    summary = table_from_rows(sorted(rows, key=lambda r: r["sae_id"]), SUMMARY_SCHEMA)
    columns = [c for r in results for c in r.feature_columns]
    columns.sort(key=lambda c: c["sae_id"][0] if len(c["sae_id"]) else "")
    features = table_from_columns(
        {name: np.concatenate([c[name] for c in columns]) for name in FEATURES_SCHEMA.names},
        FEATURES_SCHEMA)
    return {"summary": write_table_atomic(summary, stats_dir / "summary.parquet"),
            "features": write_table_atomic(features, stats_dir / "features.parquet")}
