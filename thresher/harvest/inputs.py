"""Inputs of a stream, for any modality: prepared by its modality, decoded in a CPU stage where
it has one, and the inputs manifest written to the run directory.

`prepare_inputs` is the one entry point of both executors; the modality of the source
(thresher/modalities/registry.py) lists, reads and batches its inputs. `decode_batch` runs a
batch's CPU stage in this process (inline); `decode_stage` is the same stage as a Ray Data UDF.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher import uri_io
from thresher.config import SourceConfig
from thresher.modalities.contract import Decoder, InputBatch, Inputs
from thresher.modalities.registry import modality_of


def prepare_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    """The input batches and manifest of any source; the same for the same seed."""
    return modality_of(source).prepare_inputs(source, seed, base_dir)


def decode_batch(inputs: Inputs, batch: InputBatch) -> InputBatch:
    """The CPU stage for one batch (image references -> pixels); other batches pass through."""
    if inputs.decode is None:
        return batch
    return inputs.decode.decode(batch)


def decode_stage_remote_args() -> dict[str, Any]:
    """Ray Data `ray_remote_args_fn` of the decode stage.

    Its presence keeps Ray Data from fusing the decode tasks into the backbone actors (Ray 2.60
    fuses a task map into the next actor map when their remote args match), which would put
    JPEG decoding back on the backbone's critical path.
    """
    return {}


def decode_stage(items: dict[str, np.ndarray], decoder: Decoder) -> dict[str, np.ndarray]:
    """Ray Data UDF of the CPU stage: each item is one input batch, as columns."""
    n = len(next(iter(items.values())))
    decoded = [decoder.decode(decoder.batch_type.from_columns(
        {name: column[i] for name, column in items.items()})).to_columns() for i in range(n)]
    out = {name: np.stack([d[name] for d in decoded]) for name in decoded[0]}
    # Columns the decoding does not use ride along (e.g. the pipeline's batch index).
    read = {field.name for field in dataclasses.fields(decoder.batch_type)}
    out.update({name: column for name, column in items.items()
                if name not in out and name not in read})
    return out


def manifest_path(run_dir: str | Path, stream_id: str) -> Path:
    """A stream's inputs manifest, inputs/<stream_id>.parquet: one per stream, as the streams
    of a run may read different inputs of different modalities."""
    return Path(run_dir) / "inputs" / f"{stream_id}.parquet"


def write_manifest(run_dir: str | Path, stream_id: str,
                   manifest: pa.Table | None) -> Path | None:
    """The stream's manifest, in its modality's schema (a store's: the one it holds)."""
    if manifest is None:
        return None
    return uri_io.write_table_atomic(manifest, manifest_path(run_dir, stream_id))
