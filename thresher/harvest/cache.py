"""The activation cache: harvest once into a store, replay it as a stream many times.

Two layouts, read the same way by `open_store` (and so by the `stored` source):

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

A truncated, incomplete or corrupt store raises `StoreError` saying which and what to do.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher import storage
from thresher.config import Config, ConfigError, SourceConfig, config_dir
from thresher.config.plan import StoredStore
from thresher.harvest.shards import MANIFEST, BlockLayout, ShardStore, ShardWriter
from thresher.stream.block import ActivationBlock

STORE_FORMAT = "thresher-activations"
STORE_FORMAT_VERSION = 1
_COLUMNS = {"example_id": "<i8", "position": "<i4", "label": "<i8"}
_SHARD_META = ("example_id", "position", "label")
_SHARD_SUFFIXES = tuple(f".{name}.npy" for name in _SHARD_META)
DEFAULT_MAP_SIZE = 1 << 40  # LMDB's address-space reservation; the file grows as written


class StoreError(ConfigError):
    """An activation store that cannot be replayed; the message says why and what to do."""


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
                               bf16=self.bf16, hooks=self.hooks)

    def manifest(self) -> pa.Table | None:
        raw = self._get(b"manifest")
        return None if raw is None else pq.read_table(pa.BufferReader(raw))

    def close(self) -> None:
        if self._env is not None:
            self._env = None
            _release_env(self.path)


class NpyShardStore:
    """A folder of .npy shards (acts [rows, d] per file, optional metadata siblings)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Every .npy but the metadata siblings: a shard may have dots in its name (layer.3.npy).
        self.shards = sorted(p for p in self.path.glob("*.npy")
                             if not p.name.endswith(_SHARD_SUFFIXES))
        if not self.shards:
            raise StoreError(f"{str(self.path)!r} holds no .npy shard (<name>.npy, acts of shape "
                             "[rows, d])")
        header = self.path / "header.json"
        self.header: dict[str, Any] = json.loads(header.read_text()) if header.is_file() else {}
        self.hook = str(self.header.get("hook", ""))
        self.hooks: tuple[tuple[str, int], ...] = ()
        self.n_blocks = len(self.shards)
        self.bf16 = False
        self._offsets = [0]
        first: tuple[Path, int] | None = None
        for shard in self.shards:  # headers only (memory-mapped): cheap for every shard
            acts = self._load(shard, mmap=True)
            if acts.ndim != 2:
                raise StoreError(f"shard {str(shard)!r} has shape {acts.shape}, not [rows, d]; "
                                 "save each shard as a 2-D array of activations")
            if acts.dtype.kind != "f":
                raise StoreError(f"shard {str(shard)!r} holds {acts.dtype}, not floats; save "
                                 "it with a float dtype (float32)")
            if first is None:
                first = (shard, int(acts.shape[1]))
            elif acts.shape[1] != first[1]:
                raise StoreError(f"shard {str(shard)!r} has width {acts.shape[1]} but "
                                 f"{str(first[0])!r} has {first[1]}: every shard of a store "
                                 "holds one hook's width; rewrite or remove the odd one")
            self._offsets.append(self._offsets[-1] + len(acts))
        assert first is not None
        self.d = first[1]

    @staticmethod
    def _load(path: Path, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as exc:
            raise StoreError(f"shard {str(path)!r} is corrupt or truncated ({exc})") from exc

    def block(self, i: int) -> ActivationBlock:
        shard = self.shards[i]
        acts = np.asarray(self._load(shard), dtype=np.float32)
        n = len(acts)
        columns: dict[str, np.ndarray] = {}
        for name in _SHARD_META:
            side = shard.with_name(f"{shard.stem}.{name}.npy")
            if side.is_file():
                columns[name] = self._load(side)
                if len(columns[name]) != n:
                    raise StoreError(f"{str(side)!r} has {len(columns[name])} rows but its "
                                     f"shard has {n}")
        return ActivationBlock(
            acts=acts,
            example_id=columns.get("example_id",
                                   np.arange(self._offsets[i], self._offsets[i] + n)),
            position=columns.get("position", np.zeros(n, dtype=np.int32)),
            label=columns.get("label"))

    def manifest(self) -> pa.Table | None:
        return None

    def close(self) -> None:
        pass


Store = LmdbStore | NpyShardStore | ShardStore


def open_store(path: str | Path) -> Store:
    """The store at a path or URI: a shard cache (a URI, or a folder with manifest.json), an
    LMDB cache, or a folder of .npy shards."""
    if storage.is_uri(path):
        return ShardStore(str(path))
    p = Path(path).expanduser()
    if not p.is_dir():
        raise StoreError(f"activation store {str(p)!r} does not exist; write one with "
                         "`thresher harvest CONFIG` or point at a folder of .npy shards")
    if (p / "data.mdb").exists():
        return LmdbStore(p)
    if (p / MANIFEST).is_file():
        return ShardStore(str(p))
    return NpyShardStore(p)


def _rows_of(store: Store) -> int:
    if isinstance(store, NpyShardStore):
        return int(store._offsets[-1])
    return int(store.header.get("n_rows", 0))


def iter_store(path: str | Path) -> Iterator[ActivationBlock]:
    store = open_store(path)
    try:
        for i in range(store.n_blocks):
            yield store.block(i)
    finally:
        store.close()


# --------------------------------------------------------------------------------------------
# The `stored` source
# --------------------------------------------------------------------------------------------


def store_path(source: SourceConfig, base_dir: Path) -> Path | str:
    if storage.is_uri(source.backbone.model):  # a shard cache in an object store
        return source.backbone.model
    p = Path(source.backbone.model).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


class StoredBackbone:
    """Replays a store: the 'forward' of input batch {"block": [i]} is reading block i."""

    n_ctx: int | None = None

    def __init__(self, source: SourceConfig, base_dir: Path) -> None:
        self.store = open_store(store_path(source, base_dir))
        self.hooks = check_stored_hook(source, self.store)
        layout = dict(self.store.hooks) or {self.hooks[0]: self.store.d}
        self.hook_widths = tuple(layout[h] for h in self.hooks)
        self.d_model = sum(self.hook_widths)

    def harvest(self, batch: dict[str, np.ndarray]) -> ActivationBlock:
        block = self.store.block(int(np.asarray(batch["block"]).reshape(-1)[0]))
        if not block.hooks:  # a single-hook store (or .npy shards): name its columns
            return ActivationBlock(acts=block.acts, example_id=block.example_id,
                                   position=block.position, label=block.label, bf16=block.bf16,
                                   hooks=((self.hooks[0], block.d),))
        if [h for h, _ in block.hooks] == list(self.hooks):
            return block
        return ActivationBlock.from_columns(block.to_columns(), hooks=self.hooks)


def _hooks_of(store: Store) -> tuple[str, ...]:
    return tuple(name for name, _ in store.hooks) or (store.hook,)


def check_stored_hook(source: SourceConfig, store: Store
                      ) -> tuple[str, ...]:
    """The stored hooks a source replays: those it names (each must be in the store), or all."""
    held = _hooks_of(store)
    wanted = tuple(h for h in source.hooks if h)
    if not wanted:
        return held
    missing = [h for h in wanted if h not in held and not (len(held) == 1 and not held[0])]
    if missing:
        fix = (f"set source.hook to {held[0]!r}" if len(held) == 1
               else f"set source.hook to some of {list(held)}")
        raise ConfigError(f"source.hook names {missing} but the store holds hook(s) "
                          f"{list(held)}; {fix}, or leave it empty to replay all it holds")
    return wanted


def read_stores(cfg: Config) -> dict[str, StoredStore]:
    """The header of each stored source's store, by stream id: what its plan replays."""
    return {source.name: read_store(source, config_dir(cfg))
            for source in cfg.sources if source.backbone.kind == "stored"}


def read_store(source: SourceConfig, base_dir: Path) -> StoredStore:
    """A stored source's hooks (its own, checked against the store, or all the store holds)
    and its line of the plan: path, rows, width, hooks."""
    path = store_path(source, base_dir)
    store = open_store(path)
    try:
        hooks = check_stored_hook(source, store)
        layout = dict(store.hooks) or {h: store.d for h in hooks}
        widths = ", ".join(f"{h} ({layout.get(h, store.d)})" for h in hooks)
        kind = {LmdbStore: "LMDB cache", NpyShardStore: ".npy shards"}.get(
            type(store), "shard cache")
        return StoredStore(hooks=hooks, description=(
            f"{kind} {str(path)!r}: {_rows_of(store)} rows of width {store.d} in "
            f"{store.n_blocks} block(s), replaying hook(s) {widths}"))
    finally:
        store.close()


def build_stored_inputs(source: SourceConfig, base_dir: Path
                        ) -> tuple[list[dict[str, np.ndarray]], pa.Table | None, int]:
    """One input batch per stored block, in stored order; the stored manifest; rows."""
    store = open_store(store_path(source, base_dir))
    try:
        check_stored_hook(source, store)
        batches = [{"block": np.array([i], dtype=np.int64)} for i in range(store.n_blocks)]
        rows = _rows_of(store)
        return batches, store.manifest(), rows
    finally:
        store.close()


# --------------------------------------------------------------------------------------------
# `thresher harvest`
# --------------------------------------------------------------------------------------------


def default_store_path(cfg: Config) -> Path | str:
    from thresher.config import run_dir_of

    location = run_dir_of(cfg)
    if storage.is_uri(location):  # a shard cache next to the run's files
        return storage.join(location, "activations")
    return Path(location) / "activations"


def harvest_to_store(cfg: Config, out: str | Path | None = None,
                     map_size: int = DEFAULT_MAP_SIZE, stream: str | None = None
                     ) -> Path | str:
    """Harvest one source of the config (`stream`, or its only one) once, every input in
    stream order and every hook of it, into an LMDB store (a local path), or a shard cache
    (a URI: thresher/harvest/shards.py)."""
    import time

    from thresher.harvest.local import LocalHarvest

    source = cfg.source_named(stream) if stream is not None else cfg.source
    if source.backbone.kind == "stored":
        raise ConfigError("source.backbone.kind is 'stored': that source already replays a "
                          "store; harvest a config with a model backbone")
    path = (out if storage.is_uri(out) else Path(out)) if out is not None \
        else default_store_path(cfg)
    start = time.perf_counter()
    harvest = LocalHarvest(cfg, source)
    from thresher.config import to_plain

    writer = store_writer(path, backbone=to_plain(source.backbone), hook=source.hooks[0],
                          source=to_plain(source), map_size=map_size)
    unreadable = harvest.inputs.unreadable
    try:
        for harvested in harvest:
            unreadable += harvested.report.unreadable
            writer.add(harvested.block)
    except BaseException:
        writer.abort()  # leave it incomplete: replay refuses it
        raise
    counters = {"forward_calls": harvest.harvester.forward_calls, "rows": writer.n_rows,
                "blocks": writer.n_blocks, "unreadable_inputs": unreadable,
                "seconds": time.perf_counter() - start}
    return writer.close(harvest.inputs.manifest, counters)


def store_writer(path: Path | str, backbone: dict[str, Any], hook: str, source: dict[str, Any],
                 map_size: int = DEFAULT_MAP_SIZE) -> StoreWriter | ShardWriter:
    """A shard writer for a URI (objects stream to the trainers that replay them), the LMDB
    writer for a local path."""
    if storage.is_uri(path):
        return ShardWriter(str(path), backbone=backbone, hook=hook, source=source)
    return StoreWriter(Path(path), backbone=backbone, hook=hook, source=source,
                       map_size=map_size)


def harvest_and_describe(config: Any, out: str | None = None, stream: str | None = None) -> str:
    """`thresher harvest`: harvest into a store, then one line saying what it holds."""
    from thresher.config import load_config

    path = harvest_to_store(load_config(config), out, stream=stream)
    store = open_store(path)
    try:
        return (f"activation store: {path} ({store.header['n_rows']} rows x {store.d}, "
                f"{store.n_blocks} blocks, hooks {list(_hooks_of(store))})")
    finally:
        store.close()
