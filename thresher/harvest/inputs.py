"""Inputs of a stream, for any modality: prepared by its modality, decoded in a CPU stage where
it has one, and the inputs manifest written to the run directory.

`prepare_inputs` is the one entry point of both executors; the modality of the source
(thresher/modalities/registry.py) lists, reads and batches its inputs. `decode_batch` runs a
batch's CPU stage in this process (inline); on Ray it runs in CPU tasks of its own
(thresher/distributed/harvest_worker.py). Both executors open a stream's inputs with
`open_inputs` (batches, and the manifest written) and close them with `close_inputs` once the
harvest has ended (the unreadable inputs flagged in the manifest and named for run.json).
Nothing here imports torch: the Ray stream actor, which never touches a row, calls both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from thresher import uri_io
from thresher.config import Config, SourceConfig, StreamPlan, config_dir
from thresher.harvest.report import NAMED, HarvestCounters
from thresher.modalities.contract import InputBatch, Inputs
from thresher.modalities.registry import modality_of


def prepare_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    """The input batches and manifest of any source; the same for the same seed."""
    return modality_of(source).prepare_inputs(source, seed, base_dir)


def decode_batch(inputs: Inputs, batch: InputBatch) -> InputBatch:
    """The CPU stage for one batch (image references -> pixels); other batches pass through."""
    if inputs.decode is None:
        return batch
    return inputs.decode.decode(batch)


def manifest_path(run_dir: str | Path, stream_id: str) -> Path:
    """A stream's inputs manifest, inputs/<stream_id>.parquet: one per stream, as the streams
    of a run may read different inputs of different modalities."""
    return Path(run_dir) / "inputs" / f"{stream_id}.parquet"


def write_manifest(run_dir: str | Path, stream_id: str,
                   manifest: pa.Table | None) -> Path | None:
    """The stream's manifest, in its modality's schema (a store's: the one it holds)."""
    if manifest is None:
        return None
    return uri_io.write_table_atomic(manifest_path(run_dir, stream_id), manifest)


def mark_unreadable(manifest: pa.Table, example_ids: list[int]) -> pa.Table:
    """The manifest with `readable` false for the examples the CPU stage could not read (a
    manifest without that column, one whose modality reads every input it lists, as it is)."""
    if not example_ids or "readable" not in manifest.column_names:
        return manifest
    ids = manifest.column("example_id").to_numpy()
    readable = ~np.isin(ids, np.asarray(example_ids, dtype=np.int64))
    at = manifest.column_names.index("readable")
    return manifest.set_column(at, manifest.schema.field(at), pa.array(readable))


def name_unreadable(counters: HarvestCounters, manifest: pa.Table | None) -> list[str]:
    """The first unreadable inputs by name, for run.json: those listing skipped ("path: why"),
    then the origins of the examples the CPU stage could not read."""
    named = counters.unreadable_listed[:NAMED]
    wanted = sorted(counters.unreadable_examples)[:NAMED - len(named)]
    if wanted and manifest is not None and "origin" in manifest.column_names:
        origins = dict(zip(manifest.column("example_id").to_pylist(),
                           manifest.column("origin").to_pylist(), strict=True))
        return named + [f"{origins.get(e, '?')} (example {e})" for e in wanted]
    return named + [f"example {e}" for e in wanted]


def open_inputs(cfg: Config, stream: StreamPlan, run_dir: str | Path) -> Inputs:
    """The stream's input batches; its inputs manifest written to the run directory."""
    inputs = prepare_inputs(stream.source, cfg.run.seed, config_dir(cfg))
    write_manifest(run_dir, stream.stream_id, inputs.manifest)
    return inputs


def close_inputs(inputs: Inputs, stream: StreamPlan, run_dir: str | Path,
                 counters: HarvestCounters) -> None:
    """Once the harvest has ended: the unreadable inputs named in the counters (run.json) and
    flagged `readable: false` in the manifest."""
    counters.unreadable_listed = list(inputs.unreadable)
    counters.unreadable_named = name_unreadable(counters, inputs.manifest)
    if counters.unreadable_examples and inputs.manifest is not None:
        write_manifest(run_dir, stream.stream_id,
                       mark_unreadable(inputs.manifest, counters.unreadable_examples))
