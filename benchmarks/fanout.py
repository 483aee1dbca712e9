"""Fan-out: 1, 2 and 4 trainer actors on one stream, through the Ray executor.

Each trainer holds one SAE of the same cost; every trainer reads every batch from the broadcast
log. The figure of merit is rows/s per trainer (training rows over the trainer's time from its
first batch to its finish, waits for the log included), which should stay >= 80% of the
single-trainer figure where each trainer has its own cores or GPU share. The stream replays
.npy shards (a `stored` source), so the harvest costs next to nothing and the numbers are the
log's and the trainers'.

The object store is sampled every 0.1 s (the raylet's own count of bytes in use) and its peak
is printed against the configured cap, with the log's bound (capacity x chunk bytes) and Ray
Data's budget for the harvest.

    .venv/bin/python benchmarks/fanout.py                      # 1, 2, 4 trainers
    .venv/bin/python benchmarks/fanout.py --trainers 1 2 --d-sae 512

On a machine with fewer cores than trainers the per-trainer figure also measures CPU sharing,
not only fan-out: say so when reporting it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 2**20
HOOK = "blocks.0.hook_resid_post"


def write_shards(folder: Path, d: int, rows: int, shard_rows: int = 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(4 * d, d)).astype(np.float32)
    for i in range(-(-rows // shard_rows)):
        codes = (rng.random((shard_rows, 4 * d)) < 0.01).astype(np.float32)
        np.save(folder / f"{i:05d}.npy", codes @ atoms)
    (folder / "header.json").write_text(json.dumps({"hook": HOOK}))
    return folder


def config(args: argparse.Namespace, shards: Path, out: Path, trainers: int) -> dict[str, Any]:
    return {
        "run": {"name": f"fanout-{trainers}", "out": str(out), "seed": 0},
        "source": {"backbone": {"kind": "stored", "model": str(shards)}, "hook": HOOK},
        "stream": {"chunk_rows": args.chunk_rows, "capacity_chunks": args.capacity_chunks,
                   "mix_chunks": args.mix_chunks, "holdout_rows": 8192, "norm_rows": 8192},
        "train": {"batch_size": args.batch_size, "rows": args.rows, "checkpoint_every": 1000,
                  "warmup_steps": 4, "d_sae": args.d_sae, "k": 32, "lr": 1e-3},
        "sweep": [{"arch": "topk", "seed": list(range(trainers))}],  # same cost each
        "resources": {"harvesters": 1, "trainers": trainers, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0, "harvester_threads": 1, "trainer_threads": 1},
    }


class StoreSampler:
    """The object store's bytes in use, sampled from the raylet until stopped."""

    def __init__(self, gcs_address: str, every: float = 0.1) -> None:
        # Ray's internal API (what `ray memory --stats-only` prints): there is no public one.
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        self._reply = lambda: get_memory_info_reply(get_state_from_address(gcs_address))
        self.every, self.peak, self.cap = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = self._reply().store_stats
            self.peak = max(self.peak, int(stats.object_store_bytes_used))
            self.cap = int(stats.object_store_bytes_avail)
            self._stop.wait(self.every)

    def __enter__(self) -> StoreSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--d", type=int, default=512, help="row width")
    parser.add_argument("--rows", type=int, default=131072, help="training rows per SAE")
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--capacity-chunks", type=int, default=16)
    parser.add_argument("--mix-chunks", type=int, default=4)
    parser.add_argument("--object-store-mb", type=int, default=1024)
    args = parser.parse_args()

    import ray

    import thresher

    ray.init(num_cpus=os.cpu_count(), object_store_memory=args.object_store_mb * MIB,
             include_dashboard=False, log_to_driver=False)
    gcs = ray.get_runtime_context().gcs_address
    print(f"{os.cpu_count()} CPUs; rows of {args.d} float32, {args.rows} training rows per SAE "
          f"(topk d_sae={args.d_sae}, batch {args.batch_size}); chunks of {args.chunk_rows} "
          f"rows, log capacity {args.capacity_chunks}; object store cap "
          f"{args.object_store_mb} MiB", flush=True)
    header = (f"{'trainers':>8} {'rows/s/trainer':>15} {'min':>9} {'vs 1':>6} {'total rows/s':>13} "
              f"{'wall s':>7} {'store peak MiB':>15} {'cap':>6} {'log bound':>10} "
              f"{'harvest budget':>15}")
    lines = []
    with tempfile.TemporaryDirectory(prefix="thr-fanout-") as tmp:
        shards = write_shards(Path(tmp) / "shards", args.d, args.rows + 8192)
        single = None
        for n in args.trainers:
            start = time.perf_counter()
            with StoreSampler(gcs) as sampler:
                run_dir = thresher.run(config(args, shards, Path(tmp) / "runs", n),
                                       progress=False, overwrite=True)
            wall = time.perf_counter() - start
            record = json.loads((run_dir / "run.json").read_text())
            # From each trainer's first batch to its finish: waits for the log count, start-up
            # (actor, imports, the first group's harvest) does not.
            rates = [(t["batches"] - 1) * args.batch_size / (t["finished_at"] - t["first_batch_at"])
                     for t in record["trainers"].values()]
            mean = float(np.mean(rates))
            single = single or mean
            harvest = record["streams"]["s0"]["harvest"]
            row_bytes = args.d * 4 + 12  # activations + example id + position
            log_bound = args.capacity_chunks * args.chunk_rows * row_bytes / MIB
            lines.append(
                f"{n:>8} {mean:>15,.0f} {min(rates):>9,.0f} {mean / single:>6.0%} "
                f"{sum(rates):>13,.0f} {wall:>7.1f} {sampler.peak / MIB:>15.0f} "
                f"{sampler.cap / MIB:>6.0f} {log_bound:>10.0f} "
                f"{harvest['harvest_object_store_mb']:>15.0f}")
            print(lines[-1], flush=True)
            assert record["log"]["peak_held"] <= args.capacity_chunks
    print()
    print(header)
    print("\n".join(lines))
    print("store peak: most bytes in Ray's object store at once (harvest, log, holdout); "
          "log bound: capacity_chunks x chunk bytes; harvest budget: the outputs in flight")


if __name__ == "__main__":
    main()
