"""The data path alone: 1, 2 and 4 consumers that only turn each batch into a torch tensor.

A `stored` source (.npy shards) runs through the real Ray stream: the stream actor (pump +
broadcast log, the harvest pool) and consumer actors that read the log exactly as trainers do
(`BatchReader` with prefetch, zero-copy loads from the object store, the one-copy gather,
`batch_tensor`) but do no training. Printed per consumer count: rows/s and GB/s per consumer
(first batch to last), and the total, beside this machine's memcpy GB/s measured in the same
run, and the shuffle's gather alone (`gather_group` in-process: the consumers' ceiling, since
every row is written once to a random place). Targets: one consumer >= 50% of memcpy; the total
does not fall as consumers are added.
Measured three ways: consumers started once the whole stream is in the log (the default sizes
fit in it), timed on their first pass and on the next ones (the median: the data path alone,
warm); then consumers beside the harvest, whose rate bounds them. A process's first touch of
each object-store page is slow (on this machine a first pass ran at a quarter to a third of
the speed of later ones); a trainer pays it once per page of the store, whose memory later
chunks reuse.

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
from concurrent.futures import ThreadPoolExecutor
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


def gather_ceiling_gbps(d: int, chunk_rows: int, threads: int, mix_chunks: int = 4,
                        repeats: int = 3) -> float:
    """The shuffle's own ceiling: `gather_group` on in-process numpy blocks of one group's
    shape (no Ray, no fetch), into arrays leased from a pool as a reader leases them. A row-level
    permutation writes rows at random places, which on its own reaches only part of memcpy;
    the consumers are measured against it too."""
    from thresher.stream.block import ActivationBlock
    from thresher.stream.chunker import Chunk, Piece
    from thresher.stream.log import Group
    from thresher.stream.reader import BufferPool, gather_group

    rng = np.random.default_rng(0)
    position = np.zeros(chunk_rows, dtype=np.int32)
    blocks = [ActivationBlock(acts=rng.random((chunk_rows, d), dtype=np.float32),
                              example_id=np.arange(chunk_rows), position=position, label=None,
                              bf16_bits=False, hook_layout=())
              for _ in range(mix_chunks)]
    group = Group(index=0, rows=chunk_rows * mix_chunks, perm_seed=(0, 0, 0),
                  handles=tuple(Chunk((Piece(i, 0, chunk_rows),)) for i in range(mix_chunks)))
    arrays, leases = BufferPool(), []

    def leased(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        leases.append(arrays.lease(shape, dtype))
        return leases[-1].array

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):  # the first gather fills a fresh array, as a reader's does
            start = time.perf_counter()
            gather_group(group, lambda handles: [blocks[h] for h in handles], empty=leased,
                         threads=pool if threads > 1 else None)
            best = min(best, time.perf_counter() - start)
            leases.pop().release()
    return group.rows * d * 4 / best / 1e9


def free_arrays_of(pool: Any) -> Any:
    """An `empty` that takes the arrays `pool` has free (kept for good), then new ones."""
    return lambda shape, dtype: pool.lease(shape, dtype).array


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

        def run(self, stream_name: str, trainer_id: str, batch_size: int, every: int,
                passes: int = 1, threads: int = 1) -> list[tuple[int, int, float]]:
            """(rows, bytes, seconds from the first batch to the last) of each of `passes`
            passes over the stream, which commit only on the last (a new process's first touch
            of each object-store page is slow: the first pass pays it)."""
            import torch

            from thresher.distributed.blocks import load_blocks
            from thresher.harvest.service import group_of
            from thresher.stream.reader import BatchReader, EndOfStream, NotReady
            from thresher.train.loop import CURSOR_DONE
            from thresher.train.trainer import batch_tensor

            stream = ray.get_actor(stream_name)

            def fetch(g: int) -> Any:
                return group_of(ray.get(stream.group.remote(trainer_id, g, 0)))

            cpu = torch.device("cpu")

            def reader_of(empty: Any = np.empty) -> BatchReader[Any]:
                return BatchReader(fetch, lambda refs: load_blocks(refs, HOOK), batch_size,
                                   hook=HOOK, prefetch=True, empty=empty, threads=threads)

            def one_pass(reader: BatchReader[Any], commit: bool) -> tuple[int, int, float]:
                rows = nbytes = batches = 0
                first = 0.0
                while True:
                    try:
                        leased = reader.next_batch()
                    except NotReady:
                        ray.get(stream.commit.remote(trainer_id, reader.cursor))
                        continue
                    except EndOfStream:
                        break
                    if not batches:
                        first = time.perf_counter()
                    with leased as batch:
                        x, _ = batch_tensor(batch, cpu)
                    rows, nbytes, batches = rows + len(x), nbytes + x.numel() * 4, batches + 1
                    if commit and batches % every == 0:
                        ray.get(stream.commit.remote(trainer_id, reader.cursor))
                return rows, nbytes, time.perf_counter() - first

            results = []
            reader = reader_of()
            for i in range(passes):
                if i:  # from the start again; the new reader's arrays come from the last's
                    reader.close()
                    reader = reader_of(free_arrays_of(reader.groups.pool))
                results.append(one_pass(reader, commit=i == passes - 1))
            ray.get(stream.commit.remote(trainer_id, CURSOR_DONE))
            reader.close()
            return results

    return Consumer


def measure(args: argparse.Namespace, shards: Path, out: Path, consumers: int,
            passes: int) -> list[list[tuple[int, int, float]]]:
    """[consumer][pass] (rows, bytes, seconds); with several passes the consumers start once
    the whole stream is in the log (the data path alone), with one beside the harvest."""
    import ray

    import thresher
    from thresher.config import load_config
    from thresher.distributed.stream_actor import stream_actor_class

    cfg = load_config(config(args, shards, out, consumers))
    (stream,) = thresher.plan(cfg).streams
    name = f"data-path-{consumers}-{time.time_ns()}"
    actor = stream_actor_class().options(name=name).remote(cfg, stream, str(out))
    harvest = actor.run_harvest.remote()
    workers = [consumer_cls().remote() for _ in stream.trainers]
    if passes > 1:
        ray.get(harvest)  # the stream fits in the log: the harvest ends with every chunk in
    results = ray.get([w.run.remote(name, t.trainer_id, args.batch_size, 8, passes, args.threads)
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
    parser.add_argument("--passes", type=int, default=3, help="passes after the first")
    parser.add_argument("--threads", type=int, default=2,
                        help="gather threads per consumer (a trainer uses its torch threads)")
    args = parser.parse_args()

    import ray

    from thresher.config import load_config
    from thresher.distributed.pipeline import ensure_ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = write_shards(root / "shards", args.d, args.rows, shard_rows=65536)
        ensure_ray(load_config(config(args, shards, root, 1)))
        copy = memcpy_gbps()
        alone = gather_ceiling_gbps(args.d, args.chunk_rows, threads=1)
        ceiling = gather_ceiling_gbps(args.d, args.chunk_rows, threads=args.threads)
        print(f"memcpy on this machine: {copy:.2f} GB/s (best of 5, 256 MiB)")
        print(f"the shuffle's gather alone, in-process: {alone:.2f} GB/s on one thread "
              f"({alone / copy:.0%} of memcpy), {ceiling:.2f} GB/s on {args.threads} "
              f"({ceiling / copy:.0%}: a consumer's ceiling; consumers gather on "
              f"{args.threads} threads)")
        print(f"\n{'':<9}{'consumers':>9}{'rows/s each':>14}{'GB/s each':>11}"
              f"{'of memcpy':>11}{'of gather':>11}{'GB/s total':>12}")

        def line(label: str, n: int, results: list[tuple[int, int, float]]) -> None:
            """One row: the consumers' mean rate, and all their bytes over the slowest."""
            gbs = float(np.mean([nbytes / s / 1e9 for _, nbytes, s in results]))
            rows_s = float(np.mean([rows / s for rows, _, s in results]))
            total = sum(nbytes for _, nbytes, _ in results) / max(s for *_, s in results) / 1e9
            print(f"{label:<9}{n:>9}{rows_s:>14,.0f}{gbs:>11.2f}{gbs / copy:>11.0%}"
                  f"{gbs / ceiling:>11.0%}{total:>12.2f}", flush=True)

        for n in args.consumers:
            passes = measure(args, shards, root / f"log-{n}", n, 1 + args.passes)
            line("first", n, [p[0] for p in passes])
            # Each consumer's median later pass (rates, so the median of seconds).
            line("later", n, [sorted(p[1:], key=lambda r: r[2])[len(p[1:]) // 2]
                              for p in passes])
            line("harvest", n, [p[0] for p in measure(args, shards, root / f"h-{n}", n, 1)])
        print("first: the first pass over a full log (each object-store page touched for the "
              "first time by the consumer); later: the median of the next passes (the data path "
              "alone); harvest: consumers beside the harvest, bounded by its rate")
        ray.shutdown()


if __name__ == "__main__":
    main()
