"""Rows/s of a stored source read from an S3 server on loopback (moto) against the same shards
on local disk, measured in one run.

    .venv/bin/python benchmarks/stored_uri.py [--shards N] [--rows R] [--d D] [--repeats K]
                                              [--consumer none|sae]

Writes N shards of R rows x D float32 columns with ShardWriter (the format `thresher harvest
--out URI` writes) to a local folder and to a bucket of moto's S3 server, then replays each
through ShardStore (read-ahead, checksums) as a `stored` source does. `--consumer sae` (the
default) steps a TopK SAE bank on every block, as a trainer would: the read-ahead is meant to
keep the network off its path. `none` only reads and checks the shards, the network's bound.
Prints rows/s for both and their ratio (target: S3 >= 0.8x local), the min and median of K
repeats each.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

os.environ.setdefault("AWS_ACCESS_KEY_ID", "thresher-bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "thresher-bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from thresher.modalities.stored.shards import ShardStore, ShardWriter
from thresher.stream.block import ActivationBlock


def write(location: str, shards: int, rows: int, d: int) -> None:
    rng = np.random.default_rng(0)
    writer = ShardWriter(location, backbone={"kind": "bench"}, hook="h", source={})
    for i in range(shards):
        writer.add(ActivationBlock(acts=rng.normal(size=(rows, d)).astype(np.float32),
                                   example_id=np.arange(rows, dtype=np.int64) + i * rows,
                                   position=np.zeros(rows, dtype=np.int32)))
    writer.close()


def make_consumer(kind: str, d: int) -> Any:
    if kind == "none":
        return lambda block: None
    import torch

    torch.manual_seed(0)
    enc = torch.nn.Linear(d, 4 * d)
    dec = torch.nn.Linear(4 * d, d)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)

    def step(block: ActivationBlock) -> None:  # a TopK SAE step per 1024-row batch
        x = torch.from_numpy(block.float32())
        for batch in x.split(1024):
            pre = enc(batch)
            top = pre.topk(32, dim=1)
            latents = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
            loss = (dec(latents) - batch).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    return step


def replay(location: str, consumer: Any) -> float:
    store = ShardStore(location)
    start = time.perf_counter()
    rows = 0
    try:
        for i in range(store.n_blocks):
            block = store.block(i)
            consumer(block)
            rows += len(block)
    finally:
        store.close()
    return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--consumer", choices=("none", "sae"), default="sae")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the consumer")
    args = parser.parse_args()
    import torch
    from moto.server import ThreadedMotoServer

    torch.set_num_threads(args.threads)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
        bucket, _ = pafs.FileSystem.from_uri(f"s3://bench?{options}&allow_bucket_creation=true")
        bucket.create_dir("bench")
        remote = f"s3://bench/cache?{options}"
        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp) / "cache")
            for location in (local, remote):
                write(location, args.shards, args.rows, args.d)
            consumer = make_consumer(args.consumer, args.d)
            replay(local, consumer)  # warm: page cache, torch kernels
            rates: dict[str, list[float]] = {"local": [], "s3": []}
            for _ in range(args.repeats):  # interleaved, so drifting load hits both alike
                rates["local"].append(replay(local, consumer))
                rates["s3"].append(replay(remote, consumer))
    finally:
        server.stop()
    mb = args.shards * args.rows * args.d * 4 / 1e6
    print(f"{args.shards} shards x {args.rows} rows x {args.d} float32 ({mb:.0f} MB); consumer "
          f"{args.consumer}; {os.cpu_count()} CPUs")
    for name, values in rates.items():
        print(f"  {name:<5} rows/s: min {min(values):,.0f}  median "
              f"{statistics.median(values):,.0f}")
    ratios = [s / lo for s, lo in zip(rates["s3"], rates["local"], strict=True)]
    print(f"S3 / local rows/s per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; min "
          f"{min(ratios):.2f}, median {statistics.median(ratios):.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
