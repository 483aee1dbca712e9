"""The LMDB activation store (written by `thresher harvest` to a local path), and reading it.

The three layouts, read the same way by `open_store` (store.py) and so by the `stored` source:

- **LMDB** (written by `thresher harvest CONFIG`): a folder holding ``data.mdb``. Keys:
  ``header`` (JSON: format, format_version, dtype, byte order, d, backbone, hook, hooks (the
  [name, width] of each hook's column range of acts, for a stream of several hooks), source,
  columns, n_blocks, n_rows, complete), ``manifest`` (the inputs manifest as Parquet bytes),
  ``harvest`` (JSON counters) and per block ``block/<8 digits>/<column>`` (raw little-endian
  array bytes: acts [rows, d], example_id int64, position int32, optional label int64) with
  ``block/<8 digits>/meta`` (JSON: rows and a CRC32 per column). No pickle anywhere.
- **A folder of .npy shards**: ``<stem>.npy`` holds acts [rows, d] (sorted by name); optional
  ``<stem>.example_id.npy``, ``<stem>.position.npy``, ``<stem>.label.npy`` hold the metadata
  (absent: example_id = global row index, position 0) and an optional ``header.json`` the hook.

A truncated, incomplete or corrupt store raises `StoreError` saying which and what to do. The
third layout, a shard store at a URI, is shards.py.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.modalities.stored.errors import StoreError
from thresher.modalities.stored.shards import BlockLayout
from thresher.stream.block import ActivationBlock

STORE_FORMAT = "thresher-activations"
STORE_FORMAT_VERSION = 1
_COLUMNS = {"example_id": "<i8", "position": "<i4", "label": "<i8"}
DEFAULT_MAP_SIZE = 1 << 40  # LMDB's address-space reservation; the file grows as written


def _block_key(i: int, column: str) -> bytes:
    return f"block/{i:08d}/{column}".encode()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass
class StoreWriter(BlockLayout):
    """Appends ActivationBlocks to an LMDB store; `close` marks it complete."""

    path: Path
    backbone: dict[str, Any]
    hook: str
    source: dict[str, Any]
    map_size: int = DEFAULT_MAP_SIZE
    n_blocks: int = 0
    n_rows: int = 0
    d: int | None = None
    labelled: bool | None = None
    bf16: bool = False
    hooks: tuple[tuple[str, int], ...] = ()
    _env: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import lmdb

        self.path = Path(self.path)
        if (self.path / "data.mdb").exists():
            raise StoreError(f"{str(self.path)!r} already holds an activation store; remove it "
                             "or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self.path), map_size=self.map_size, subdir=True,
                              metasync=False, sync=False)
        self._put({b"header": json.dumps(self._header(complete=False)).encode()})

    def _header(self, complete: bool) -> dict[str, Any]:
        acts = "<i2" if self.bf16 else "<f4"
        return {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION,
                "dtype": "bfloat16" if self.bf16 else "float32", "byteorder": "little",
                "d": self.d, "backbone": self.backbone, "hook": self.hook,
                "hooks": [list(h) for h in self.hooks], "source": self.source,
                "columns": {"acts": acts, **_COLUMNS}, "labelled": bool(self.labelled),
                "n_blocks": self.n_blocks, "n_rows": self.n_rows, "complete": complete}

    def _put(self, items: dict[bytes, bytes]) -> None:
        with self._env.begin(write=True) as txn:
            for key, value in items.items():
                txn.put(key, value)

    def add(self, block: ActivationBlock) -> None:
        if len(block) == 0:
            return
        self.admit(block, "store")
        columns = {"acts": np.ascontiguousarray(block.acts, dtype="<i2" if self.bf16 else "<f4"),
                   "example_id": np.ascontiguousarray(block.example_id, dtype="<i8"),
                   "position": np.ascontiguousarray(block.position, dtype="<i4")}
        if block.label is not None:
            columns["label"] = np.ascontiguousarray(block.label, dtype="<i8")
        raw = {name: array.tobytes() for name, array in columns.items()}
        meta = {"rows": len(block), "crc32": {name: zlib.crc32(b) for name, b in raw.items()}}
        items = {_block_key(self.n_blocks, name): b for name, b in raw.items()}
        items[_block_key(self.n_blocks, "meta")] = json.dumps(meta).encode()
        self._put(items)
        self.n_blocks += 1
        self.n_rows += len(block)

    def abort(self) -> None:
        """A failed harvest: the header stays incomplete, so replay refuses the store."""
        self._env.close()

    def close(self, manifest: pa.Table | None = None,
              counters: dict[str, Any] | None = None) -> Path:
        items = {b"header": json.dumps(self._header(complete=True)).encode()}
        if manifest is not None:
            sink = io.BytesIO()
            pq.write_table(manifest, sink)
            items[b"manifest"] = sink.getvalue()
        if counters is not None:
            items[b"harvest"] = json.dumps(counters, default=str).encode()
        self._put(items)
        self._env.sync(True)
        self._env.close()
        return self.path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


# py-lmdb allows one open environment per file and process: readers share it, counted.
_ENVS: dict[str, tuple[Any, int]] = {}


def _acquire_env(path: Path) -> Any:
    import lmdb

    key = str(path.resolve())
    if key in _ENVS:
        env, count = _ENVS[key]
        _ENVS[key] = (env, count + 1)
        return env
    # Replay reads blocks in order, each a run of contiguous pages: the kernel's readahead makes
    # a cold read ~6x faster than page-by-page faults (benchmarks/lmdb_replay.py).
    env = lmdb.open(key, readonly=True, lock=False, subdir=True, readahead=True,
                    max_readers=512)
    _ENVS[key] = (env, 1)
    return env


def _release_env(path: Path) -> None:
    key = str(path.resolve())
    if key not in _ENVS:
        return
    env, count = _ENVS[key]
    if count <= 1:
        del _ENVS[key]
        env.close()
    else:
        _ENVS[key] = (env, count - 1)


class LmdbStore:
    """A complete LMDB store, checked on open; blocks are verified as they are read."""

    def __init__(self, path: str | Path) -> None:
        import lmdb

        self.path = Path(path)
        self._env: Any = None
        data = self.path / "data.mdb"
        if not data.is_file():
            raise StoreError(f"{str(self.path)!r} is not an activation store: it has no "
                             "data.mdb; write one with `thresher harvest CONFIG`")
        try:
            self._env = _acquire_env(self.path)
        except lmdb.Error as exc:
            raise StoreError(f"the activation store {str(self.path)!r} is corrupt or truncated "
                             f"(lmdb: {exc}); harvest it again") from exc
        try:
            self._check(data)
        except BaseException:
            self.close()  # never keep a mapping of a file that failed its checks
            raise

    def _check(self, data: Path) -> None:
        import lmdb

        try:
            info, stat = self._env.info(), self._env.stat()
        except lmdb.Error as exc:
            raise StoreError(f"the activation store {str(self.path)!r} is corrupt or truncated "
                             f"(lmdb: {exc}); harvest it again") from exc
        # LMDB maps the file; a page past its end would crash the process (SIGBUS), so a file
        # shorter than the pages the store says it uses is refused up front.
        needed = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        if data.stat().st_size < needed:
            raise StoreError(f"the activation store {str(self.path)!r} is truncated: data.mdb "
                             f"has {data.stat().st_size} bytes but its pages need {needed}; "
                             "harvest it again")
        raw = self._get(b"header")
        if raw is None:
            raise StoreError(f"{str(self.path)!r} is an LMDB but not a thresher activation "
                             "store (no header)")
        try:
            self.header: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"the header of {str(self.path)!r} is corrupt ({exc})") from exc
        if self.header.get("format") != STORE_FORMAT:
            raise StoreError(f"{str(self.path)!r} is not a thresher activation store")
        if self.header.get("format_version") != STORE_FORMAT_VERSION:
            raise StoreError(f"{str(self.path)!r} has format_version "
                             f"{self.header.get('format_version')}; this thresher reads "
                             f"{STORE_FORMAT_VERSION}")
        if not self.header.get("complete"):
            raise StoreError(f"the activation store {str(self.path)!r} is incomplete: the "
                             "harvest that wrote it did not finish; harvest it again")
        self.n_blocks = int(self.header["n_blocks"])
        self.d = int(self.header["d"] or 0)
        self.hook = str(self.header["hook"])
        self.hooks: tuple[tuple[str, int], ...] = tuple(
            (str(name), int(width)) for name, width in self.header.get("hooks") or ())
        self.bf16 = self.header["dtype"] == "bfloat16"

    def _get(self, key: bytes) -> bytes | None:
        import lmdb

        try:
            with self._env.begin(buffers=False) as txn:
                value = txn.get(key)
        except lmdb.Error as exc:
            raise StoreError(f"the activation store {str(self.path)!r} is corrupt (lmdb: "
                             f"{exc}); harvest it again") from exc
        return None if value is None else bytes(value)

    def block(self, i: int) -> ActivationBlock:
        meta_raw = self._get(_block_key(i, "meta"))
        if meta_raw is None:
            raise StoreError(f"the activation store {str(self.path)!r} is truncated: block {i} "
                             f"of {self.n_blocks} is missing; harvest it again")
        meta = json.loads(meta_raw)
        rows = int(meta["rows"])
        columns: dict[str, np.ndarray] = {}
        for name, dtype in self.header["columns"].items():
            if name == "label" and not self.header["labelled"]:
                continue
            raw = self._get(_block_key(i, name))
            if raw is None or zlib.crc32(raw) != meta["crc32"][name]:
                what = "is missing" if raw is None else "fails its checksum"
                raise StoreError(f"the activation store {str(self.path)!r} is corrupt: column "
                                 f"{name!r} of block {i} {what}; harvest it again")
            array = np.frombuffer(raw, dtype=dtype)
            columns[name] = array.reshape(rows, self.d) if name == "acts" else array
        return ActivationBlock(acts=columns["acts"], example_id=columns["example_id"],
                               position=columns["position"], label=columns.get("label"),
                               bf16_bits=self.bf16, hook_layout=self.hooks)

    def manifest(self) -> pa.Table | None:
        raw = self._get(b"manifest")
        return None if raw is None else pq.read_table(pa.BufferReader(raw))

    def close(self) -> None:
        if self._env is not None:
            self._env = None
            _release_env(self.path)
