"""LMDB replay rows/s and MB/s against re-harvesting the same rows.

    .venv/bin/python benchmarks/lmdb_replay.py [--max-tokens N] [--threads T] [--out DIR]

Harvests MiniLM (trained weights, shipped) layer 3 over stdlib docstrings twice: once bare
(`Harvester.harvest` on every input batch: what re-harvesting costs) and once into an LMDB store
(`thresher harvest`'s code path). Then replays the store: block reads (`iter_store`) with the
file dropped from the page cache first (posix_fadvise DONTNEED: a cold read from disk) and again
warm, the `stored` source through `Harvester` (what a run's pump sees), and the same rows as a
folder of .npy shards. Rows are checked equal to the harvest's. Prints rows/s and MB/s (bytes of
acts and row metadata) of each, and the speed-up over re-harvesting.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from thresher.config import load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import prepare_inputs
from thresher.harvest.to_store import harvest_to_store
from thresher.modalities.stored.store import iter_store
from thresher.stream.block import ActivationBlock


def _drop_from_page_cache(path: Path) -> None:
    """Evict a file's pages, so the next read goes to disk (dirty pages are written first: the
    kernel keeps those)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed(fn: Callable[[], ActivationBlock]) -> tuple[float, ActivationBlock]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _consume(replay: Callable[[], Iterable[ActivationBlock]]) -> float:
    """Seconds to read every block of a replay (the blocks a trainer would be handed)."""
    start = time.perf_counter()
    for block in replay():
        block.acts.sum(axis=0)  # touch the rows, as a consumer would
    return time.perf_counter() - start


def _nbytes(block: ActivationBlock) -> int:
    return block.acts.nbytes + block.example_id.nbytes + block.position.nbytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=60_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help="store folder (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "store"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config({"run": {"name": "lmdb-bench", "out": str(out.parent)}, "source": {
        "backbone": {"kind": "hf_text", "model": "minilm"}, "hook": "layer.3",
        "inputs": {"kind": "python_docstrings", "context": 128, "max_tokens": args.max_tokens},
        "batch_size": 64}, "resources": {"harvester_threads": args.threads}})
    print(f"machine: {os.cpu_count()} CPUs, torch threads {args.threads}, load average "
          f"{os.getloadavg()[0]:.2f} at start (other work on the machine slows the harvest "
          "figures more than the replay ones)")

    inputs = prepare_inputs(cfg.source, cfg.run.seed, Path("."))
    harvester = Harvester(cfg.source, threads=args.threads)
    harvester.harvest(inputs.batches[0])  # warm-up
    reharvest_s, harvested = _timed(lambda: ActivationBlock.concat(
        [harvester.harvest(b) for b in inputs.batches]))
    start = time.perf_counter()
    harvest_to_store(cfg, out)
    store_s = time.perf_counter() - start
    size_mb = (out / "data.mdb").stat().st_size / 2**20

    stored = load_config({"source": {"backbone": {"kind": "stored", "model": str(out)},
                                     "hook": "layer.3"}}).source

    def via_source() -> Iterator[ActivationBlock]:
        stored_inputs = prepare_inputs(stored, 0, Path("."))
        replayer = Harvester(stored)
        return (replayer.harvest(b) for b in stored_inputs.batches)

    shards = out.parent / "shards"
    shards.mkdir(exist_ok=True)
    for i, block in enumerate(iter_store(out)):
        np.save(shards / f"{i:05d}.npy", block.acts)
        np.save(shards / f"{i:05d}.example_id.npy", block.example_id)
        np.save(shards / f"{i:05d}.position.npy", block.position)

    # Replays give the harvested rows, in order (checked untimed).
    for replay in (iter_store(out), via_source(), iter_store(shards)):
        got = ActivationBlock.concat(list(replay))
        assert np.array_equal(got.acts, harvested.acts)
        assert np.array_equal(got.example_id, harvested.example_id)
        assert np.array_equal(got.position, harvested.position)

    _drop_from_page_cache(out / "data.mdb")
    cold_s = _consume(lambda: iter_store(out))
    warm_s = _consume(lambda: iter_store(out))
    source_s = _consume(via_source)
    for f in shards.iterdir():
        _drop_from_page_cache(f)
    shards_s = _consume(lambda: iter_store(shards))

    rows, mb = len(harvested), _nbytes(harvested) / 2**20
    print(f"store: {rows} rows x {harvested.d} float32 = {mb:.0f} MB of rows and metadata, "
          f"data.mdb {size_mb:.0f} MB")
    print(f"{'path':<50} {'seconds':>8} {'rows/s':>10} {'MB/s':>8} {'vs re-harvest':>14}")
    for name, seconds in (("re-harvest (MiniLM layer.3, CPU, no store)", reharvest_s),
                          ("harvest into LMDB (thresher harvest)", store_s),
                          ("replay LMDB: iter_store, cold (from disk)", cold_s),
                          ("replay LMDB: iter_store, page cache warm", warm_s),
                          ("replay LMDB: stored source via Harvester", source_s),
                          ("replay .npy shards: iter_store, cold", shards_s)):
        print(f"{name:<50} {seconds:>8.2f} {rows / seconds:>10.0f} {mb / seconds:>8.0f} "
              f"{reharvest_s / seconds:>13.1f}x")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if not args.out:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
