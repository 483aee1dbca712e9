"""The data path alone: 1, 2 and 4 consumers that only turn each batch into a torch tensor.

A `stored` source (.npy shards) runs through the real Ray stream: the stream actor (pump +
broadcast log, the harvest pool) and consumer actors that read the log exactly as trainers do
(`BatchReader` with prefetch, zero-copy loads from the object store, the one-copy gather,
`batch_tensor`) but do no training. Printed per consumer count: rows/s and GB/s per consumer
(first batch to last), and the total, beside this machine's memcpy GB/s measured in the same
run, and the shuffle's gather alone (`gather_group` in-process: the consumers' ceiling, since
every row is read once at a random place). Targets: one consumer >= 50% of memcpy; the total
does not fall as consumers are added.
Measured twice: consumers started once the whole stream is in the log (the data path alone;
the default sizes fit in it), then consumers beside the harvest, whose rate then bounds them.

    .venv/bin/python benchmarks/data_path.py
    .venv/bin/python benchmarks/data_path.py --rows 1000000 --consumers 1 2

On a machine with fewer cores than consumers + pump, per-consumer figures measure CPU sharing
too; the total is the figure to read there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fanout import HOOK, write_shards


def memcpy_gbps(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def gather_ceiling_gbps(d: int, chunk_rows: int, mix_chunks: int = 4, repeats: int = 3) -> float:
    """The shuffle's own ceiling: `gather_group` on in-process numpy blocks of one group's
    shape (no Ray, no fetch). A row-level permutation reads rows at random, which on its own
    reaches only part of memcpy; the consumers are measured against it too."""
    from thresher.stream.block import ActivationBlock
    from thresher.stream.chunker import Chunk, Piece
    from thresher.stream.log import Group
    from thresher.stream.reader import gather_group

    rng = np.random.default_rng(0)
    position = np.zeros(chunk_rows, dtype=np.int32)
    blocks = [ActivationBlock(acts=rng.random((chunk_rows, d), dtype=np.float32),
                              example_id=np.arange(chunk_rows), position=position, label=None,
                              bf16=False, hooks=())
              for _ in range(mix_chunks)]
    group = Group(index=0, rows=chunk_rows * mix_chunks, perm_seed=(0, 0, 0),
                  handles=tuple(Chunk((Piece(i, 0, chunk_rows),)) for i in range(mix_chunks)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        gather_group(group, lambda handles: [blocks[h] for h in handles])
        best = min(best, time.perf_counter() - start)
    return group.rows * d * 4 / best / 1e9


def config(args: argparse.Namespace, shards: Path, out: Path, consumers: int) -> dict[str, Any]:
    return {
        "run": {"name": f"data-path-{consumers}", "out": str(out), "seed": 0},
        "source": {"backbone": {"kind": "stored", "model": str(shards)}, "hook": HOOK},
        "stream": {"chunk_rows": args.chunk_rows, "capacity_chunks": 16, "mix_chunks": 4,
                   "holdout_rows": 8192, "norm_rows": 8192},
        "train": {"batch_size": args.batch_size, "rows": args.rows - 8192 - args.chunk_rows,
                  "checkpoint_every": 50, "d_sae": 64, "k": 4},
        "sweep": [{"arch": "topk", "seed": list(range(consumers))}],
        "resources": {"harvesters": 1, "trainers": consumers, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0},
    }


def consumer_cls() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Consumer:
        """A trainer without training: the log's batches into tensors, cursors committed."""

        def run(self, stream_name: str, trainer_id: str, batch_size: int, every: int
                ) -> tuple[int, int, float]:
            import torch

            from thresher.distributed.blocks import load_blocks
            from thresher.stream.reader import BatchReader, EndOfStream, NotReady
            from thresher.train.loop import CURSOR_DONE
            from thresher.train.trainer import batch_tensor

            stream = ray.get_actor(stream_name)

            def fetch(g: int) -> Any:
                status, payload = ray.get(stream.group.remote(trainer_id, g, 0))
                if status == "end":
                    raise EndOfStream
                if status == "wait":
                    raise NotReady
                return payload

            reader = BatchReader(fetch, lambda refs: load_blocks(refs, HOOK), batch_size,
                                 hook=HOOK, prefetch=True)
            rows = nbytes = batches = 0
            first = 0.0
            cpu = torch.device("cpu")
            while True:
                try:
                    batch = reader.next_batch()
                except NotReady:
                    ray.get(stream.commit.remote(trainer_id, reader.cursor))
                    continue
                except EndOfStream:
                    break
                if not batches:
                    first = time.perf_counter()
                x, _ = batch_tensor(batch, cpu)
                rows, nbytes, batches = rows + len(x), nbytes + x.numel() * 4, batches + 1
                if batches % every == 0:
                    ray.get(stream.commit.remote(trainer_id, reader.cursor))
            seconds = time.perf_counter() - first
            ray.get(stream.commit.remote(trainer_id, CURSOR_DONE))
            reader.close()
            return rows, nbytes, seconds

    return Consumer


