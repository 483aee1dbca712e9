"""Ray against inline on one config, measured in one run: is the distributed stream free?

First a `stored` source (.npy shards, one TopK SAE) large enough that the broadcast log fills
and backpressure runs; then, unless --skip-default, the built-in default config (MiniLM over
stdlib docstrings, six SAEs). Each config runs inline, then on Ray (Ray's start included in
its wall), one after the other; the stored source `--repeats` times, with the ratios' min and
median. Printed per executor: wall, the trainers' stepping and waiting
seconds, batches, training rows/s from first batch to last, rows/s over the wall, the pump's
CPU seconds; then the ratios Ray / inline, whose targets are >= 0.9 (training rows/s) and
>= 0.8 (wall), the trainers' stall (waiting for data over their wall; < 5% where the SAE step
is the bottleneck, as on the stored source) and the copies of a row from run.json. The SAEs'
weights must be identical between the two (checked and printed).

    .venv/bin/python benchmarks/ray_vs_inline.py                  # 2M rows x 256, then default
    .venv/bin/python benchmarks/ray_vs_inline.py --rows 600000 --skip-default
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fanout import HOOK, write_shards

SHARD_ROWS = 65536


def stored_config(args: argparse.Namespace, shards: Path, out: Path) -> dict[str, Any]:
    """The issue's config: one TopK SAE, d_sae 1024, k 16, batch 1024, lr 1e-3."""
    holdout = 16384
    return {
        "run": {"name": "stored", "out": str(out), "seed": 0},
        "source": {"backbone": {"kind": "stored", "model": str(shards)}, "hook": HOOK},
        "stream": {"chunk_rows": args.chunk_rows, "capacity_chunks": args.capacity_chunks,
                   "mix_chunks": 4, "holdout_rows": holdout, "norm_rows": 8192},
        "train": {"batch_size": 1024, "rows": args.rows - holdout - 65536,
                  "checkpoint_every": 400, "warmup_steps": 10, "d_sae": 1024, "k": 16,
                  "lr": 1e-3},
        "sweep": [{"arch": "topk"}],
        "resources": {"harvesters": 1, "trainers": 1, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0, "harvester_threads": 1, "trainer_threads": 2},
    }


def default_config(out: Path) -> dict[str, Any]:
    import yaml

    import thresher

    path = Path(thresher.__file__).parent / "configs" / "default.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["run"]["out"] = str(out)
    return cfg


def weights_digest(run: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(run.glob("saes/*/sae_weights.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def measure(cfg: dict[str, Any], inline: bool) -> dict[str, Any]:
    import thresher

    start = time.perf_counter()
    run = thresher.run(cfg, inline=inline, progress=False)
    wall = time.perf_counter() - start
    if not inline:
        import ray

        ray.shutdown()  # the next Ray run pays for its start too
    record = json.loads((run / "run.json").read_text())
    trainers = list(record["trainers"].values())
    rows = sum(t["batches"] for t in trainers) * cfg["train"]["batch_size"] / len(trainers)
    first = min(t["first_batch_at"] for t in trainers)
    last = max(t["finished_at"] for t in trainers)
    return {"wall": wall, "step": max(t["step_seconds"] for t in trainers),
            "wait": max(t.get("wait_seconds", 0.0) for t in trainers),
            # Waiting for data over the trainer's own wall (from its start to its result).
            "stall": max(t.get("wait_seconds", 0.0) / t["seconds"] for t in trainers),
            "copies": max(t["copies_per_row"]["total"] for t in trainers),
            "batches": sum(t["batches"] for t in trainers),
            "train_rows_per_s": rows / max(last - first, 1e-9), "rows_per_s_wall": rows / wall,
            "pump_cpu": record["harvest"].get("pump_cpu_seconds", float("nan")),
            "digest": weights_digest(run)}


def compare(name: str, cfg_of: Any, root: Path, repeats: int = 1) -> None:
    """`repeats` pairs of runs (inline, then Ray), each pair's figures and ratios, then the
    ratios' min and median (timings on a shared machine are noisy)."""
    print(f"\n{name}")
    print(f"{'executor':<9}{'wall s':>9}{'step s':>9}{'wait s':>9}{'batches':>9}"
          f"{'train rows/s':>14}{'rows/s wall':>13}{'pump CPU s':>12}")
    speeds, walls = [], []
    for i in range(repeats):
        inline = measure(cfg_of(root / f"{name}-{i}-inline"), inline=True)
        ray_ = measure(cfg_of(root / f"{name}-{i}-ray"), inline=False)
        for label, m in (("inline", inline), ("ray", ray_)):
            print(f"{label:<9}{m['wall']:>9.1f}{m['step']:>9.1f}{m['wait']:>9.1f}"
                  f"{m['batches']:>9}{m['train_rows_per_s']:>14,.0f}"
                  f"{m['rows_per_s_wall']:>13,.0f}{m['pump_cpu']:>12.1f}")
        speeds.append(ray_["train_rows_per_s"] / inline["train_rows_per_s"])
        walls.append(inline["wall"] / ray_["wall"])
        print(f"ray / inline: training rows/s {speeds[-1]:.2f} (target >= 0.9), wall "
              f"{walls[-1]:.2f} (inline wall / ray wall, target >= 0.8); trainer stall (waiting "
              f"for data over the trainer's wall) inline {inline['stall']:.1%}, ray "
              f"{ray_['stall']:.1%} (target < 5% where the SAE step is the bottleneck); copies "
              f"of a row: inline {inline['copies']:.2f}, ray {ray_['copies']:.2f}; same "
              f"weights: {inline['digest'] == ray_['digest']}", flush=True)
    if repeats > 1:
        print(f"over {repeats} pairs: training rows/s min {min(speeds):.2f} median "
              f"{statistics.median(speeds):.2f}; wall min {min(walls):.2f} median "
              f"{statistics.median(walls):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--capacity-chunks", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3,
                        help="pairs of runs of the stored source (the default config: one)")
    parser.add_argument("--skip-default", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = write_shards(root / "shards", args.d, args.rows, SHARD_ROWS)
        compare(f"stored source, {args.rows:,} rows x {args.d}",
                lambda out: stored_config(args, shards, out), root, args.repeats)
        if not args.skip_default:
            compare("default config", default_config, root)


if __name__ == "__main__":
    main()
