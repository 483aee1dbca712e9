"""Final statistics: frozen SAE weights applied to the stream's held-out rows.

Two callers share `evaluate_saes`: a trainer at the end of a run (its bank's `encode_decode`)
and `thresher analyze` (the exported SAEs, `FrozenSAE`). Both hand back the same
`TrainerResult`, which `write_run_stats` turns into the Parquet files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.analysis.feature_columns import SAEWeights
from thresher.analysis.feature_statistics import FeatureStatistics
from thresher.analysis.ground_truth import GT_METRIC_NAMES
from thresher.analysis.probing import PROBE_METRIC_NAMES
from thresher.analysis.stats import Rows, StatsOptions
from thresher.config import SWEEP_KEY, Config, SAEConfig, SourceConfig
from thresher.stream.block import ActivationBlock
from thresher.train.loop import LoopSummary
from thresher.train.trainer import Trainer

EncodeDecode = Callable[[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]
# Summary columns that only `thresher analyze` fills in (they need the backbone): NaN otherwise.
LM_METRIC_NAMES = ("ce_loss_clean", "ce_loss_sae", "ce_loss_zero", "ce_loss_recovered",
                   "kl_div", "kl_div_zero", "kl_recovered", "ce_loss_zero_content",
                   "ce_loss_recovered_content", "kl_div_zero_content", "kl_recovered_content")
# Summary columns only some sources have (see source_metrics): NaN elsewhere.
EXTRA_METRIC_NAMES = (*LM_METRIC_NAMES, *GT_METRIC_NAMES, *PROBE_METRIC_NAMES)


@torch.no_grad()
def evaluate_saes(encode_decode: EncodeDecode, sae_ids: Sequence[str], d_sae: Sequence[int],
                  holdout: ActivationBlock, batch_rows: int = 4096,
                  options: StatsOptions | None = None) -> dict[str, FeatureStatistics]:
    """Accumulate the statistics of each SAE (in `encode_decode`'s order) over the held-out
    rows."""
    stats = {sid: FeatureStatistics(d_in=holdout.d, d_sae=n, options=options)
             for sid, n in zip(sae_ids, d_sae, strict=True)}
    x_all = holdout.float32()
    for start in range(0, len(x_all), batch_rows):
        end = start + batch_rows
        x = torch.from_numpy(np.array(x_all[start:end]))
        label = None if holdout.label is None else holdout.label[start:end]
        rows = Rows.of(x, holdout.example_id[start:end], holdout.position[start:end], label)
        for sae_id, (f, x_hat) in zip(sae_ids, encode_decode(x), strict=True):
            stats[sae_id].update(rows, f, x_hat)
    return stats


@torch.no_grad()
def source_metrics(source: SourceConfig, holdout: ActivationBlock, encode_decode: EncodeDecode,
                   decoders: dict[str, np.ndarray],
                   batch_rows: int = 4096) -> dict[str, dict[str, float]]:
    """Per SAE (in `encode_decode`'s order, keyed like `decoders`): ground-truth metrics on a
    synthetic source, sparse probing where the rows carry labels; {} where neither applies."""
    from thresher.analysis.ground_truth import GroundTruthAccumulator
    from thresher.analysis.probing import PooledExamples
    from thresher.modalities.registry import modality_of

    sae_ids = list(decoders)
    known = modality_of(source).ground_truth
    gt = GroundTruthAccumulator(known(source), decoders) if known is not None else None
    labelled = holdout.label is not None and bool((holdout.label >= 0).any())
    probe = PooledExamples() if labelled else None
    if gt is None and probe is None:
        return {}
    x_all = holdout.float32()
    for start in range(0, len(x_all), batch_rows):
        end = start + batch_rows
        x = torch.from_numpy(np.array(x_all[start:end]))
        latents = {sid: f for sid, (f, _) in zip(sae_ids, encode_decode(x), strict=True)}
        if gt is not None:
            gt.update(holdout.example_id[start:end], latents)
        if probe is not None and holdout.label is not None:
            probe.update(holdout.example_id[start:end], holdout.label[start:end],
                         {"__raw": x, **latents})
    out: dict[str, dict[str, float]] = {sid: {} for sid in sae_ids}
    for part in (gt.metrics() if gt is not None else {},
                 probe.metrics(sae_ids) if probe is not None else {}):
        for sid, metrics in part.items():
            out[sid].update(metrics)
    return out


def evaluate_trainer(trainer: Trainer, holdout: ActivationBlock,
                     batch_rows: int = 4096) -> dict[str, FeatureStatistics]:
    """Accumulate the statistics of every SAE of the trainer over the held-out rows."""
    bank = trainer.bank
    return evaluate_saes(lambda x: bank.encode_decode(x.to(bank.device)), bank.sae_ids,
                         [sae.d_sae for sae in trainer.saes], holdout, batch_rows)


@dataclass(frozen=True)
class CopiesPerRow:
    """Copies of a row a trainer made, by stage, per row it read: the gather into the group's
    order, joining a batch that spans two groups, making the tensor (a copy out of read-only
    memory, widening, the pinned staging and the transfer to a GPU). The harvest side's copies
    are the stream's (`HarvestCounters.copies_per_row`)."""

    gather: float
    batch: float
    tensor: float


@dataclass(frozen=True)
class TrainerPlacement:
    """Where a trainer ran: Ray's node id and the GPUs Ray gave it (inline: empty)."""

    node_id: str = ""
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainerCounters:
    """A trainer's run: its loop, the time it spent gathering groups (in any thread), its
    copies of a row, and where it ran."""

    loop: LoopSummary
    gather_seconds: float
    copies_per_row: CopiesPerRow
    placement: TrainerPlacement = field(default_factory=TrainerPlacement)


@dataclass
class TrainerResult:
    """What a trainer hands back to the driver: rows for the Parquet files and counters (none
    where the rows come from an analysis of finished SAEs)."""

    trainer_id: str
    summary_rows: list[dict[str, Any]]
    feature_columns: list[dict[str, np.ndarray]]
    counters: TrainerCounters | None = None
    seconds: float = 0.0
    example_columns: list[dict[str, np.ndarray]] = field(default_factory=list)
    label_columns: list[dict[str, np.ndarray]] = field(default_factory=list)
    curve_rows: list[dict[str, Any]] = field(default_factory=list)  # TrainingCurves.rows


def sae_tables(sae_id: str, stats: FeatureStatistics, weights: SAEWeights
               ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray],
                          dict[str, np.ndarray]]:
    """(summary metrics, feature columns, example columns, label columns) of one SAE."""
    columns = stats.features(weights)
    columns["sae_id"] = np.array([sae_id] * stats.d_sae, dtype=object)
    metrics = {**stats.summary(columns).__dict__,
               "mean_max_decoder_cos": float(np.mean(columns["max_decoder_cos"])),
               **{name: float("nan") for name in EXTRA_METRIC_NAMES}}
    examples = stats.examples()
    examples["sae_id"] = np.array([sae_id] * len(examples["feature"]), dtype=object)
    labels = stats.labels()
    labels["sae_id"] = np.array([sae_id] * len(labels["feature"]), dtype=object)
    return metrics, columns, examples, labels


def trainer_result(cfg: Config, stream_id: str, trainer: Trainer, holdout: ActivationBlock,
                   counters: TrainerCounters, seconds: float,
                   curve_rows: list[dict[str, Any]] | None = None) -> TrainerResult:
    stats = evaluate_trainer(trainer, holdout)
    norms = trainer.bank.decoder_norms()
    if curve_rows is None:
        curve_rows = trainer.finish_curves()
    result = TrainerResult(trainer.trainer_id, [], [], counters, seconds,
                           curve_rows=list(curve_rows))
    bank = trainer.bank
    decoders = {sid: bank.sae_params(sid)["W_dec"].detach().cpu().numpy() for sid in bank.sae_ids}
    extra = source_metrics(cfg.source_named(stream_id), holdout,
                           lambda x: bank.encode_decode(x.to(bank.device)), decoders)
    for sae in trainer.saes:
        params = bank.sae_params(sae.sae_id)
        weights = SAEWeights(params["W_enc"], params["W_dec"], norms[sae.sae_id])
        metrics, columns, examples, labels = sae_tables(sae.sae_id, stats[sae.sae_id], weights)
        metrics.update(extra.get(sae.sae_id, {}))
        result.summary_rows.append({
            **identity_columns(cfg, stream_id, trainer.trainer_id, sae, holdout.d),
            "input_scale": float(trainer.stats.scale), "steps": trainer.step,
            "rows_trained": trainer.rows_seen, "train_seconds": seconds, **metrics,
        })
        result.feature_columns.append(columns)
        result.example_columns.append(examples)
        if holdout.label is not None:
            result.label_columns.append(labels)
    return result


def summary_sweep_values(sae: SAEConfig) -> dict[str, Any]:
    """Every sweep key's column: the SAE's value, None where its architecture does not read
    the key."""
    own = sae.sweep_values()
    return {name: own.get(name) for name in SWEEP_KEY}


def identity_columns(cfg: Config, stream_id: str, trainer_id: str, sae: SAEConfig,
                     d_in: int) -> dict[str, Any]:
    backbone = cfg.source_named(stream_id).backbone
    return {"run_name": cfg.run.name, "stream_id": stream_id, "trainer_id": trainer_id,
            "sae_id": sae.sae_id, **summary_sweep_values(sae), "d_in": d_in,
            "backbone": backbone.kind, "model": backbone.model_label, "hook": sae.hook}


def write_run_stats(run_dir: str | Path, results: list[TrainerResult],
                    curves: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """stats/{summary,features,examples}.parquet, labels.parquet where rows carry labels and
    curves.parquet where there are training curves (`curves`, else the results' own)."""
    from thresher.analysis.parquet import (
        CURVES_SCHEMA,
        EXAMPLES_SCHEMA,
        FEATURES_SCHEMA,
        LABELS_SCHEMA,
        SUMMARY_SCHEMA,
        table_from_columns,
        table_from_rows,
    )
    from thresher.uri_io import write_table_atomic

    stats_dir = Path(run_dir) / "stats"
    rows = [row for r in results for row in r.summary_rows]
    summary = table_from_rows(sorted(rows, key=lambda r: r["sae_id"]), SUMMARY_SCHEMA)
    written = {"summary": write_table_atomic(stats_dir / "summary.parquet", summary)}
    for name, schema, attr in (("features", FEATURES_SCHEMA, "feature_columns"),
                               ("examples", EXAMPLES_SCHEMA, "example_columns"),
                               ("labels", LABELS_SCHEMA, "label_columns")):
        columns = [c for r in results for c in getattr(r, attr)]
        if not columns:
            continue
        columns.sort(key=lambda c: str(c["sae_id"][0]) if len(c["sae_id"]) else "")
        table = table_from_columns(
            {n: np.concatenate([c[n] for c in columns]) for n in schema.names}, schema)
        written[name] = write_table_atomic(stats_dir / f"{name}.parquet", table)
    if curves is None:
        curves = [row for r in results for row in r.curve_rows]
    curves = sorted(curves, key=lambda row: (row["sae_id"], row["step"]))
    if curves:
        written["curves"] = write_table_atomic(stats_dir / "curves.parquet",
                                               table_from_rows(curves, CURVES_SCHEMA))
    return written
