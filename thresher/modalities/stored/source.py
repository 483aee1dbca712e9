"""The `stored` source: a stream that replays an activation store, one input batch a block.

The 'forward' of input batch [i] is reading block i; the store's manifest is the stream's.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from thresher import uri_io
from thresher.config import Config, ConfigError, SourceConfig, StoredStore, config_dir
from thresher.modalities.contract import BlockIndexBatch, Inputs
from thresher.modalities.render import Examples, ExamplesRequest
from thresher.modalities.stored.lmdb import LmdbStore
from thresher.modalities.stored.npy import NpyShardStore
from thresher.modalities.stored.spec import StoredConfig
from thresher.modalities.stored.store import Store, hooks_of, open_store, rows_of
from thresher.stream.block import ActivationBlock


def store_path(source: SourceConfig, base_dir: Path) -> Path | str:
    location = stored_settings(source).model
    if uri_io.is_uri(location):  # a shard store in an object store
        return location
    p = Path(location).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def stored_settings(source: SourceConfig) -> StoredConfig:
    assert isinstance(source.backbone, StoredConfig)
    return source.backbone


class StoredBackbone:
    """Replays a store: the 'forward' of input batch [i] is reading block i."""

    def __init__(self, source: SourceConfig, base_dir: Path) -> None:
        self.store = open_store(store_path(source, base_dir))
        self.hooks = check_stored_hook(source, self.store)
        layout = dict(self.store.hooks) or {self.hooks[0]: self.store.d}
        self.hook_widths = tuple(layout[h] for h in self.hooks)
        self.d_model = sum(self.hook_widths)

    def harvest(self, batch: BlockIndexBatch) -> ActivationBlock:
        block = self.store.block(batch.index)
        if not block.hook_layout:  # a single-hook store (or .npy shards): name its columns
            return ActivationBlock(acts=block.acts, example_id=block.example_id,
                                   position=block.position, label=block.label,
                                   bf16_bits=block.bf16_bits,
                                   hook_layout=((self.hooks[0], block.d),))
        if [h for h, _ in block.hook_layout] == list(self.hooks):
            return block
        return ActivationBlock.from_columns(block.to_columns(), hooks=self.hooks)


def check_stored_hook(source: SourceConfig, store: Store
                      ) -> tuple[str, ...]:
    """The stored hooks a source replays: those it names (each must be in the store), or all."""
    held = hooks_of(store)
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
            for source in cfg.sources if source.backbone.replays_store}


def read_store(source: SourceConfig, base_dir: Path) -> StoredStore:
    """A stored source's hooks (its own, checked against the store, or all the store holds)
    and its line of the plan: path, rows, width, hooks."""
    path = store_path(source, base_dir)
    store = open_store(path)
    try:
        hooks = check_stored_hook(source, store)
        layout = dict(store.hooks) or {h: store.d for h in hooks}
        widths = ", ".join(f"{h} ({layout.get(h, store.d)})" for h in hooks)
        kind = {LmdbStore: "LMDB store", NpyShardStore: ".npy shards"}.get(
            type(store), "shard store")
        return StoredStore(hooks=hooks, description=(
            f"{kind} {str(path)!r}: {rows_of(store)} rows of width {store.d} in "
            f"{store.n_blocks} block(s), replaying hook(s) {widths}"))
    finally:
        store.close()


def prepare_stored_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    """One input batch per stored block, in stored order; the stored manifest."""
    store = open_store(store_path(source, base_dir))
    try:
        check_stored_hook(source, store)
        batches = [BlockIndexBatch.of(i) for i in range(store.n_blocks)]
        manifest = _as_harvested(store.manifest())
        n = manifest.num_rows if manifest is not None else 0
        return Inputs(batches=list(batches), manifest=manifest, n_examples=n,
                      planned_rows=rows_of(store))
    finally:
        store.close()


def _as_harvested(manifest: pa.Table | None) -> pa.Table | None:
    """The manifest as its harvest made it: Parquet reads a list column back with its items
    named `element`, Arrow (and every modality's schema) names them `item`."""
    if manifest is None:
        return None
    fields = [pa.field(f.name, pa.list_(f.type.value_type), f.nullable, f.metadata)
              if pa.types.is_list(f.type) else f for f in manifest.schema]
    return manifest.cast(pa.schema(fields, metadata=manifest.schema.metadata))


class Stored:
    """The `stored` kind (thresher/modalities/stored/spec.py): its backbone reads the store."""

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> StoredBackbone:
        return StoredBackbone(source, base_dir)


def preflight_stored(source: SourceConfig, base_dir: Path) -> None:
    """The store opened and checked: an LMDB store's header, completeness and file size; every
    .npy shard's header (2-D, float dtype, one width for all); a shard store's manifest; and
    that the hooks asked for are in it."""
    read_store(source, base_dir)


def render_stored_examples(request: ExamplesRequest) -> Examples:
    return Examples(request.manifest, "examples show ids and origins only: this stream replays "
                    f"an activation store ({request.source.backbone.model}); the report of the "
                    "run that harvested its inputs shows them rendered")
