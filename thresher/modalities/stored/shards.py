"""An activation store at a URI (s3://, gs://, file://, or a local path): shards plus a manifest.

Layout (format "thresher-shards", format_version 1), written through thresher/uri_io.py:

  <location>/shards/<8 digits>.bin   one harvested block: the raw little-endian bytes of acts
                                     [rows, d] (float32, or bfloat16 bits), example_id int64,
                                     position int32 and, if labelled, label int64, in that order
  <location>/inputs.parquet          the inputs manifest of the harvest
  <location>/harvest.json            the harvest's counters
  <location>/manifest.json           written last: header (d, dtype, hooks, backbone, source,
                                     rows) and per shard its name, rows, bytes and SHA-256

Each object is written whole (one PUT), and the manifest only after every shard, so a reader
either finds a complete store or none. Shards stream: `ShardStore.block(i)` hands out shard i
while a thread pool already fetches the next `READ_AHEAD` ones, so a trainer fed from an object
store waits on the network only when the network is slower than the trainer. Every shard is
checked against its size and checksum before use; a bad one is named with the fix.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher import uri_io
from thresher.config import ConfigError
from thresher.stream.block import ActivationBlock

SHARD_FORMAT = "thresher-shards"
SHARD_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
READ_AHEAD = 8  # shards in flight ahead of the one being read
FETCH_THREADS = 4
_META = (("example_id", "<i8"), ("position", "<i4"), ("label", "<i8"))


class ShardStoreError(ConfigError):
    """A shard store that cannot be replayed; the message names the object and the fix."""


class BlockLayout:
    """What every block of one store shares (width, label column, dtype, hooks): the first
    block sets it, the others must match. A mixin of both store writers, whose fields these
    are."""

    d: int | None
    labelled: bool | None
    bf16: bool
    hooks: tuple[tuple[str, int], ...]

    def admit(self, block: ActivationBlock, store: str) -> None:
        if self.d is None:
            self.d, self.labelled, self.bf16 = block.d, block.label is not None, block.bf16_bits
            self.hooks = block.hook_layout
        if (block.d != self.d or (block.label is not None) != self.labelled
                or block.hook_layout != self.hooks):
            raise ValueError(f"every block of a {store} must have the same width and columns")


class ShardWriter(BlockLayout):
    """Writes ActivationBlocks as shards at a location; `close` writes the manifest."""

    def __init__(self, location: str, backbone: dict[str, Any], hook: str,
                 source: dict[str, Any]) -> None:
        self.location = str(location)
        if uri_io.exists(uri_io.join(self.location, MANIFEST)):
            raise ShardStoreError(f"{self.location} already holds an activation store; remove "
                                  "it or choose another --out")
        self.backbone, self.hook, self.source = backbone, hook, source
        self.shards: list[dict[str, Any]] = []
        self.n_rows = 0
        self.d: int | None = None
        self.labelled = False
        self.bf16 = False
        self.hooks: tuple[tuple[str, int], ...] = ()

    @property
    def n_blocks(self) -> int:
        return len(self.shards)

    def add(self, block: ActivationBlock) -> None:
        if len(block) == 0:
            return
        self.admit(block, "shard store")
        parts = [np.ascontiguousarray(block.acts, dtype="<i2" if self.bf16 else "<f4")]
        parts += [np.ascontiguousarray(getattr(block, name), dtype=dtype)
                  for name, dtype in _META if name != "label" or self.labelled]
        data = b"".join(p.tobytes() for p in parts)
        name = f"shards/{len(self.shards):08d}.bin"
        uri_io.write_bytes(uri_io.join(self.location, name), data)
        self.shards.append({"name": name, "rows": len(block), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        self.n_rows += len(block)

    def abort(self) -> None:
        """A failed harvest: no manifest, so the shards written so far are never replayed."""

    def close(self, manifest: pa.Table | None = None,
              counters: dict[str, Any] | None = None) -> str:
        if manifest is not None:
            uri_io.write_parquet(uri_io.join(self.location, "inputs.parquet"), manifest)
        if counters is not None:
            uri_io.write_text(uri_io.join(self.location, "harvest.json"),
                               json.dumps(counters, default=str))
        header = {"format": SHARD_FORMAT, "format_version": SHARD_FORMAT_VERSION,
                  "dtype": "bfloat16" if self.bf16 else "float32", "byteorder": "little",
                  "d": self.d, "backbone": self.backbone, "hook": self.hook,
                  "hooks": [list(h) for h in self.hooks], "source": self.source,
                  "labelled": self.labelled, "n_blocks": self.n_blocks, "n_rows": self.n_rows,
                  "has_manifest": manifest is not None, "complete": True,
                  "shards": self.shards}
        uri_io.write_text(uri_io.join(self.location, MANIFEST), json.dumps(header))
        return self.location


class ShardStore:
    """A complete shard store, read with read-ahead; the interface of the other stores."""

    def __init__(self, location: str, read_ahead: int = READ_AHEAD) -> None:
        self.location = str(location)
        self.path = self.location  # what the other stores call it
        where = uri_io.join(self.location, MANIFEST)
        try:
            self.header: dict[str, Any] = json.loads(uri_io.read_text(where))
        except FileNotFoundError as exc:
            raise ShardStoreError(f"{self.location} holds no {MANIFEST}: not an activation "
                                  "store, or its harvest did not finish; write it with "
                                  "`thresher harvest CONFIG --out LOCATION`") from exc
        except ValueError as exc:
            raise ShardStoreError(f"{where} is not valid JSON ({exc}); harvest the store "
                                  "again") from exc
        if self.header.get("format") != SHARD_FORMAT or \
                self.header.get("format_version") != SHARD_FORMAT_VERSION:
            raise ShardStoreError(f"{where} is not a {SHARD_FORMAT} v{SHARD_FORMAT_VERSION} "
                                  "manifest; harvest the store again with this thresher")
        self.shards: list[dict[str, Any]] = list(self.header["shards"])
        self.n_blocks = len(self.shards)
        self.d = int(self.header["d"] or 0)
        self.hook = str(self.header["hook"])
        self.hooks: tuple[tuple[str, int], ...] = tuple(
            (str(name), int(width)) for name, width in self.header.get("hooks") or ())
        self.bf16 = self.header["dtype"] == "bfloat16"
        self.read_ahead = read_ahead
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[bytes]] = {}

    def _fetch(self, i: int) -> Future[bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="shard-fetch")
        if i not in self._pending:
            location = uri_io.join(self.location, self.shards[i]["name"])
            self._pending[i] = self._pool.submit(uri_io.read_bytes, location)
        return self._pending[i]

    def block(self, i: int) -> ActivationBlock:
        if not 0 <= i < self.n_blocks:
            raise IndexError(f"shard {i} of {self.n_blocks}")
        for ahead in range(i, min(self.n_blocks, i + 1 + self.read_ahead)):
            self._fetch(ahead)
        for stale in [k for k in self._pending if k < i]:  # a replay that skipped ahead
            self._pending.pop(stale).cancel()
        shard = self.shards[i]
        location = uri_io.join(self.location, shard["name"])
        try:
            data = self._pending.pop(i).result()
        except FileNotFoundError as exc:
            raise ShardStoreError(f"shard {location} is missing from the activation store; "
                                  "harvest it again (`thresher harvest CONFIG --out "
                                  f"{self.location}` into an empty location)") from exc
        if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
            what = (f"has {len(data)} bytes, not {shard['bytes']}" if len(data) != shard["bytes"]
                    else "fails its SHA-256 checksum")
            raise ShardStoreError(f"shard {location} is corrupt: it {what}; harvest the store "
                                  "again (`thresher harvest CONFIG --out LOCATION`) or put "
                                  "back that object from a good copy")
        return self._decode(data, int(shard["rows"]))

    def _decode(self, data: bytes, rows: int) -> ActivationBlock:
        buffer, offset = memoryview(data), 0

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal offset
            array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
            offset += array.nbytes
            return array

        acts = take("<i2" if self.bf16 else "<f4", rows * self.d).reshape(rows, self.d)
        meta = {name: take(dtype, rows) for name, dtype in _META
                if name != "label" or self.header["labelled"]}
        return ActivationBlock(acts=acts, example_id=meta["example_id"],
                               position=meta["position"], label=meta.get("label"),
                               bf16_bits=self.bf16, hook_layout=self.hooks)

    def manifest(self) -> pa.Table | None:
        if not self.header.get("has_manifest"):
            return None
        return pq.read_table(pa.BufferReader(uri_io.read_bytes(
            uri_io.join(self.location, "inputs.parquet"))))

    def close(self) -> None:
        if self._pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
