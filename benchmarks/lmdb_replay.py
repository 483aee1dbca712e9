"""LMDB replay rows/s and MB/s against re-harvesting the same rows.

    .venv/bin/python benchmarks/lmdb_replay.py [--max-tokens N] [--out DIR]

Harvests MiniLM layer 3 over stdlib docstrings into an LMDB store (`thresher harvest`'s code
path), then replays it three ways: raw block reads (`iter_store`), the `stored` source through
`Harvester` (what a run's pump sees), and a second open that should hit the page cache. Prints
rows/s and MB/s of each against the harvest's rows/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from thresher.config import load_config
from thresher.harvest.cache import harvest_to_store, iter_store
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import prepare_inputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=120_000)
    parser.add_argument("--out", default=None, help="store folder (default: a temp dir)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "store"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config({"run": {"name": "lmdb-bench", "out": str(out.parent)}, "source": {
        "backbone": {"kind": "hf_text", "model": "minilm"}, "hook": "layer.3",
        "inputs": {"kind": "python_docstrings", "context": 128, "max_tokens": args.max_tokens},
        "batch_size": 64}, "resources": {"harvester_threads": os.cpu_count()}})
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    start = time.perf_counter()
    harvest_to_store(cfg, out)
    harvest_s = time.perf_counter() - start
    size_mb = (out / "data.mdb").stat().st_size / 2**20

    def raw_replay() -> tuple[int, int]:
        rows = nbytes = 0
        for block in iter_store(out):
            rows += len(block)
            nbytes += block.acts.nbytes + block.example_id.nbytes + block.position.nbytes
        return rows, nbytes

    start = time.perf_counter()
    rows, nbytes = raw_replay()
    raw_s = time.perf_counter() - start
    start = time.perf_counter()
    raw_replay()
    warm_s = time.perf_counter() - start

    stored = load_config({"source": {"backbone": {"kind": "stored", "model": str(out)},
                                     "hook": "layer.3"}}).source
    start = time.perf_counter()
    inputs = prepare_inputs(stored, 0, Path("."))
    harvester = Harvester(stored)
    source_rows = sum(len(harvester.harvest(b)) for b in inputs.batches)
    source_s = time.perf_counter() - start
    assert source_rows == rows

    mb = nbytes / 2**20
    print(f"store: {rows} rows x 384 float32 = {mb:.0f} MB of rows, data.mdb {size_mb:.0f} MB")
    print(f"{'path':<44} {'seconds':>8} {'rows/s':>10} {'MB/s':>8} {'vs harvest':>10}")
    for name, seconds in (("harvest into LMDB (MiniLM layer.3, CPU)", harvest_s),
                          ("replay: iter_store (first read)", raw_s),
                          ("replay: iter_store (page cache warm)", warm_s),
                          ("replay: stored source via Harvester", source_s)):
        print(f"{name:<44} {seconds:>8.2f} {rows / seconds:>10.0f} {mb / seconds:>8.0f} "
              f"{harvest_s / seconds:>9.1f}x")
    if not args.out:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
