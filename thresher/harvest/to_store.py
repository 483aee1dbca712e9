"""`thresher harvest`: harvest a source once, in stream order, into an activation store that
`stored` sources replay (thresher/modalities/stored/)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from thresher import uri_io
from thresher.config import Config, ConfigError, run_dir_of, to_plain
from thresher.harvest.inputs import mark_unreadable, name_unreadable
from thresher.harvest.local import LocalHarvest
from thresher.harvest.report import HarvestCounters
from thresher.modalities.stored.lmdb import DEFAULT_MAP_SIZE
from thresher.modalities.stored.store import hooks_of, open_store, store_writer


def default_store_path(cfg: Config) -> Path | str:
    location = run_dir_of(cfg)
    if uri_io.is_uri(location):  # a shard store next to the run's files
        return uri_io.join(location, "activations")
    return Path(location) / "activations"


def harvest_to_store(cfg: Config, out: str | Path | None = None,
                     map_size: int = DEFAULT_MAP_SIZE, stream: str | None = None
                     ) -> Path | str:
    """Harvest one source of the config (`stream`, or its only one) once, every input in
    stream order and every hook of it, into an LMDB store (a local path), or a shard store
    (a URI: thresher/modalities/stored/shards.py)."""
    source = cfg.source_named(stream) if stream is not None else cfg.source
    if source.backbone.replays_store:
        raise ConfigError(f"source.backbone.kind is {source.backbone.kind!r}: that source "
                          "already replays a store; harvest a config with a model backbone")
    cfg.check_libraries()
    path = (out if uri_io.is_uri(out) else Path(out)) if out is not None \
        else default_store_path(cfg)
    start = time.perf_counter()
    harvest = LocalHarvest(cfg, source)
    writer = store_writer(path, backbone=to_plain(source.backbone), hook=source.hooks[0],
                          source=to_plain(source), map_size=map_size)
    counters = HarvestCounters(unreadable_listed=list(harvest.inputs.unreadable))
    try:
        for harvested in harvest:
            counters.unreadable_examples.extend(harvested.report.unreadable_examples)
            writer.add(harvested.block)
    except BaseException:
        writer.abort()  # leave it incomplete: replay refuses it
        raise
    manifest = harvest.inputs.manifest
    counters.unreadable_named = name_unreadable(counters, manifest)
    if manifest is not None:
        manifest = mark_unreadable(manifest, counters.unreadable_examples)
    return writer.close(manifest, {
        "forward_calls": harvest.harvester.forward_calls, "rows": writer.n_rows,
        "blocks": writer.n_blocks, "unreadable_inputs": counters.unreadable_inputs,
        "unreadable_named": counters.unreadable_named,
        "seconds": time.perf_counter() - start})


def harvest_and_describe(config: Any, out: str | None = None, stream: str | None = None) -> str:
    """`thresher harvest`: harvest into a store, then one line saying what it holds."""
    from thresher.config import load_config

    path = harvest_to_store(load_config(config), out, stream=stream)
    store = open_store(path)
    try:
        return (f"activation store: {path} ({store.header['n_rows']} rows x {store.d}, "
                f"{store.n_blocks} blocks, hooks {list(hooks_of(store))})")
    finally:
        store.close()
