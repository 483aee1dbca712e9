"""Any activation store, opened by its path or URI: an LMDB store (lmdb.py), a folder of .npy
shards (npy.py) or a shard store (shards.py); and the writer for a path or URI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thresher import uri_io
from thresher.modalities.stored.errors import StoreError
from thresher.modalities.stored.lmdb import DEFAULT_MAP_SIZE, LmdbStore, StoreWriter
from thresher.modalities.stored.npy import NpyShardStore
from thresher.modalities.stored.shards import MANIFEST, ShardStore, ShardWriter
from thresher.stream.block import ActivationBlock

Store = LmdbStore | NpyShardStore | ShardStore


def open_store(path: str | Path) -> Store:
    """The store at a path or URI: a shard store (a URI, or a folder with manifest.json), an
    LMDB store, or a folder of .npy shards."""
    if uri_io.is_uri(path):
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


def rows_of(store: Store) -> int:
    if isinstance(store, NpyShardStore):
        return store.n_rows
    return int(store.header.get("n_rows", 0))


def hooks_of(store: Store) -> tuple[str, ...]:
    return tuple(name for name, _ in store.hooks) or (store.hook,)


def iter_store(path: str | Path) -> Iterator[ActivationBlock]:
    store = open_store(path)
    try:
        for i in range(store.n_blocks):
            yield store.block(i)
    finally:
        store.close()


def store_writer(path: Path | str, backbone: dict[str, Any], hook: str, source: dict[str, Any],
                 map_size: int = DEFAULT_MAP_SIZE) -> StoreWriter | ShardWriter:
    """A shard writer for a URI (objects stream to the trainers that replay them), the LMDB
    writer for a local path."""
    if uri_io.is_uri(path):
        return ShardWriter(str(path), backbone=backbone, hook=hook, source=source)
    return StoreWriter(Path(path), backbone=backbone, hook=hook, source=source,
                       map_size=map_size)