def measure(args: argparse.Namespace, shards: Path, out: Path, consumers: int,
            full_log: bool) -> list[tuple[int, int, float]]:
    """(rows, bytes, seconds) per consumer; with `full_log` the consumers start once the whole
    stream is in the log (the data path alone), else beside the harvest."""
    import ray

    import thresher
    from thresher.config import load_config
    from thresher.distributed.stream_actor import stream_actor_cls

    cfg = load_config(config(args, shards, out, consumers))
    (stream,) = thresher.plan(cfg).streams
    name = f"data-path-{consumers}-{time.time_ns()}"
    actor = stream_actor_cls().options(name=name).remote(cfg, stream, str(out), name)
    harvest = actor.harvest.remote()
    workers = [consumer_cls().remote() for _ in stream.trainers]
    if full_log:
        ray.get(harvest)  # the stream fits in the log: the harvest ends with every chunk in
    results = ray.get([w.run.remote(name, t.trainer_id, args.batch_size, 8)
                       for w, t in zip(workers, stream.trainers, strict=True)])
    ray.get(harvest)
    for w in [*workers, actor]:
        ray.kill(w)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    import ray

    from thresher.config import load_config
    from thresher.distributed.pipeline import ensure_ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = write_shards(root / "shards", args.d, args.rows, shard_rows=65536)
        ensure_ray(load_config(config(args, shards, root, 1)))
        copy = memcpy_gbps()
        ceiling = gather_ceiling_gbps(args.d, args.chunk_rows)
        print(f"memcpy on this machine: {copy:.2f} GB/s (best of 5, 256 MiB)")
        print(f"the shuffle's gather alone, in-process: {ceiling:.2f} GB/s ({ceiling / copy:.0%} "
              "of memcpy; a consumer's ceiling)")
        for full_log, title in ((True, "from a full log: the data path alone"),
                                (False, "beside the harvest: bounded by the harvest's rate")):
            print(f"\n{title}")
            print(f"{'consumers':>9}{'rows/s each':>14}{'GB/s each':>11}{'of memcpy':>11}"
                  f"{'of gather':>11}{'GB/s total':>12}")
            for n in args.consumers:
                results = measure(args, shards, root / f"run-{n}-{full_log}", n, full_log)
                each = [(rows / s, nbytes / s / 1e9) for rows, nbytes, s in results]
                rows_s = float(np.mean([r for r, _ in each]))
                gbs = float(np.mean([g for _, g in each]))
                total = (sum(nbytes for _, nbytes, _ in results)
                         / max(s for *_, s in results) / 1e9)
                print(f"{n:>9}{rows_s:>14,.0f}{gbs:>11.2f}{gbs / copy:>11.0%}{gbs / ceiling:>11.0%}"
                      f"{total:>12.2f}")
        ray.shutdown()


if __name__ == "__main__":
    main()
