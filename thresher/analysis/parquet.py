"""Parquet files of a run, with their schemas (documented in docs/formats.md).

Files are written atomically (thresher/uri_io.py, `write_table_atomic`): to a temporary name in
the same folder, then renamed, so a reader never sees half a file and a crash never destroys the
previous one. The inputs manifests' schemas live with their modalities (thresher/modalities/).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from thresher.analysis.feature_columns import feature_columns
from thresher.config import SWEEP_KEY

SUMMARY_SCHEMA = pa.schema(
    [
        ("run_name", pa.string()),
        ("stream_id", pa.string()),
        ("trainer_id", pa.string()),
        ("sae_id", pa.string()),
        # Every sweep key (thresher.config.saes), null where the SAE's architecture does not
        # read it (k of a relu SAE).
        *((name, getattr(pa, key.column_type)()) for name, key in SWEEP_KEY.items()),
        ("d_in", pa.int32()),
        ("backbone", pa.string()),
        ("model", pa.string()),
        ("hook", pa.string()),
        ("input_scale", pa.float64()),  # the stream's scale: SAEs train on x * input_scale
        ("steps", pa.int64()),
        ("rows_trained", pa.int64()),
        ("train_seconds", pa.float64()),  # wall time of the trainer that held this SAE
        ("eval_rows", pa.int64()),
        ("mse_per_element", pa.float64()),  # mean over rows and dims of (x - x_hat)^2
        ("sq_err_per_row", pa.float64()),  # mean over rows of ||x - x_hat||^2 (SAELens's mse)
        ("nmse", pa.float64()),
        ("fve", pa.float64()),
        ("l2_ratio", pa.float64()),  # mean over rows of ||x_hat|| / ||x||
        ("l0", pa.float64()),
        ("l1", pa.float64()),
        ("dead_fraction", pa.float64()),
        ("dense_fraction_1pct", pa.float64()),
        ("dense_fraction_10pct", pa.float64()),
        ("mono_score_mean", pa.float64()),  # over all features, undefined ones counted as 0
        ("mono_score_median", pa.float64()),
        ("mono_score_p90", pa.float64()),
        ("mean_max_decoder_cos", pa.float64()),
        # Language models, filled in by `thresher analyze` (the SAE spliced into the model):
        ("ce_loss_clean", pa.float64()),
        ("ce_loss_sae", pa.float64()),
        ("ce_loss_zero", pa.float64()),
        ("ce_loss_recovered", pa.float64()),
        ("kl_div", pa.float64()),  # mean KL(p_clean || p_sae) per token
        ("kl_div_zero", pa.float64()),
        ("kl_recovered", pa.float64()),
        # The same with only the content positions zeroed (BOS/CLS/SEP kept):
        ("ce_loss_zero_content", pa.float64()),
        ("ce_loss_recovered_content", pa.float64()),
        ("kl_div_zero_content", pa.float64()),
        ("kl_recovered_content", pa.float64()),
        # Synthetic sources: against the true feature dictionary (analysis/ground_truth.py):
        ("gt_mcc", pa.float64()),
        ("gt_uniqueness", pa.float64()),
        ("gt_precision", pa.float64()),
        ("gt_recall", pa.float64()),
        ("gt_f1", pa.float64()),
        ("gt_l0", pa.float64()),  # true features firing per held-out row
        # Labelled rows: k-sparse probing accuracy (analysis/probing.py):
        ("probe_sae_k1_acc", pa.float64()),
        ("probe_sae_k5_acc", pa.float64()),
        ("probe_raw_k1_acc", pa.float64()),
        ("probe_raw_k5_acc", pa.float64()),
        ("probe_raw_acc", pa.float64()),  # every raw dimension
        ("probe_tasks", pa.float64()),  # binary tasks averaged over
    ]
)

# `sae_id`, `feature`, then each registered statistic's columns (analysis/feature_columns.py).
FEATURES_SCHEMA = pa.schema([(column.name, column.type) for column in feature_columns()])

EXAMPLES_SCHEMA = pa.schema(
    [
        ("sae_id", pa.string()),
        ("feature", pa.int32()),
        ("kind", pa.string()),  # "top" (max-activating) or "quantile" (activation quantiles)
        ("rank", pa.int32()),  # 0-based within (sae_id, feature, kind)
        ("quantile", pa.float64()),  # quantile level for "quantile" rows, NaN for "top"
        ("activation", pa.float64()),
        ("example_id", pa.int64()),
        ("position", pa.int32()),
    ]
)

LABELS_SCHEMA = pa.schema(
    [
        ("sae_id", pa.string()),
        ("feature", pa.int32()),
        ("label", pa.int64()),
        ("count", pa.int64()),  # held-out rows with this label where the feature fired
    ]
)

# Training curves: one row per (SAE, curve point); see thresher/analysis/curves.py.
CURVES_SCHEMA = pa.schema(
    [
        ("trainer_id", pa.string()),
        ("sae_id", pa.string()),
        ("step", pa.int64()),  # optimiser steps taken at the end of the window
        ("rows_seen", pa.int64()),  # training rows seen by then (since this process started)
        ("window_steps", pa.int64()),  # steps in the window
        # The bank's per-step metrics, mean over the window's steps (training units):
        ("train_loss", pa.float64()),
        ("train_sq_err_per_row", pa.float64()),  # mean over rows of ||c·x - x_hat||^2
        ("train_l0", pa.float64()),
        ("train_grad_norm", pa.float64()),
        ("train_aux_loss", pa.float64()),
        ("train_mono_score", pa.float64()),  # NaN unless the SAE trains with MonoLoss
        ("train_dead_fraction", pa.float64()),  # silent for train.dead_window rows
        # Over the window's observed batches (raw units; NaN when none was observed):
        ("window_rows", pa.int64()),
        ("fve", pa.float64()),
        ("nmse", pa.float64()),
        ("mse_per_element", pa.float64()),
        ("sq_err_per_row", pa.float64()),
        ("l2_ratio", pa.float64()),
        ("l0", pa.float64()),
        ("l1", pa.float64()),
        ("window_dead_fraction", pa.float64()),  # features that never fired in the window
        ("dense_fraction_1pct", pa.float64()),
        ("dense_fraction_10pct", pa.float64()),
    ]
)


def table_from_rows(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as dicts -> a table of exactly `schema` (a missing or extra column is an error)."""
    names = set(schema.names)
    for row in rows:
        if set(row) != names:
            missing, extra = names - set(row), set(row) - names
            raise ValueError(f"row does not match schema: missing {sorted(missing)}, "
                             f"extra {sorted(extra)}")
    return pa.Table.from_pylist(list(rows), schema=schema)


def table_from_columns(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    if set(columns) != set(schema.names):
        raise ValueError(f"columns {sorted(columns)} do not match schema {schema.names}")
    return pa.Table.from_arrays([pa.array(columns[n], type=schema.field(n).type)
                                 for n in schema.names], schema=schema)
