"""Reading an offline wandb run's files back, for the tests of what thresher logs to wandb."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any


def wandb_records(path: Path) -> list[Any]:
    """Records of an offline run's .wandb file: a 7-byte header, then 32 KiB blocks of
    LevelDB-log records (crc32, length, type; FULL=1 or FIRST/MIDDLE/LAST=2/3/4)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if pos + length > len(data):
            break  # a record still being written
        chunks += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def finished_records(path: Path, timeout: float = 30.0) -> list[Any]:
    """The records of a finished run's file, once its exit record is there: `finish()` can
    return before wandb's service has written the file out (seen on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.2)


def history_and_summary(run_dir: Path) -> tuple[str, list[dict[str, float]], dict[str, float]]:
    """The name, the logged history rows and the summary of the one offline run in run_dir."""
    (path,) = run_dir.glob("run-*.wandb")
    name, history, summary = "", [], {}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            # A run may write its run record again later (an update), not always with the
            # name: the first name given is the run's.
            name = name or record.run.display_name
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    return name, history, summary
