"""Parquet files of a run, with their schemas (documented in docs/formats.md).

Files are written atomically: to a temporary name in the same folder, then renamed, so a reader
never sees half a file and a crash never destroys the previous one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SUMMARY_SCHEMA = pa.schema(
    [
        ("run_name", pa.string()),
        ("stream_id", pa.string()),
        ("trainer_id", pa.string()),
        ("sae_id", pa.string()),
        ("arch", pa.string()),
        ("d_in", pa.int32()),
        ("d_sae", pa.int32()),
        ("k", pa.int32()),  # TopK k (also stored for other architectures, unused there)
        ("l1_coef", pa.float64()),  # ReLU L1 coefficient (unused by TopK)
        ("lr", pa.float64()),
        ("seed", pa.int64()),
        ("backbone", pa.string()),
        ("model", pa.string()),
        ("hook", pa.string()),
        ("input_scale", pa.float64()),  # the stream's scale: SAEs train on x * input_scale
        ("steps", pa.int64()),
        ("rows_trained", pa.int64()),
        ("train_seconds", pa.float64()),  # wall time of the trainer that held this SAE
        ("eval_rows", pa.int64()),
        ("mse", pa.float64()),
        ("nmse", pa.float64()),
        ("fve", pa.float64()),
        ("l0", pa.float64()),
        ("l1", pa.float64()),
        ("dead_fraction", pa.float64()),
        ("dense_fraction_1pct", pa.float64()),
        ("dense_fraction_10pct", pa.float64()),
    ]
)

FEATURES_SCHEMA = pa.schema(
    [
        ("sae_id", pa.string()),
        ("feature", pa.int32()),
        ("fire_count", pa.int64()),
        ("firing_rate", pa.float64()),
        ("log10_density", pa.float64()),  # -inf for features that never fired
        ("mean_act", pa.float64()),
        ("mean_act_when_active", pa.float64()),
        ("max_act", pa.float64()),
        ("decoder_norm", pa.float64()),  # in the SAE's training space (inputs x * input_scale)
        ("is_dead", pa.bool_()),
        ("is_dense", pa.bool_()),
    ]
)

INPUTS_SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("origin", pa.string()),
        ("text", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
    ]
)


def write_table_atomic(table: pa.Table, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
